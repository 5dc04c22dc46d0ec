"""Tolaria's training step: one optimizer step on one batch (docs/tolaria.md, "The training loop").

:class:`TrainingStep` does one thing, the step, and is all that runs per batch:

1. the learning-rate schedule sets every parameter group's rate for this step (:class:`LearningRateSchedule`; no
   work at all with the default constant schedule);
2. the gradients are cleared, and the batch goes through forward, the task's loss and backward, whole or as
   ``accumulation_steps`` micro-batches whose losses are weighted by their share of the batch, so that the summed
   gradient is the whole batch's (the mean loss over its examples), whatever the sizes of the micro-batches (the
   weight, times fp16's scale, is also published to modules that add gradient terms in their own backward pass:
   :mod:`esper_core.loss_weight`);
3. under ``precision = "bf16"`` or ``"fp16"`` the forward passes and losses run under ``torch.autocast``; fp16's
   losses are scaled (``torch.amp.GradScaler``) and the gradients unscaled before anything reads them;
4. the gradient norm of every optimized parameter is clipped (``gradient_clip``) and the optimizer steps (fp16: the
   scaler skips a step whose gradients overflowed, and adapts its scale).

It returns the batch's summed loss and count of correct examples as device tensors (no host synchronisation). With
the defaults (fp32, no accumulation, constant rate, no compile) it computes exactly what the loop computed before
this module existed: the same operations, in the same order.

On several processes (``ranks``, docs/distributed.md) the forward passes run through a
``DistributedDataParallel`` wrapper of the model, built again by :meth:`TrainingStep.prepare` whenever the seeds in
the forward pass change (a germinated seed's parameters must be registered; a culled one's must go), never per batch.
Building it broadcasts the leader's parameters and buffers, so a new seed starts from the leader's weights on every
rank. The optimizer is not touched: its state stays. The backward passes of all micro-batches but the last skip the
gradient all-reduce (``no_sync``); each rank's loss is weighted by its share of the batch (``share``), so that the
averaged gradient is the whole batch's mean even when the shards differ in size.

``compile = true`` runs the forward passes through ``torch.compile(model)``, compiled again (after
``torch.compiler.reset()``) only when :meth:`TrainingStep.prepare` is given a new configuration of the seeds in the
forward pass (a change of what the step computes) or after a checkpoint was restored. Validation and measurements use
the model itself.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Collection, Hashable
from typing import Any

import torch
from torch import nn

from esper_core.errors import ConfigError
from esper_core.loss_weight import weighted_loss
from esper_core.protocols import BASE_LR_KEY, SCHEDULED_LR_KEY, SEED_GROUP_KEY
from esper_core.tolaria.options import RunOptions, TolariaOptions
from esper_core.tolaria.ranks import Ranks

__all__ = ["LearningRateSchedule", "TrainingStep", "check_precision", "micro_batch_sizes"]

logger = logging.getLogger("esper.tolaria")

LossFn = Callable[[Any, Any], torch.Tensor]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(options: TolariaOptions, device: torch.device) -> None:
    """Refuse a precision the run's device cannot do, before anything is built; note a bf16 CPU run that will be
    emulated (it runs, in bfloat16 as asked, but probably slower than fp32)."""
    precision = options.precision
    if precision == "fp32":
        return
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"tolaria.precision = 'fp16' needs a CUDA device, and this run trains on {device.type!r} (run.device): "
            "float16 autocast with gradient scaling is a GPU technique; use tolaria.precision = 'bf16' (autocast "
            "to bfloat16, no scaling needed) or 'fp32'"
        )
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise ConfigError(
            f"tolaria.precision = {precision!r}: torch has no autocast for the device type {device.type!r} "
            "(run.device); use tolaria.precision = 'fp32'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"tolaria.precision = 'bf16': the CUDA device {torch.cuda.get_device_name(device)!r} does not support "
            "bfloat16; use tolaria.precision = 'fp16' (with gradient scaling) or 'fp32'"
        )
    if precision == "bf16" and device.type == "cpu" and not _native_cpu_bf16():
        logger.warning(
            "tolaria.precision = 'bf16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): autocast "
            "runs in bfloat16 as asked, emulated, and is likely slower than 'fp32'"
        )


def _native_cpu_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def micro_batch_sizes(count: int, parts: int) -> list[int]:
    """``count`` examples in at most ``parts`` consecutive micro-batches whose sizes differ by at most one (the
    larger first); none is empty (a batch smaller than ``parts`` has fewer)."""
    size, extra = divmod(count, parts)
    return [size + 1] * extra + [size] * (parts - extra if size else 0)


class LearningRateSchedule:
    """The learning rate of every parameter group as its base times a factor of the optimizer step.

    ``factor(t)`` for the step numbered ``t`` (0 for the run's first optimizer step): with ``warmup_steps = W > 0``,
    ``(t + 1) / W`` while ``t < W``; after it, with ``s = t - W``, ``1`` ("constant"), ``m + (1 - m) (1 + cos(pi
    min(1, s / (T - W)))) / 2`` ("cosine", ``T`` the run's total optimizer steps, ``m`` = ``min_fraction``), or
    ``gamma ** (s // every)`` ("step").

    A group's base is the ``lr`` it was given by anyone but the schedule (the host's from the configuration, a seed's
    by its executor at germination or by a FINE_TUNE): a group whose ``lr`` is not the value the schedule last wrote
    there (``SCHEDULED_LR_KEY``) takes its ``lr`` as its base (``BASE_LR_KEY``). Both live in the group, so the
    optimizer's ``state_dict`` carries them through checkpoints, resumes and rollbacks, and the factor depends on the
    step alone: nothing else to save.
    """

    def __init__(
        self,
        kind: str,
        *,
        total_steps: int,
        warmup_steps: int = 0,
        min_fraction: float = 0.0,
        step_every: int = 1000,
        gamma: float = 0.1,
    ) -> None:
        if kind not in ("constant", "cosine", "step"):
            raise ValueError(f"unknown learning-rate schedule {kind!r}")
        self.kind = kind
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_fraction = min_fraction
        self.step_every = step_every
        self.gamma = gamma

    @classmethod
    def of(cls, options: TolariaOptions, total_steps: int) -> LearningRateSchedule | None:
        """The run's schedule, or ``None`` for a constant rate without warm-up (the optimizer is left alone)."""
        if options.lr_schedule == "constant" and not options.lr_warmup_steps:
            return None
        return cls(
            options.lr_schedule,
            total_steps=total_steps,
            warmup_steps=options.lr_warmup_steps,
            min_fraction=options.lr_min_fraction,
            step_every=options.lr_step_every,
            gamma=options.lr_step_gamma,
        )

    def factor(self, step: int) -> float:
        warmup = self.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        since = step - warmup
        if self.kind == "cosine":
            progress = min(1.0, since / max(1, self.total_steps - warmup))
            return self.min_fraction + (1.0 - self.min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return float(self.gamma ** (since // self.step_every))
        return 1.0

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every group's rate for optimizer step ``step``."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            if group.get(SCHEDULED_LR_KEY) != group["lr"]:  # new, or set by someone else: that rate is the base
                group[BASE_LR_KEY] = float(group["lr"])
            rate = group[BASE_LR_KEY] * factor
            group["lr"] = rate
            group[SCHEDULED_LR_KEY] = rate


class _Replicated(nn.Module):
    """The model, and the optimized parameters that live outside its module tree (seed modules, which the seed
    executor keeps beside the host so that the host's own parameter names never change), as one module: what the
    data-parallel wrapper synchronises is every parameter the optimizer steps."""

    def __init__(self, model: nn.Module, outside: list[nn.Parameter]) -> None:
        super().__init__()
        self.model = model
        self.outside = nn.ParameterList(outside)

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs)


class TrainingStep:
    """One optimizer step on one batch; see the module's notes."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        correct_fn: LossFn,
        device: torch.device,
        *,
        precision: str = "fp32",
        accumulation_steps: int = 1,
        gradient_clip: float = 0.0,
        schedule: LearningRateSchedule | None = None,
        compile: bool = False,
        ranks: Ranks | None = None,
        find_unused_parameters: bool = False,
    ) -> None:
        if precision not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"unknown precision {precision!r}")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.correct_fn = correct_fn
        self.device = device
        self.precision = precision
        self.accumulation_steps = accumulation_steps
        self.gradient_clip = gradient_clip
        self.schedule = schedule
        self.compile = compile
        self.ranks = ranks if ranks is not None and ranks.distributed else None
        #: The data-parallel wrapper of the model (several ranks), rebuilt by :meth:`prepare`.
        self.data_parallel: nn.Module | None = None
        #: Times the data-parallel wrapper was built, and the ids of the parameters it synchronises.
        self.wrappings = 0
        self._registered: tuple[int, ...] = ()
        self.find_unused_parameters = find_unused_parameters
        #: fp16 only: scales the loss so that small gradients survive float16, and skips steps that overflow.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        #: What the forward passes call: the model, or its compiled form.
        self.forward: Callable[..., Any] = model
        self._compiled_for: Hashable | None = None
        #: Times the forward pass was compiled (a fresh ``torch.compile`` after a configuration change).
        self.compilations = 0

    @classmethod
    def of_run(cls, run: Any, ranks: Ranks | None = None) -> TrainingStep:
        """The step of an assembled run (``esper_core.tolaria.assembly.Run``)."""
        options: RunOptions = run.options
        tolaria: TolariaOptions = run.tolaria
        steps_per_epoch = math.ceil(len(run.data.train[0]) / options.batch_size)
        return cls(
            run.model,
            run.optimizer,
            run.task.loss,
            run.task.correct,
            run.device,
            precision=tolaria.precision,
            accumulation_steps=tolaria.accumulation_steps,
            gradient_clip=tolaria.gradient_clip,
            schedule=LearningRateSchedule.of(tolaria, options.epochs * steps_per_epoch),
            compile=tolaria.compile,
            ranks=ranks,
            find_unused_parameters=tolaria.find_unused_parameters,
        )

    # -- compile ----------------------------------------------------------------------------------------------
    def prepare(self, configuration: Hashable, in_forward: Collection[str] = ()) -> None:
        """Before training with the seeds' ``configuration`` (what the forward pass computes): with ``compile``,
        compile the forward pass anew when it changed. Called at the start of an epoch and after each decision
        point, never per batch. On several ranks (every rank calls this at the same points, with the same
        arguments), wrap the model for data parallelism anew when the parameters that take a gradient changed:
        the host's and those of the seeds in the slots ``in_forward``, unless paused (a paused seed's parameters
        do not require a gradient)."""
        replicated = self._replicated(in_forward) if self.ranks is not None else []
        registered = tuple(id(p) for p in replicated)
        if configuration == self._compiled_for and registered == self._registered:
            return
        if not self.compile and self.ranks is None:
            return
        module: nn.Module = self.model
        if self.ranks is not None:
            self.forward = self.model
            self.data_parallel = None  # the old wrapper's gradient hooks go with it, before the new one registers
            module = self.data_parallel = self._wrap(replicated)
            self._registered = registered
            self.wrappings += 1
        self.forward = module
        if self.compile and (configuration != self._compiled_for or self.ranks is not None):
            torch.compiler.reset()  # drop the previous configuration's graphs: no stale guards pile up
            self.forward = torch.compile(module)
            self.compilations += 1
            logger.info("tolaria.compile: compiling the training step's forward pass (%d so far)", self.compilations)
        self._compiled_for = configuration

    def _replicated(self, in_forward: Collection[str]) -> list[nn.Parameter]:
        """The optimized parameters that take a gradient in a training step, in the optimizer's order: every
        group's but those of seeds outside the forward pass (a GERMINATED seed's), and none that does not require
        a gradient."""
        slots = set(in_forward)
        return [
            p
            for group in self.optimizer.param_groups
            if group.get(SEED_GROUP_KEY) is None or group[SEED_GROUP_KEY] in slots
            for p in group["params"]
            if p.requires_grad
        ]

    def _wrap(self, replicated: list[nn.Parameter]) -> nn.Module:
        """The model in a ``DistributedDataParallel`` wrapper that synchronises the gradients of ``replicated``
        (building it broadcasts the leader's weights and buffers). ``tolaria.find_unused_parameters``: for a host
        whose forward pass leaves some of its parameters out of the loss."""
        from torch.nn.parallel import DistributedDataParallel

        assert self.ranks is not None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        inside = {id(p) for p in self.model.parameters()}
        view = _Replicated(self.model, [p for p in replicated if id(p) not in inside])
        with self.ranks.collective("wrapping the model for data parallelism"):
            return DistributedDataParallel(
                view, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
            )

    # -- the step ---------------------------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimizer steps: the host's and each seed's group."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def micro_batch_context(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around each micro-batch's forward and backward; ``last``: the batch's final one. The data-parallel
        wrapper synchronises gradients in the last one's backward only."""
        wrapper = self.data_parallel
        if wrapper is None or last:
            return contextlib.nullcontext()
        synchronising: contextlib.AbstractContextManager[Any] = wrapper.no_sync()  # type: ignore[operator]
        return synchronising

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, step: int, share: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch as optimizer step number ``step`` (counted over the run, from 0); returns the batch's
        summed loss and its count of correct examples, as float64 device tensors.

        ``share``: what the batch's gradient is multiplied by (on several ranks, this rank's shard's size times the
        number of ranks over the whole batch's size, so that the ranks' averaged gradient is the whole batch's)."""
        if self.schedule is not None:
            self.schedule.apply(self.optimizer, step)
        self.optimizer.zero_grad(set_to_none=True)
        count = int(inputs.shape[0])
        if self.accumulation_steps == 1:
            with self.micro_batch_context(last=True):
                loss, correct = self._forward_backward(inputs, targets, None if share == 1.0 else share)
            loss_sum = loss.detach().double() * count
        else:
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.float64, device=self.device)
            start = 0
            sizes = micro_batch_sizes(count, self.accumulation_steps)
            for number, size in enumerate(sizes):
                part = slice(start, start + size)
                start += size
                with self.micro_batch_context(last=number == len(sizes) - 1):
                    loss, part_correct = self._forward_backward(inputs[part], targets[part], share * size / count)
                loss_sum += loss.detach().double() * size
                correct += part_correct
        self._update()
        return loss_sum, correct

    def _forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of one (micro-)batch; ``weight``: its share of the batch (None: all of it)."""
        # What the loss is multiplied by before backward, for modules that add gradient terms of their own.
        factor: float | torch.Tensor | None = weight
        if self.scaler is not None:
            factor = self.scaler.scale(torch.tensor(1.0 if weight is None else weight, device=self.device))
        with weighted_loss(factor) if factor is not None else contextlib.nullcontext():
            if self.precision == "fp32":
                outputs = self.forward(inputs)
                loss = self.loss_fn(outputs, targets)
            else:
                with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                    outputs = self.forward(inputs)
                    loss = self.loss_fn(outputs, targets)
        scaled = loss if weight is None else loss * weight
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss, self.correct_fn(outputs.detach(), targets).double()

    def _update(self) -> None:
        scaler = self.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # clipping and the optimizer see the true gradients
        if self.gradient_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.gradient_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the fp16 scaler's scale and growth count (the schedule's state is the step
        count, in the loop's history, and each group's base, in the optimizer's state)."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state (a resume, a rollback). The restored model's seed modules are new objects:
        with ``compile``, the next :meth:`prepare` compiles again."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._compiled_for = None
        self._registered = ()
        if self.data_parallel is not None:  # it wraps the modules of before: wrapped again by the next prepare
            self.forward, self.data_parallel = self.model, None
