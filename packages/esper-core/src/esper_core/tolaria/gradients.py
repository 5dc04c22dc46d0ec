"""Gradient measurements of a decision point (docs/tolaria.md, "Gradient measurements"), never taken per batch.

On the run's fixed probe batch (``tolaria.probe_size`` training examples, the batch the executor's gates use), split
into ``M = tolaria.gradient_micro_batches`` consecutive micro-batches ``B_1 .. B_M`` of ``m_i`` examples (sizes
differing by at most one, ``N`` in all):

- **the host** is the optimizer's host group and every FOSSILIZED seed's group (part of the host now); **the
  seeds** are those whose output is in the model's value and which train: BLENDING, SHADOWING, PROBATIONARY, not
  paused (a TRAINING seed adds nothing to the value: it cannot pull the host's output anywhere);
- ``g_i``: the gradient of ``B_i``'s mean loss with respect to the host's parameters; ``g = sum_i (m_i / N) g_i``,
  the probe batch's gradient;
- ``gradient_norm = ||g||`` (L2, over every host parameter);
- ``gradient_variance = sum_i m_i ||g_i - g||^2 / (M - 1)``: for examples drawn independently, an unbiased estimate
  of the trace of the covariance of one example's gradient, ``E||grad l_j - E grad l||^2`` (a micro-batch of m
  examples has a variance m times smaller), so it does not depend on how the probe is split. Squared gradient
  units: large when single examples' gradients are large or disagree (exploding or noisy gradients);
- ``gradient_conflict_rate``: for each micro-batch ``B_i`` and measured seed ``k``, take the first-order change of
  each example's loss that a gradient step of the host alone would make, ``a_j = -<grad_host l_j, g_i>``, and that a
  gradient step of seed ``k`` alone would make, ``b_j = -<grad_k l_j, g_{k,i}>`` (``g_{k,i}``: the gradient of
  ``B_i``'s mean loss with respect to the seed's parameters), for ``j`` in ``B_i``. The pair conflicts when
  ``<a, b> < 0``: the examples whose loss one step lowers are the ones the other raises, more than the two lower
  losses together. The rate is the fraction of conflicting pairs; pairs where either step changes nothing (a zero
  gradient: a seed at alpha 0, say) are not counted, and the rate is absent when no pair is. Each step is each
  side's gradient direction on the same micro-batch; its length does not matter (only the sign of ``<a, b>`` does).

Everything runs in eval mode (no batch-norm statistics move, no dropout draws from the training RNG) and through
``torch.autograd.grad``, so nothing of the training is touched: not the weights, not ``.grad``, not the RNG. Cost:
one forward and backward per micro-batch (the probe batch once); with a measured seed, per micro-batch one more
backward that keeps its graph and one second-order backward per side (host, each seed), which give every example's
``<grad l_j, step>`` at once (the gradient of ``sum_j u_j l_j`` is linear in ``u``). Where a second derivative is not
available (an operation without one) or the outputs are not one tensor, one forward and backward per example
instead, computing the same numbers. Not in the run's counted FLOPs, like the gates' probe passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.flops import evaluation_mode
from esper_core.leyline import SeedState, lifecycle
from esper_core.protocols import SEED_GROUP_KEY
from esper_core.tolaria.step import micro_batch_sizes

__all__ = ["GradientMeasurement", "ewma", "measure_gradients", "split_parameters"]

LossFn = Callable[[Any, Any], torch.Tensor]
#: Weight of the newest gradient norm in ``gradient_norm_ewma`` (as for ``loss_ewma``).
EWMA_WEIGHT = 0.3
#: Seeds whose steps are compared with the host's: their output is in the model's value, and they train.
CONFLICT_STAGES = frozenset({lifecycle.BLENDING, lifecycle.SHADOWING, lifecycle.PROBATIONARY})


@attrs.frozen
class GradientMeasurement:
    """One decision point's measurements (see the module's notes); ``None`` fields were not measurable."""

    #: ``||g||``; None when a gradient was not finite.
    norm: float | None
    #: The per-example gradient variance; None when a gradient was not finite.
    variance: float | None
    micro_batches: int
    #: Micro-batch x seed pairs compared, and how many conflicted.
    pairs: int = 0
    conflicts: int = 0

    @property
    def conflict_rate(self) -> float | None:
        return self.conflicts / self.pairs if self.pairs else None


def ewma(previous: float | None, value: float) -> float:
    """The moving average after ``value`` (the first value starts it)."""
    return value if previous is None else EWMA_WEIGHT * value + (1.0 - EWMA_WEIGHT) * previous


def split_parameters(
    optimizer: torch.optim.Optimizer, seeds: Iterable[SeedState]
) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """The host's parameters (groups without a slot, and fossilized seeds' groups) and, per slot, those of the seeds
    whose steps are compared with the host's (:data:`CONFLICT_STAGES`, not paused). Parameters that do not require
    a gradient (a paused seed's) are left out."""
    stages = {seed.slot_id: seed for seed in seeds}
    host: list[nn.Parameter] = []
    measured: dict[str, list[nn.Parameter]] = {}
    for group in optimizer.param_groups:
        trainable = [p for p in group["params"] if p.requires_grad]
        slot = group.get(SEED_GROUP_KEY)
        state = stages.get(slot) if slot is not None else None
        if slot is None or (state is not None and state.stage == lifecycle.FOSSILIZED):
            host.extend(trainable)
        elif state is not None and state.stage in CONFLICT_STAGES and not state.paused and trainable:
            measured[slot] = trainable
    return host, measured


def _gradients(loss: torch.Tensor, parameters: Sequence[nn.Parameter], *, keep: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(parameters), allow_unused=True, retain_graph=keep)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(parameters, grads, strict=True)]


