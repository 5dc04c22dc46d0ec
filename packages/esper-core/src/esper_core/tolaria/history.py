"""What Tolaria's loop carries from one epoch to the next, and what it reports at the end.

:class:`History` is saved in every checkpoint (plain data: it loads with ``weights_only``), so a resumed run continues
with the same counters, losses, clocks and compute totals as the run that was interrupted.

Compute is counted, never timed (:mod:`esper_core.flops`): FLOPs of the forward and backward passes, the operators
PyTorch's counter knows (matrix products, convolutions, attention). ``training`` is every training step's forward
and backward (not the optimizer's update, which is element-wise); ``validation`` every plain validation pass;
``measurement`` what the counterfactual variants fused into those passes added. The probe passes of gates and slot
statistics are not in them (tens of samples per decision point, against an epoch of training).
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
    #: Counted FLOPs of the training steps (forward + backward) of the epoch so far.
    training_flops: int = 0


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
    #: On several processes: the last decision point's replica check (digest and comparison), in ms.
    replica_check_ms: float | None = None
    host_parameters: int = 0
    #: When the run first started (wall clock, for the record).
    started_at: float = attrs.Factory(time.time)
    #: Seconds spent in training steps.
    train_seconds: float = 0.0
    #: Seconds the run has been running up to the last checkpoint, across resumes: the time a resumed run was down
    #: is not in it (work lost after the last checkpoint is, since it is done again).
    wall_seconds: float = 0.0
    #: Counted FLOPs spent so far (see the module's notes), across resumes. A rollback keeps them: the work was
    #: done, even if its result was thrown away.
    training_flops: int = 0
    validation_flops: int = 0
    measurement_flops: int = 0
    #: The moving average of the host's gradient norm over the decision points so far (None: none measured yet;
    #: esper_core.tolaria.gradients).
    gradient_norm_ewma: float | None = None

    @property
    def total_flops(self) -> int:
        return self.training_flops + self.validation_flops + self.measurement_flops

    def add_evaluation(self, validation: Any) -> None:
        """Count an evaluation pass's compute (an executor that counts none reports 0)."""
        flops, plain = int(getattr(validation, "flops", 0)), int(getattr(validation, "validation_flops", 0))
        self.validation_flops += plain
        self.measurement_flops += max(flops - plain, 0)


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
    #: Counted FLOPs of the whole run (see the module's notes); validation includes the final validation and test
    #: passes, measurement their counterfactual variants.
    training_flops: int = 0
    validation_flops: int = 0
    measurement_flops: int = 0
    total_flops: int = 0
    #: Exceptions raised by plugins during the run, per plugin (``"policy:explode"``) and exception type, across
    #: resumes (esper_core.plugin_failures).
    plugin_errors: dict[str, dict[str, int]] = attrs.Factory(dict)
    #: Blueprints quarantined for the run because building them raised.
    quarantined: list[str] = attrs.Factory(list)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
