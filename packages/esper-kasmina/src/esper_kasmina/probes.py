"""Measurements on a fixed probe batch, taken at decision points only (never per training batch).

Probes run the host in eval mode, so they leave no trace: no batch-norm statistics move, no dropout draws from
the training RNG, and gradients come from ``torch.autograd.grad`` instead of ``.backward()``, so the training
loop's ``.grad`` fields are untouched.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn

from esper_core import flops
from esper_core.flops import StepFlops, evaluation_mode
from esper_core.leyline import lifecycle
from esper_core.leyline.lifecycle import Stage
from esper_kasmina.slot import SeedSlot

LossFn = Callable[[Any, Any], torch.Tensor]


@attrs.frozen
class Probe:
    """A fixed batch and the task loss, for gate measurements."""

    inputs: Any
    targets: Any
    loss_fn: LossFn

    def loss(self, model: nn.Module) -> torch.Tensor:
        outputs = model(*self.inputs) if isinstance(self.inputs, (tuple, list)) else model(self.inputs)
        return self.loss_fn(outputs, self.targets)


@contextmanager
def as_stage(slot: SeedSlot, stage: Stage) -> Iterator[None]:
    """Let ``slot`` behave as in ``stage`` for a measurement, then restore it."""
    previous = slot.record.stage
    slot.record.stage = stage
    slot.sync_hook()
    try:
        yield
    finally:
        slot.record.stage = previous
        slot.sync_hook()


@contextmanager
def host_alone(slot: SeedSlot) -> Iterator[None]:
    """Take ``slot``'s seed out of the forward pass for a measurement, then put it back."""
    previous = slot.record.stage
    slot.record.stage = lifecycle.DORMANT
    slot.sync_hook()
    try:
        yield
    finally:
        slot.record.stage = previous
        slot.sync_hook()


def _gradients(loss: torch.Tensor, parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(parameters), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.stack([(t.detach().double() ** 2).sum() for t in tensors]).sum().sqrt().item())


@attrs.frozen
class IsolationReport:
    #: ||g_with - g_without|| / ||g_without|| over every host parameter.
    relative_difference: float
    #: |loss_with - loss_without|: the host's output must be unchanged in value.
    loss_difference: float
    loss: float


def isolation(model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe) -> IsolationReport:
    """Compare the host's gradients on the probe batch with the seed in the forward pass and without it."""
    with evaluation_mode(model):
        loss_with = probe.loss(model)
        with_seed = _gradients(loss_with, host)
        with host_alone(slot):
            loss_without = probe.loss(model)
            without_seed = _gradients(loss_without, host)
    difference = _norm([a - b for a, b in zip(with_seed, without_seed, strict=True)])
    scale = _norm(without_seed)
    return IsolationReport(
        relative_difference=difference / scale if scale > 0 else difference,
        loss_difference=abs(float(loss_with.item()) - float(loss_without.item())),
        loss=float(loss_without.item()),
    )


@attrs.frozen
class SeedHealth:
    output_finite: bool
    output_shape: tuple[int, ...]
    #: The shape the seed must output: the batch and the slot's shape (what it writes into).
    expected_shape: tuple[int, ...]
    output_dtype: torch.dtype
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    gradient_norm: float
    gradients_finite: bool
    loss: float


def activation(model: nn.Module, slot: SeedSlot, probe: Probe) -> torch.Tensor:
    """The seed's input at ``slot`` on the probe batch (the host activation it reads, before any seed), without
    gradients."""
    captured: list[torch.Tensor] = []
    handle = slot.tap_input(lambda value: captured.append(value.detach()))
    try:
        with evaluation_mode(model), torch.no_grad():
            probe.loss(model)
    finally:
        handle.remove()
    return captured[0]


