"""What Tolaria's loop carries from one epoch to the next, and what it reports at the end.

:class:`History` is saved in every checkpoint (plain data: it loads with ``weights_only``), so a resumed run continues
with the same counters, losses and clocks as the run that was interrupted.
"""

from __future__ import annotations

import time
from typing import Any

import attrs


@attrs.define
class EpochStats:
    """One epoch of training (or the part of it before a mid-epoch decision point)."""

    train_loss: float
    train_accuracy: float
    seconds: float
    samples: int


@attrs.define
class History:
    """What the loop remembers between decision points (saved in checkpoints)."""

    epoch: int = 0
    global_step: int = 0
    val_losses: list[float] = attrs.Factory(list)
    train_losses: list[float] = attrs.Factory(list)
    failures: int = 0
    conservative_left: int = 0
    rollbacks: int = 0
    hook_ms: float | None = None
    decide_ms: float | None = None
    apply_ms: float | None = None
    host_parameters: int = 0
    #: When the run first started (wall clock, for the record).
    started_at: float = attrs.Factory(time.time)
    #: Seconds spent in training steps.
    train_seconds: float = 0.0
    #: Seconds the run has been running up to the last checkpoint, across resumes: the time a resumed run was down
    #: is not in it (work lost after the last checkpoint is, since it is done again).
    wall_seconds: float = 0.0


@attrs.frozen
class Summary:
    """The end of a run, as the console, the record and ``esper_tolaria_run_finished`` see it."""

    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    host_parameters: int
    parameters: int
    fossilized: int
    culled: int
    rollbacks: int
    #: Running time across resumes, without the time the run was down.
    wall_seconds: float
    train_seconds: float
    decisions: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
