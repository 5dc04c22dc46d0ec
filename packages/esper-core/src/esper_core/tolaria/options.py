"""The ``[run]`` and ``[tolaria]`` configuration sections: what to train, for how long, and how the loop behaves."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, fraction, not_negative, open_fraction, positive


@section("run")
@attrs.frozen
class RunOptions:
    #: A task plugin's name (``esper plugins`` lists them) or a ``package.module:factory`` reference.
    task: str = "fashion-mnist"
    epochs: int = attrs.field(default=12, validator=positive)
    batch_size: int = attrs.field(default=128, validator=positive)
    #: Seeds everything: initial weights, data order, dropout, the validation split.
    seed: int = 0
    #: The run's name (its directory under ``runs_dir``); empty: ``<task>-<UTC time>``.
    name: str = ""
    runs_dir: Path = Path("runs")
    #: Fraction of the training data held out for validation (when the task brings no validation set).
    validation_fraction: float = attrs.field(default=0.1, validator=open_fraction)
    #: "cpu", "cuda", or "auto" (cuda when available).
    device: str = "auto"
    #: torch intra-op threads (0 keeps torch's default).
    threads: int = attrs.field(default=0, validator=not_negative)


@section("tolaria")
@attrs.frozen
class TolariaOptions:
    #: The controller and the seed executor, by name.
    controller: str = "tamiyo"
    seed_executor: str = "kasmina"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = attrs.field(default=2e-3, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=not_negative)
    momentum: float = attrs.field(default=0.9, validator=not_negative)
    #: Clip the gradient norm of every parameter (host and seeds) to this (0: no clipping); with fp16, after the
    #: gradients are unscaled.
    gradient_clip: float = attrs.field(default=0.0, validator=not_negative)
    #: The training step's arithmetic (docs/tolaria.md, "The training loop"): "fp32" (full precision, the default);
    #: "bf16" (autocast to bfloat16 on the CPU or CUDA; weights, gradients and optimizer state stay fp32); "fp16"
    #: (autocast to float16 with gradient scaling; CUDA only). Validation and measurements always run in fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Split each batch of ``run.batch_size`` examples into this many micro-batches, one forward and backward each,
    #: and take one optimizer step on their summed gradients (weighted so that the step equals one on the whole
    #: batch): the memory of a micro-batch for the update of a batch. 1: no accumulation.
    accumulation_steps: int = attrs.field(default=1, validator=at_least(1))
    #: The learning-rate schedule, stepped at every optimizer step and applied to every parameter group (the host's
    #: and each seed's, whose own rate is its base): "constant"; "cosine" (from the base down to ``lr_min_fraction``
    #: of it at the run's last step); "step" (multiplied by ``lr_step_gamma`` every ``lr_step_every`` steps).
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    #: Optimizer steps of linear warm-up before the schedule (the rate rises from base/N to the base); 0: none.
    lr_warmup_steps: int = attrs.field(default=0, validator=not_negative)
    #: "cosine": the fraction of its base learning rate each group ends the run with.
    lr_min_fraction: float = attrs.field(default=0.0, validator=fraction)
    #: "step": every this many optimizer steps (after the warm-up) the learning rate is multiplied by
    #: ``lr_step_gamma``.
    lr_step_every: int = attrs.field(default=1000, validator=at_least(1))
    #: "step": the factor applied every ``lr_step_every`` steps, strictly between 0 and 1.
    lr_step_gamma: float = attrs.field(default=0.1, validator=open_fraction)
    #: Compile the training step's forward pass with ``torch.compile`` (again whenever the seeds in the forward
    #: pass change: a cold compile takes seconds, and small models may not get faster; docs/tolaria.md).
    compile: bool = False
    #: On several processes (docs/distributed.md): tell the data-parallel wrapper that the host's forward pass may
    #: leave some of its parameters without a gradient (a branch not taken), at the cost of a search of the
    #: autograd graph every step. Seeds never need it: the wrapper is built again whenever theirs change.
    find_unused_parameters: bool = False
    #: Gradient measurements at each decision point (never per batch): the fixed probe batch is split into this many
    #: micro-batches to measure the host's gradient norm and variance and the host-seed gradient conflict rate
    #: (docs/tolaria.md, "Gradient measurements"); at least 2, at most ``probe_size``; 0: not measured.
    gradient_micro_batches: int = attrs.field(default=8, validator=not_negative)
    #: A decision point every this many training steps in addition to each epoch's end (0: epoch ends only).
    decision_every_steps: int = attrs.field(default=0, validator=not_negative)
    #: The controller's decision must come back within this; otherwise the decision point waits (a no-op).
    decision_timeout_s: float = attrs.field(default=5.0, validator=positive)
    #: Applying a command that takes longer than this counts as a failure (the model is never trained while a
    #: command is half applied, so the application itself is never abandoned).
    apply_timeout_s: float = attrs.field(default=5.0, validator=positive)
    #: After this many consecutive failed decisions the controller is not consulted for ``conservative_for``
    #: decision points (conservative mode).
    failures_to_conservative: int = attrs.field(default=3, validator=positive)
    conservative_for: int = attrs.field(default=2, validator=positive)
    #: An epoch that a plugin's exception keeps from finishing (a task's model or loss, the executor's validation) is
    #: trained again from the last checkpoint; after this many such epochs in a row the run stops, resumable.
    failed_epochs_to_stop: int = attrs.field(default=2, validator=positive)
    #: Examples in the fixed batch the seed executor's gates and Tolaria's gradient measurements use.
    probe_size: int = attrs.field(default=64, validator=positive)
    #: Validate on at most this many examples (0: the whole validation set).
    max_validation_samples: int = attrs.field(default=0, validator=not_negative)
    #: Checkpoints kept (the newest ones).
    keep_checkpoints: int = attrs.field(default=2, validator=positive)
    #: A training loss above this multiple of the previous epoch's is a spike: roll back and cull.
    loss_spike_factor: float = attrs.field(default=3.0, validator=positive)
    #: Rollbacks allowed in one run before it stops.
    max_rollbacks: int = attrs.field(default=3, validator=not_negative)
    #: Keep the newest checkpoint in memory too, when its tensors take at most this many MiB, so that a rollback
    #: restores from memory instead of reading the file back (0: always from disk).
    fast_rollback_max_mb: float = attrs.field(default=512.0, validator=not_negative)
    #: Measure CPU and GPU utilization and GPU temperature for the state packet (docs/tolaria.md, "Hardware"). They
    #: vary with whatever else the machine runs, so a policy that reads them (the learned one) may decide differently
    #: in two runs of one configuration; false leaves them absent, making decisions independent of machine load.
    hardware_utilization: bool = True
    #: Mirror every run-record entry on the shared bus's ``record`` stream, so that ``esper serve simic`` (with
    #: ``simic.service.listen``) learns from this run; needs ``oona.backend`` to be a shared bus.
    publish_record: bool = False

    def __attrs_post_init__(self) -> None:
        if self.gradient_micro_batches == 1:
            raise ValueError(
                "gradient_micro_batches must be 0 (no gradient measurements) or at least 2 (a variance needs two "
                "micro-batches), got 1"
            )
        if self.gradient_micro_batches > self.probe_size:
            raise ValueError(
                f"gradient_micro_batches ({self.gradient_micro_batches}) cannot exceed probe_size "
                f"({self.probe_size}): each micro-batch needs at least one probe example"
            )