def seed_health(model: nn.Module, slot: SeedSlot, probe: Probe) -> SeedHealth:
    """The seed's output on the host's real activation, and its gradient norm under the task loss.

    The slot must be in a stage where the seed is in the forward pass (use :func:`as_stage` for a trial).
    """
    assert slot.seed is not None and slot._target is not None
    # The seed's input is taken from the pass that computes the gradients (before the seed's hook rewrites anything),
    # not from a forward of its own: the same values, one probe forward fewer.
    captured: list[torch.Tensor] = []
    handle = slot.tap_input(lambda value: captured.append(value.detach()))
    try:
        with evaluation_mode(model):
            loss = probe.loss(model)
            grads = _gradients(loss, slot.seed_parameters())
    finally:
        handle.remove()
    host_activation = captured[0]
    with evaluation_mode(model), torch.no_grad():
        output = slot.seed(host_activation)
    finite_grads = all(bool(torch.isfinite(g).all()) for g in grads)
    return SeedHealth(
        output_finite=bool(torch.isfinite(output).all()),
        output_shape=tuple(output.shape),
        expected_shape=(host_activation.shape[0], *slot.slot_shape),
        output_dtype=output.dtype,
        input_shape=tuple(host_activation.shape),
        input_dtype=host_activation.dtype,
        gradient_norm=_norm(grads) if finite_grads else float("inf"),
        gradients_finite=finite_grads,
        loss=float(loss.item()),
    )


@attrs.frozen
class SlotStatistics:
    activation_rms: float
    gradient_norm: float
    #: For a slot whose seed was asked for: the norm of the loss gradient with respect to the seed's parameters,
    #: exactly what :func:`seed_health` reports as ``gradient_norm`` (inf when a gradient is not finite).
    seed_gradient_norm: float | None = None
    #: For a width slot: the activation it reads and each sample's loss gradient at the activation it writes (what
    #: :mod:`esper_kasmina.growth_statistics` needs), detached.
    read: torch.Tensor | None = attrs.field(default=None, eq=False)
    write_gradient: torch.Tensor | None = attrs.field(default=None, eq=False)


def slot_statistics(
    model: nn.Module, slots: Sequence[SeedSlot], probe: Probe, seeds: Sequence[SeedSlot] = ()
) -> dict[str, SlotStatistics]:
    """Per slot: the RMS of the host activation its seed reads and the norm of the loss gradient with respect to
    the activation it writes (one and the same for a residual slot).

    For each slot in ``seeds`` (seeds in the forward pass), the gradient norm of its seed's parameters comes from the
    same forward and backward pass, instead of one pass of :func:`seed_health` per seed.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for slot in slots:
        assert slot._target is not None

        def keep(_m: nn.Module, _i: Any, out: torch.Tensor, slot_id: str = slot.slot_id) -> None:
            captured[slot_id] = out

        handles.append(slot._target.register_forward_hook(keep, prepend=True))
    reads: dict[str, torch.Tensor] = {}
    for slot in slots:
        if slot.is_width:

            def keep_read(value: torch.Tensor, slot_id: str = slot.slot_id) -> None:
                reads[slot_id] = value

            handles.append(slot.tap_input(keep_read))
    seed_parameters = {slot.slot_id: slot.seed_parameters() for slot in seeds}
    try:
        with evaluation_mode(model):
            loss = probe.loss(model)
            tensors = [captured[slot.slot_id] for slot in slots if slot.slot_id in captured]
            wanted = [*tensors, *(p for parameters in seed_parameters.values() for p in parameters)]
            grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    seed_norms = {}
    position = len(tensors)
    for slot_id, parameters in seed_parameters.items():
        found = grads[position : position + len(parameters)]
        position += len(parameters)
        seed_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, found, strict=True)]
        finite = all(bool(torch.isfinite(g).all()) for g in seed_grads)
        seed_norms[slot_id] = _norm(seed_grads) if finite else float("inf")
    result = {}
    measured = [s for s in slots if s.slot_id in captured]
    for slot, tensor, grad in zip(measured, tensors, grads[: len(tensors)], strict=True):
        read = reads.get(slot.slot_id, tensor)
        rms = float(read.detach().double().pow(2).mean().sqrt().item())
        norm = 0.0 if grad is None else float(grad.double().norm().item())
        width = slot.slot_id in reads and grad is not None
        result[slot.slot_id] = SlotStatistics(
            rms,
            norm,
            seed_norms.get(slot.slot_id),
            read.detach() if width else None,
            per_sample(grad, tensor.shape[0]) if width else None,
        )
    return result


def per_sample(gradient: torch.Tensor, batch: int) -> torch.Tensor:
    """Each sample's own loss gradient, from the gradient of the batch's mean loss."""
    return gradient.detach() * batch


def read_and_gradient(model: nn.Module, slot: SeedSlot, probe: Probe) -> tuple[torch.Tensor, torch.Tensor]:
    """For a width slot on the probe batch: the activation it reads, and each sample's loss gradient at the
    activation it writes (the host alone: whatever seed the slot holds is left out)."""
    assert slot._target is not None
    read: list[torch.Tensor] = []
    written: list[torch.Tensor] = []
    handles = [
        slot.tap_input(lambda value: read.append(value.detach())),
        slot._target.register_forward_hook(lambda _m, _i, out: written.append(out), prepend=True),
    ]
    try:
        with evaluation_mode(model), host_alone(slot):
            loss = probe.loss(model)
            (gradient,) = torch.autograd.grad(loss, [written[0]])
    finally:
        for handle in handles:
            handle.remove()
    return read[0], per_sample(gradient, written[0].shape[0])


def loss_with_seed(model: nn.Module, slot: SeedSlot, seed: nn.Module, probe: Probe) -> float:
    """The probe batch's loss with ``seed`` at full strength in ``slot`` (as if SHADOWING), without gradients; the
    slot is left as it was."""
    previous = slot.seed
    slot.seed = seed
    try:
        with evaluation_mode(model), as_stage(slot, lifecycle.SHADOWING), torch.no_grad():
            return float(probe.loss(model).item())
    finally:
        slot.seed = previous
        slot.sync_hook()


@attrs.frozen
class StepCost:
    """Counted FLOPs of a training step's forward and backward on the probe batch, with a seed and without it."""

    with_seed: StepFlops
    without: StepFlops

    @property
    def overhead(self) -> float:
        """The relative increase of the step's cost the seed brings: with over without, minus 1."""
        return self.with_seed.total / max(self.without.total, 1) - 1.0


