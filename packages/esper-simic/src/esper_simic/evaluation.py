"""Validation before publication: a candidate policy against the live one and the heuristic, on held-out ground runs.

Every arm trains the same held-out runs (a plan drawn from ``[simic.evaluate] seed``, which collection never uses),
with the same parameter budget; each arm's episodes go to a replay store of their own under the evaluation's
directory, so an evaluation that was killed resumes where it stopped. The candidate decides greedily.

The verdict compares mean episode returns (validation accuracy gained less the parameter and compute costs:
:mod:`esper_simic.rewards`), never test accuracy, which is reported but decides nothing. The candidate passes when
its mean return is at least each baseline's less ``tolerance``. The whole table travels with a published update.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative
from esper_simic.collect import collect
from esper_simic.ground import GroundOptions, GroundRun, plan
from esper_simic.replay import ReplayStore
from esper_simic.workbench import Workbench

__all__ = ["EvaluateOptions", "arm_overrides", "evaluate", "summarise"]


@section("simic.evaluate")
@attrs.frozen
class EvaluateOptions:
    """How a candidate is validated (docs/simic.md)."""

    #: Held-out ground runs per arm.
    runs: int = attrs.field(default=8, validator=at_least(1))
    #: The plan's seed: keep it apart from every collection seed (those are the training configurations).
    seed: int = 1_000_003
    #: Families of the held-out runs (empty: those of ``[simic.ground]``).
    families: list[str] = attrs.Factory(list)
    #: Block widths of the held-out runs (empty: those of ``[simic.ground]``).
    widths: list[int] = attrs.Factory(list)
    #: The candidate passes when its mean return is at least each baseline's mean return less this.
    tolerance: float = attrs.field(default=0.0, validator=not_negative)
    #: The baselines it must not be worse than: ``live`` (the store's live version, when there is one) and
    #: ``heuristic``.
    against: list[str] = attrs.Factory(lambda: ["live", "heuristic"])


def held_out_plan(workbench: Workbench, options: EvaluateOptions) -> list[GroundRun]:
    ground = workbench.config.get(GroundOptions)
    if options.families:
        ground = attrs.evolve(ground, families=list(options.families))
    if options.widths:
        ground = attrs.evolve(ground, widths=list(options.widths))
    return plan(ground, options.seed, options.runs, prefix="heldout")


def arm_overrides(arm: str, update: Path | None) -> list[str]:
    """The controller overrides of an arm: the heuristic, or the learned policy loading ``update`` (greedy)."""
    if arm == "heuristic":
        return ["tamiyo.policy=heuristic"]
    if arm == "fixed-schedule":
        return ["tamiyo.policy=fixed-schedule"]
    overrides = ["tamiyo.policy=learned", 'tamiyo.learned.decoding="greedy"']
    if update is not None:
        overrides.append(f'tamiyo.learned.initial_update="{update}"')
    return overrides


def summarise(store: ReplayStore) -> dict[str, Any]:
    """Mean return, validation and test accuracy, parameters added and counted FLOPs over an arm's episodes."""
    outcomes = [episode.outcome for episode in store.episodes()]
    if not outcomes:
        return {"runs": 0}

    def mean(key: str, of: Callable[[Mapping[str, Any]], float | None]) -> dict[str, float]:
        values = [v for v in (of(o) for o in outcomes) if v is not None]
        if not values:
            return {}
        return {key: statistics.fmean(values), f"{key}_std": statistics.pstdev(values)}

    return {
        "runs": len(outcomes),
        **mean("return", lambda o: float(o["return"])),
        **mean("val_accuracy", lambda o: float(o["val_accuracy"])),
        **mean("test_accuracy", lambda o: o.get("test_accuracy")),
        **mean("added_parameter_fraction", lambda o: (o["parameters"] - o["host_parameters"]) / o["host_parameters"]),
        **mean("total_flops", lambda o: float(o["total_flops"])),
        "returns": {episode.episode_id: episode.outcome["return"] for episode in store.episodes()},
    }


def evaluate(
    workbench: Workbench,
    candidate: Path,
    directory: Path,
    options: EvaluateOptions | None = None,
    *,
    progress: Callable[[str, str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every arm on the held-out plan and give the table and the verdict (see the module)."""
    options = options or workbench.config.get(EvaluateOptions)
    workbench.require_secret("evaluating a candidate policy")
    runs = held_out_plan(workbench, options)
    live = workbench.policy_store().live()
    arms: dict[str, Path | None] = {"candidate": candidate}
    for baseline in options.against:
        if baseline == "live":
            if live is not None:
                arms[f"live:{live.version}"] = live.path
        else:
            arms[baseline] = None
    table: dict[str, dict[str, Any]] = {}
    for arm, update in arms.items():
        kind = "learned" if arm == "candidate" or arm.startswith("live:") else arm
        store_dir = directory / arm.replace(":", "-")
        with ReplayStore(
            store_dir / "replay", workbench.policy.feature_schema_digest, capacity=10 * len(runs)
        ) as store:
            overrides = arm_overrides(kind, update)

            def behaviour(run: GroundRun, overrides: list[str] = overrides) -> list[str]:
                return overrides

            def report(name: str, done: int, total: int, arm: str = arm) -> None:
                if progress is not None:
                    progress(arm, name, done, total)

            summary = collect(
                runs,
                behaviour,
                store,
                store_dir / "runs",
                workers=workbench.options.workers,
                weights=workbench.reward_weights(),
                progress=report,
                settings=workbench.policy_settings(),
            )
            table[arm] = {**summarise(store), "failed": [list(item) for item in summary.failed]}
    return verdict(table, options, [r.describe() for r in runs])


def verdict(table: Mapping[str, Mapping[str, Any]], options: EvaluateOptions, runs: Sequence[Any]) -> dict[str, Any]:
    """Whether the candidate's mean return is within ``tolerance`` of every baseline's (or above it)."""
    candidate = table["candidate"]
    reasons = []
    if candidate.get("failed"):
        reasons.append(f"{len(candidate['failed'])} candidate runs failed")
    for arm, row in table.items():
        if arm == "candidate" or "return" not in row:
            continue
        if "return" not in candidate or candidate["return"] < row["return"] - options.tolerance:
            reasons.append(
                f"mean return {candidate.get('return', float('nan')):.4f} is below {arm}'s {row['return']:.4f} "
                f"(tolerance {options.tolerance})"
            )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "tolerance": options.tolerance,
        "arms": {arm: dict(row) for arm, row in table.items()},
        "held_out_runs": list(runs),
    }