def _dot(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> torch.Tensor:
    """``<left, right>`` over every tensor of the two lists, in float64, on the device (no host synchronisation)."""
    terms = [(a.double() * b.double()).sum() for a, b in zip(left, right, strict=True)]
    return torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64)


def measure_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    host: Sequence[nn.Parameter],
    seeds: Mapping[str, Sequence[nn.Parameter]],
    micro_batches: int,
) -> GradientMeasurement | None:
    """The measurements on the probe batch ``inputs``/``targets`` (see the module's notes); ``None`` when there is
    nothing to measure (no host parameter, fewer than two micro-batches)."""
    sizes = micro_batch_sizes(int(inputs.shape[0]), micro_batches)
    if not host or len(sizes) < 2:
        return None
    seed_lists = [list(parameters) for parameters in seeds.values() if parameters]
    everything = [*host, *(p for parameters in seed_lists for p in parameters)]
    mean: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []  # West's weighted update: m_i <g_i - mean_before, g_i - mean_after>
    weight = 0
    finite: list[torch.Tensor] = []
    pairs = conflicts = 0
    start = 0
    with evaluation_mode(model):
        for size in sizes:
            batch_inputs, batch_targets = inputs[start : start + size], targets[start : start + size]
            start += size
            outputs = model(batch_inputs)
            grads = _gradients(loss_fn(outputs, batch_targets), everything, keep=bool(seed_lists))
            host_grads = grads[: len(host)]
            finite.append(torch.stack([g.isfinite().all() for g in host_grads]).all())
            weight += size
            if not mean:
                mean = [g.clone() for g in host_grads]
            else:
                before = [g - m for g, m in zip(host_grads, mean, strict=True)]
                for m, delta in zip(mean, before, strict=True):
                    m.add_(delta, alpha=size / weight)
                squares.append(size * _dot(before, [g - m for g, m in zip(host_grads, mean, strict=True)]))
            position = len(host)
            seed_grads = []
            for parameters in seed_lists:
                seed_grads.append(grads[position : position + len(parameters)])
                position += len(parameters)
            found = _conflicts(model, outputs, batch_inputs, batch_targets, loss_fn, host, host_grads, seed_lists,
                               seed_grads)  # fmt: skip
            pairs += found[0]
            conflicts += found[1]
    if not bool(torch.stack(finite).all()):
        return GradientMeasurement(None, None, len(sizes), pairs, conflicts)
    norm = float(_dot(mean, mean).sqrt().item())
    variance = float(torch.stack(squares).sum().item()) / (len(sizes) - 1)
    return GradientMeasurement(norm, max(variance, 0.0), len(sizes), pairs, conflicts)