def step_cost(model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe) -> StepCost:
    """Count one forward + backward on the probe batch with the seed as it will train once it passes (PROBATIONARY:
    joint training, gradients through the seed into the host), and the same with the host alone.

    Counted, not timed: the result depends on the model and the probe batch only, never on the machine's load, and
    costs one pass of each on a few of the probe's samples (no warm-up, no repeats).
    """
    parameters = [*host, *slot.seed_parameters()]
    # The ratio is per sample: a few probe samples give it exactly, at a fraction of a full probe pass's cost.
    few = Probe(flops.first(probe.inputs, flops.COUNT_SAMPLES), flops.first(probe.targets, flops.COUNT_SAMPLES),
                probe.loss_fn)  # fmt: skip
    samples = _batch_size(few.inputs)
    with evaluation_mode(model):
        with as_stage(slot, lifecycle.PROBATIONARY):
            with_seed = flops.count_step(lambda: few.loss(model), parameters, samples)
        with host_alone(slot):
            without = flops.count_step(lambda: few.loss(model), list(host), samples)
    return StepCost(with_seed=with_seed, without=without)


def step_milliseconds(
    model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe, repeats: int = 5
) -> float:
    """Median wall-clock time of one forward + backward on the probe batch with the seed as in PROBATIONARY, in ms,
    after one warm-up pass. Timed: it depends on the machine and its load (only ``kasmina.max_step_ms`` uses it)."""
    parameters = [*host, *slot.seed_parameters()]

    def timed() -> float:
        start = time.perf_counter()
        _gradients(probe.loss(model), parameters)
        return time.perf_counter() - start

    with evaluation_mode(model), as_stage(slot, lifecycle.PROBATIONARY):
        timed()
        return statistics.median(timed() for _ in range(repeats)) * 1000.0


def _batch_size(inputs: Any) -> int:
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return int(first.shape[0])
