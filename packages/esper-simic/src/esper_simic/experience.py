"""Episodes from what runs already record: a run directory's record becomes one :class:`~esper_simic.replay.Episode`.

Each decision point of the run's ``record.log`` (Tolaria's run record) gives one step: the ``SystemStatePacket``
the controller decided on and the ``AdaptationCommand`` it decided (both exact, as protobuf in base64: the learner
re-encodes them with the feature schema it trains), the command's result, where the run stood (validation accuracy,
parameters, counted FLOPs), the field reports that later judged the command, and the step's reward
(:mod:`esper_simic.rewards`). The run's end is the episode's outcome.

A record that is damaged is read around the damage, and the error or warning names the file and the byte offset it
recovered from; a run recorded before decision points kept their packets is refused with what to do.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from esper_core.storage.appendlog import scan
from esper_core.tolaria.record import RECORD_FILE
from esper_simic.replay import Episode
from esper_simic.rewards import Progress, RewardWeights, rewards

__all__ = ["RunDamaged", "RunExperience", "episode_from_run", "rewards_of"]


class RunDamaged(ValueError):
    """A run record that cannot give an episode; the message names the file and what is wrong."""


@attrs.frozen
class RunExperience:
    """An episode, and what reading its run found."""

    episode: Episode
    #: ``"<file>: damaged from byte N on"`` when the record was read around damage, else None.
    damage: str | None
    finished: bool


def _entries(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    path = run_dir / RECORD_FILE if run_dir.is_dir() else run_dir
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDamaged(f"{path}: no run record here (is {run_dir} a run directory?)") from None
    found = scan(data)
    damage = None
    if found.first_damage is not None:
        damage = f"{path}: damaged from byte {found.first_damage} on ({found.skipped_bytes} bytes unreadable)"
    entries = []
    for payload in found.records:
        try:
            entries.append(json.loads(payload))
        except ValueError:
            continue
    return entries, damage


def episode_from_run(run_dir: str | Path, schema_digest: str, weights: RewardWeights | None = None) -> RunExperience:
    """The episode of the run in ``run_dir`` (see the module), tagged with ``schema_digest``."""
    directory = Path(run_dir)
    entries, damage = _entries(directory)
    started = next((e for e in entries if e["kind"] == "run_started"), None)
    if started is None:
        raise RunDamaged(f"{directory}: the record has no run_started entry" + (f" ({damage})" if damage else ""))
    host_parameters = int(started["host_parameters"])
    steps: list[dict[str, Any]] = []
    points: list[Progress] = []
    by_command: dict[str, dict[str, Any]] = {}
    epoch_entry: Mapping[str, Any] | None = None
    finished: Mapping[str, Any] | None = None
    for entry in entries:
        kind = entry["kind"]
        if kind == "epoch":
            epoch_entry = entry
        elif kind == "decision" and epoch_entry is not None:
            if "packet" not in entry:
                raise RunDamaged(
                    f"{directory}: its decision points were recorded without their state packets (a run from before "
                    "Simic's experience); run it again to collect it"
                )
            step = {
                "epoch": entry["epoch"],
                "packet": entry["packet"],
                "command": entry["command"],
                "command_id": entry["command_id"],
                "operation": entry["operation"],
                "slot": entry["slot"],
                "blueprint": entry["blueprint"],
                "status": entry["status"],
                "policy": entry.get("policy", ""),
                "val_accuracy": epoch_entry["val_accuracy"],
                "parameters": epoch_entry["parameters"],
                "total_flops": epoch_entry.get("total_flops", 0),
                "field_reports": [],
            }
            steps.append(step)
            points.append(_progress(epoch_entry))
            if entry["command_id"]:
                by_command[entry["command_id"]] = step
        elif kind == "field_report":
            judged = by_command.get(entry.get("command_id", ""))
            if judged is not None:
                judged["field_reports"].append({"outcome": entry["outcome"], "contribution": entry["contribution"]})
        elif kind == "run_finished":
            finished = entry
    if not steps:
        raise RunDamaged(f"{directory}: the record holds no decision points" + (f" ({damage})" if damage else ""))
    last = _progress(finished) if finished is not None else points[-1]
    first_epoch = next(e for e in entries if e["kind"] == "epoch")
    host_epoch_flops = float(first_epoch.get("total_flops", 0)) / max(int(first_epoch["epoch"]), 1)
    for step, reward in zip(steps, rewards([*points, last], host_parameters, host_epoch_flops, weights), strict=True):
        step["reward"] = reward
    outcome = {
        "finished": finished is not None,
        "val_accuracy": last.val_accuracy,
        "parameters": last.parameters,
        "host_parameters": host_parameters,
        "total_flops": last.total_flops,
        "return": sum(step["reward"] for step in steps),
        "epochs": last.epoch,
        "host_epoch_flops": host_epoch_flops,
        # Reported next to the returns; no reward, evaluation verdict or training step ever reads it.
        "test_accuracy": finished.get("test_accuracy") if finished is not None else None,
        "budget": budget_of(directory),
    }
    episode = Episode(str(started.get("run_id") or directory.name), schema_digest, tuple(steps), outcome)
    return RunExperience(episode, damage, finished is not None)


def rewards_of(episode: Episode, weights: RewardWeights) -> list[float]:
    """The episode's rewards under ``weights``, from where the run stood at each decision point and at its end (what
    the episode keeps): a learner charges the costs it is configured with, whatever they were at collection."""
    outcome = episode.outcome
    points = [
        Progress(int(s["epoch"]), float(s["val_accuracy"] or 0.0), int(s["parameters"]), int(s["total_flops"]))
        for s in episode.steps
    ]
    last = Progress(int(outcome["epochs"]), float(outcome["val_accuracy"]), int(outcome["parameters"]),
                    int(outcome["total_flops"]))  # fmt: skip
    return rewards([*points, last], int(outcome["host_parameters"]), float(outcome["host_epoch_flops"]), weights)


#: The options that bound a policy's germinations: the budget every decision was made under.
BUDGET_KEYS = ("max_added_parameter_fraction", "max_seed_parameter_fraction")


def budget_of(run_dir: Path) -> dict[str, float]:
    """The parameter budget the run's policy decided under, from the run's resolved ``config.toml`` (the deciding
    policy's own section): a learner re-encodes the run's decisions under the same budget. Empty when unknown."""
    path = (run_dir if run_dir.is_dir() else run_dir.parent) / "config.toml"
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    tamiyo = config.get("tamiyo", {})
    section = tamiyo.get(str(tamiyo.get("policy", "")), {})
    return {key: float(section[key]) for key in BUDGET_KEYS if isinstance(section.get(key), (int, float))}


def _progress(entry: Mapping[str, Any]) -> Progress:
    accuracy = entry.get("val_accuracy")
    return Progress(
        epoch=int(entry.get("epoch", entry.get("epochs", 0))),
        val_accuracy=float(accuracy) if accuracy is not None else 0.0,
        parameters=int(entry["parameters"]),
        total_flops=int(entry.get("total_flops", 0)),
    )
