"""The steps of Simic's loop as functions of a workbench: who decides the ground runs, gathering their episodes
(locally or through workers), training a candidate. ``esper simic``'s commands and ``esper serve simic`` are both
made of these, so a step behaves the same whichever started it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import ConfigError
from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text
from esper_simic.collect import CollectSummary, collect
from esper_simic.ground import GroundRun, heuristic_exploration
from esper_simic.publication import CANDIDATE_UPDATE, TRAINING, read_update_file
from esper_simic.replay import ReplayStore
from esper_simic.trainer import UnusableEpisode, prepare
from esper_simic.workbench import Workbench

__all__ = ["Behaviour", "behaviour_of", "gather", "train_candidate", "update_file"]

Behaviour = Callable[[GroundRun], Sequence[str]]


def update_file(path: Path) -> Path:
    """A candidate's update: ``path`` itself, or ``path/candidate.update`` for a candidate directory."""
    found = path / CANDIDATE_UPDATE if path.is_dir() else path
    if not found.is_file():
        raise ConfigError(f"{path}: no policy update there (give a candidate directory or a .update file)")
    return found


def behaviour_of(workbench: Workbench, behaviour: str, update: Path | None = None) -> Behaviour:
    """Who decides the ground runs: ``"heuristic"`` (thresholds drawn per run) or ``"learned"`` (sampling from
    ``update``, a candidate, or else the store's live version)."""
    if behaviour == "heuristic":
        return heuristic_exploration
    workbench.require_secret("collecting with the learned policy")
    if update is not None:
        update_path = update_file(update)
    else:
        live = workbench.policy_store().live()
        if live is None:
            raise ConfigError(
                f"nothing is published in {workbench.policy_store().directory} yet: collect with --behaviour "
                "heuristic, train, evaluate and publish first (or sample from a candidate with --update)"
            )
        update_path = live.path
    resolved = update_path.resolve()

    def learned(run: GroundRun) -> list[str]:
        return [
            "tamiyo.policy=learned",
            'tamiyo.learned.decoding="sample"',
            f"tamiyo.learned.seed={run.seed}",
            f'tamiyo.learned.initial_update="{resolved}"',
        ]

    return learned


def gather(
    workbench: Workbench,
    store: ReplayStore,
    runs: Sequence[GroundRun],
    behaviour: Behaviour,
    *,
    distributed: bool = False,
    timeout_s: float = 600.0,
    keep_runs: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> CollectSummary:
    """Train ``runs`` (in local worker processes, or through ``esper serve simic-worker``s) into ``store``."""
    if distributed:
        from esper_simic.distributed import collect_distributed

        bus = workbench.shared_bus("collecting with workers", "simic-collector")
        try:
            return collect_distributed(
                runs, behaviour, store, bus, collection_id=f"{time.time_ns()}", timeout_s=timeout_s,
                progress=progress, settings=workbench.policy_settings(),
            )  # fmt: skip
        finally:
            bus.close()
    return collect(
        runs,
        behaviour,
        store,
        workbench.workspace / "runs",
        workers=workbench.options.workers,
        weights=workbench.reward_weights(),
        keep_runs=keep_runs,
        progress=progress,
        settings=workbench.policy_settings(),
    )


def train_candidate(
    workbench: Workbench,
    version: str,
    *,
    initial: Path | None = None,
    progress: Callable[[str, int, int, Mapping[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a candidate on the whole replay store into ``WORKSPACE/candidates/VERSION`` (starting from ``initial``'s
    weights when given) and return its training summary (also in ``training.json``)."""
    trainer = workbench.trainer()
    if initial is not None:
        verdict = workbench.policy.load_update(read_update_file(update_file(initial)))
        if not verdict.accepted:
            raise ConfigError(f"{initial}: the policy refuses it ({verdict.reason}: {verdict.detail})")
    directory = workbench.workspace / "candidates" / version
    directory.mkdir(parents=True, exist_ok=True)
    prepared, unusable = [], []
    with workbench.replay() as store:
        damage = store.damage.describe() if store.damage is not None else None
        for episode in store.episodes():
            try:
                encoder = workbench.policy_under(episode.outcome.get("budget", {}))
                prepared.append(prepare(episode, encoder, workbench.catalog, workbench.reward_weights()))
            except UnusableEpisode as error:
                unusable.append(str(error))
    if not prepared:
        raise ConfigError(f"the replay store in {workbench.workspace / 'replay'} has no usable episode: collect first")
    started = time.process_time()
    result = trainer.train(workbench.policy, prepared, checkpoint=directory / "checkpoint.pt", progress=progress)
    cpu_seconds = time.process_time() - started
    steps = sum(len(episode.steps) for episode in prepared)
    demonstrations = sum(step.demonstrated for episode in prepared for step in episode.steps)
    final = result.curves[-1] if result.curves else {}
    metrics = {key: float(value) for key, value in final.items()} | {
        "episodes": float(len(prepared)),
        "steps": float(steps),
        "cpu_seconds": cpu_seconds,
    }
    update = workbench.policy.export_update(
        policy_version=version, state_dict=result.state_dict, training_metrics=metrics
    )
    atomic_write_bytes(directory / CANDIDATE_UPDATE, update.SerializeToString(deterministic=True))
    options = getattr(trainer, "options", None)
    summary = {
        "version": version,
        "directory": str(directory),
        "episodes": len(prepared),
        "unusable": unusable,
        "replay_damage": damage,
        "steps": steps,
        "demonstrations": demonstrations,
        "cpu_seconds": cpu_seconds,
        "stopped": result.stopped,
        "trainer": workbench.selection.trainer,
        "options": attrs.asdict(options) if options is not None and attrs.has(type(options)) else None,
    }
    atomic_write_text(directory / TRAINING, json.dumps(summary, indent=2))
    atomic_write_text(directory / "curves.json", json.dumps(result.curves, indent=1))
    return summary
