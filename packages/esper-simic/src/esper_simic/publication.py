"""Publication and rollback: a validated candidate becomes the live version of the policy store and is sent on Oona's
policy stream, so that every controller, in-process or ``esper serve tamiyo``, adopts it between two decisions.

Only a candidate whose evaluation passed is published, and the evaluation travels with it (the store's
``<version>.json`` and the update's ``training_metrics``). A rollback points the store back at an earlier version
(controllers following the store load it even though it was issued earlier: the store says it is a rollback) and sends
the earlier weights on the bus again as a new update, signed now, since a controller on the bus refuses an update
issued before its live one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from esper_core.errors import ConfigError
from esper_core.leyline import PolicyUpdate
from esper_core.oona import OonaOptions
from esper_core.storage.policy_store import LiveVersion
from esper_simic.workbench import Workbench

__all__ = ["CANDIDATE_UPDATE", "EVALUATION", "TRAINING", "publish", "read_candidate", "rollback"]

CANDIDATE_UPDATE = "candidate.update"
EVALUATION = "evaluation.json"
TRAINING = "training.json"


def read_candidate(directory: Path) -> PolicyUpdate:
    path = directory / CANDIDATE_UPDATE
    if not path.is_file():
        raise ConfigError(f"{directory} holds no candidate ({CANDIDATE_UPDATE}): train one with `esper simic train`")
    return read_update_file(path)


def read_update_file(path: Path) -> PolicyUpdate:
    """A ``PolicyUpdate`` saved by Simic (or ``save_update``); a file that is not one is refused with its path."""
    update = PolicyUpdate()
    try:
        update.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as error:
        raise ConfigError(f"{path} is not a readable policy update ({type(error).__name__}: {error})") from None
    return update


def _send(workbench: Workbench, update: PolicyUpdate) -> bool:
    """Send ``update`` on the policy stream when the configured bus reaches other processes (Redis)."""
    if workbench.config.get(OonaOptions).backend == "memory":
        return False
    bus = workbench.shared_bus("sending a policy update on the bus", "simic")
    try:
        bus.publish(update)
    finally:
        bus.close()
    return True


def publish(workbench: Workbench, candidate: Path) -> tuple[LiveVersion, bool]:
    """Publish the candidate in ``candidate`` under its version if its evaluation passed; returns the live version and
    whether it was also sent on the bus."""
    update = read_candidate(candidate)
    try:
        evaluation: dict[str, Any] = json.loads((candidate / EVALUATION).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{candidate} was never evaluated: run `esper simic evaluate {candidate}` first (only a candidate that is "
            "not worse than the live policy and the heuristic is published)"
        ) from None
    if not evaluation.get("passed"):
        reasons = "; ".join(evaluation.get("reasons", [])) or "no verdict"
        raise ConfigError(f"{candidate} failed its evaluation and is not published: {reasons}")
    training = json.loads((candidate / TRAINING).read_text()) if (candidate / TRAINING).exists() else {}
    metadata = {
        "published_at": time.time(),
        "candidate": str(candidate),
        "evaluation": evaluation,
        "training": training,
    }
    live = workbench.policy_store().publish(update.tamiyo_policy_version, update, metadata)
    return live, _send(workbench, update)


def rollback(workbench: Workbench, to: str | None) -> tuple[LiveVersion, bool]:
    """Make ``to`` (default: the version before the live one) live again; re-send its weights on the bus."""
    store = workbench.policy_store()
    live = store.rollback(to)
    earlier = store.read(live.version)
    verdict = workbench.policy.load_update(earlier, allow_rollback=True)
    if not verdict.accepted:
        return live, False
    reissued = workbench.policy.export_update(
        policy_version=live.version,
        state_dict=workbench.policy.clone_network().state_dict(),
        training_metrics=dict(earlier.training_metrics),
    )
    return live, _send(workbench, reissued)