def _conflicts(
    model: nn.Module,
    outputs: Any,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    host: Sequence[nn.Parameter],
    host_step: Sequence[torch.Tensor],
    seeds: Sequence[Sequence[nn.Parameter]],
    seed_steps: Sequence[Sequence[torch.Tensor]],
) -> tuple[int, int]:
    """(pairs, conflicting pairs) of one micro-batch: each example's first-order loss change under the host's step
    and under each seed's, compared (see the module's notes)."""
    moving = [k for k, step in enumerate(seed_steps) if float(_dot(step, step).item()) > 0.0]
    if not moving or float(_dot(host_step, host_step).item()) == 0.0:
        return 0, 0
    groups = [list(host), *(list(seeds[k]) for k in moving)]
    steps = [list(host_step), *(list(seed_steps[k]) for k in moving)]
    changes = _directional(outputs, targets, loss_fn, groups, steps)
    if changes is None:
        changes = _directional_one_by_one(model, inputs, targets, loss_fn, groups, steps)
    a = changes[0]
    pairs = conflicts = 0
    for b in changes[1:]:
        if not (bool(a.any()) and bool(b.any())):
            continue
        pairs += 1
        conflicts += int(bool((a * b).sum() < 0))
    return pairs, conflicts


def _directional(
    outputs: Any,
    targets: torch.Tensor,
    loss_fn: LossFn,
    groups: Sequence[Sequence[nn.Parameter]],
    steps: Sequence[Sequence[torch.Tensor]],
) -> list[torch.Tensor] | None:
    """For each group, every example's first-order loss change under a step of minus ``steps``: ``-<grad l_j, s>``,
    all examples at once (the gradient of ``sum_j u_j l_j`` is linear in ``u``; differentiating its inner product
    with the step with respect to ``u`` gives every ``<grad l_j, s>``). ``None`` when the outputs are not one tensor
    or an operation has no second derivative (the caller then goes one example at a time)."""
    if not isinstance(outputs, torch.Tensor):
        return None
    count = int(outputs.shape[0])
    try:
        losses = torch.stack([loss_fn(outputs[j : j + 1], targets[j : j + 1]) for j in range(count)])
        weights = torch.ones(count, dtype=losses.dtype, device=losses.device, requires_grad=True)
        flat = [p for group in groups for p in group]
        grads = torch.autograd.grad((weights * losses).sum(), flat, create_graph=True, allow_unused=True)
        changes = []
        position = 0
        for group, step in zip(groups, steps, strict=True):
            found = grads[position : position + len(group)]
            position += len(group)
            inner = sum(((g * s).sum() for g, s in zip(found, step, strict=True) if g is not None), torch.zeros(()))
            if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
                changes.append(torch.zeros(count, dtype=torch.float64, device=losses.device))
                continue
            (per_example,) = torch.autograd.grad(inner, [weights], retain_graph=True)
            changes.append(-per_example.detach().double())
        return changes
    except RuntimeError:
        return None


def _directional_one_by_one(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    groups: Sequence[Sequence[nn.Parameter]],
    steps: Sequence[Sequence[torch.Tensor]],
) -> list[torch.Tensor]:
    """What :func:`_directional` computes, one example's forward and backward at a time."""
    flat = [p for group in groups for p in group]
    columns: list[list[torch.Tensor]] = [[] for _ in groups]
    for j in range(int(inputs.shape[0])):
        grads = _gradients(loss_fn(model(inputs[j : j + 1]), targets[j : j + 1]), flat)
        position = 0
        for column, group, step in zip(columns, groups, steps, strict=True):
            column.append(-_dot(grads[position : position + len(group)], step))
            position += len(group)
    return [torch.stack(column) for column in columns]
