"""Validation with every seed's counterfactual contribution, fused into the validation pass itself.

A seed's contribution is the validation loss with its alpha forced to 0 minus the loss with its alpha forced to 1
(positive: the seed helps, or would help at full strength while still TRAINING or BLENDING). Measuring it naively
costs two extra validation passes per seed. Here the validation pass Tolaria runs anyway computes them all:

- Variant 0 is the model as it is (the validation metrics). For each measured seed there is an *off* variant and,
  unless it is already at full strength, an *on* variant: V = 1 + up to 2k variants for k seeds.
- The host runs once, un-replicated, up to the first slot with a measured seed. That slot replicates its activation
  V times along the batch dimension; every measured slot then applies a per-sample alpha (variant ``v``'s alpha
  for chunk ``v``). The output splits into V chunks, each scored against the same targets.

The same per-batch losses give each contribution its standard error: the off and on variants score the same
samples, so the spread of their per-batch differences says how much of a small contribution is noise.

So the data is loaded once, the host prefix runs once, and only the layers after the first measured slot run V
times, in one batched forward (better use of the hardware than V small ones). Losses and counts accumulate on the
device; the only host sync is at the end. A host whose forward is not batch-size agnostic (it hard-codes the
batch size after a slot) is detected on the first batch and measured with one forward per variant instead.

The pass's compute is counted, not timed (:mod:`esper_core.flops`): the FLOPs per sample of the pass and of a
plain validation forward (variant 0 alone), counted on the first batch of a configuration of seeds and kept in
the caller's cache, times the samples. The counterfactual measurement's cost is the difference. Nothing is
counted per batch; a configuration seen before costs nothing to count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.flops import count_flops, evaluation_mode, flop_counter
from esper_core.leyline import lifecycle
from esper_core.protocols import EvaluationShard
from esper_kasmina.slot import Measurement, SeedSlot

LossFn = Callable[[Any, Any], torch.Tensor]
CorrectFn = Callable[[Any, Any], torch.Tensor]


@attrs.frozen
class SeedMeasurement:
    slot_id: str
    loss_off: float
    loss_on: float
    accuracy_off: float
    accuracy_on: float
    #: Standard error of the contribution (per-batch paired differences); None with fewer than two batches.
    contribution_stderr: float | None = None

    @property
    def contribution(self) -> float:
        return self.loss_off - self.loss_on

    @property
    def contribution_accuracy(self) -> float:
        return self.accuracy_on - self.accuracy_off


@attrs.frozen
class Evaluation:
    loss: float
    accuracy: float
    samples: int
    seeds: dict[str, SeedMeasurement]
    variants: int
    fused: bool
    seconds: float
    #: Counted FLOPs of the whole pass (validation and counterfactual variants).
    flops: int = 0
    #: Counted FLOPs a plain validation pass (the model as it is, no counterfactual variants) costs.
    validation_flops: int = 0
    #: Samples the counterfactual variants scored (all of them unless ``max_measurement_passes`` thinned them out;
    #: 0 without a measured seed).
    measured_samples: int = 0

    @property
    def measurement_flops(self) -> int:
        """What the counterfactual measurements added to the validation pass, in counted FLOPs."""
        return self.flops - self.validation_flops


#: Per configuration of seeds (see :func:`configuration`) and input shape: the counted FLOPs per sample of a fused
#: evaluation pass and of a plain validation forward. Kept by the caller across evaluations.
FlopsCache = dict[tuple[Any, ...], tuple[float, float]]


def configuration(slots: Sequence[SeedSlot]) -> tuple[Any, ...]:
    """What the cost of a forward depends on: every slot's stage, its seed (blueprint and parameters) and hook."""
    return tuple(
        (
            slot.slot_id,
            slot.stage,
            slot.record.seed_id,
            slot.record.blueprint_id,
            tuple(sorted(slot.record.parameters.items())),
            slot.hooked,
        )
        for slot in slots
    )


def _as_is_alpha(slot: SeedSlot) -> float:
    if slot.stage == lifecycle.TRAINING:
        return 0.0  # the straight-through path leaves the host's output unchanged in value
    return slot.alpha()


def _forward(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _batch_size(inputs: Any) -> int:
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return int(first.shape[0])


def _trailing_shape(inputs: Any) -> tuple[Any, ...]:
    """The inputs' shapes without the batch dimension (what a per-sample cost depends on)."""
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(tuple(item.shape[1:]) if isinstance(item, torch.Tensor) else None for item in items)


def evaluate(
    model: nn.Module,
    slots: Sequence[SeedSlot],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: LossFn,
    correct_fn: CorrectFn,
    flops_cache: FlopsCache | None = None,
    max_measurement_passes: float = 0.0,
    shard: EvaluationShard | None = None,
) -> Evaluation:
    """Validation metrics of ``model`` over ``batches`` and every measured seed's off/on metrics, with the pass's
    counted FLOPs (counted on the first batch unless ``flops_cache`` knows this configuration already).

    ``max_measurement_passes`` (0: no limit) caps what the counterfactual variants add, in plain validation passes
    of counted FLOPs: when they would add more, they run on every k-th batch only (the first included), the
    smallest k that keeps them within the cap on average (a few percent over it when the batch count is not a
    multiple of k), while the validation metrics still use every batch. A seed's off and on variants always score
    the same batches, so its contribution stays an unbiased paired estimate; its standard error, from fewer
    batches, says how much noisier it became; their levels are shifted to the whole set's (see below).

    ``shard`` (a data-parallel run): this process runs only the batches whose number modulo ``shard.world`` is
    ``shard.rank``; every process's per-batch results are gathered and put back in the batches' order before
    anything is summed, so every process returns the same evaluation, the one a single process computes over every
    batch.
    """
    start = time.perf_counter()
    cache: FlopsCache = {} if flops_cache is None else flops_cache
    measured = [slot for slot in slots if slot.stage in lifecycle.MEASURED and slot.hooked]
    as_is = {slot.slot_id: _as_is_alpha(slot) for slot in measured}
    variants: list[dict[str, float]] = [as_is]
    index: dict[str, tuple[int, int]] = {}
    for slot in measured:
        positions = []
        for forced in (0.0, 1.0):
            if as_is[slot.slot_id] == forced:
                positions.append(0)
            else:
                positions.append(len(variants))
                variants.append({**as_is, slot.slot_id: forced})
        index[slot.slot_id] = (positions[0], positions[1])
    count = len(variants)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    alphas = {
        slot.slot_id: torch.tensor([variant[slot.slot_id] for variant in variants], device=device) for slot in measured
    }
    # Per batch, each variant's mean loss (one small tensor, no sync), and the right answers per variant: over the
    # batches where the variants ran, and (variant 0, the model as it is) over every batch.
    batch_losses: list[torch.Tensor] = []
    plain_losses: list[torch.Tensor] = []
    correct = torch.zeros(count, dtype=torch.float64, device=device)
    plain_correct = torch.zeros((), dtype=torch.float64, device=device)
    sizes: list[int] = []
    measured_sizes: list[int] = []
    fused = True
    per_sample: tuple[float, float] | None = None  # FLOPs per sample: the pass, a plain validation forward
    stride = 1  # the variants run on every stride-th batch
    first = True
    #: Sharded: per batch run here, (number, size, plain loss, plain correct, variant losses, variant corrects).
    shares: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    with evaluation_mode(model), torch.no_grad():
        for number, (inputs, targets) in enumerate(batches):
            if shard is not None and number % shard.world != shard.rank:
                continue
            batch = _batch_size(inputs)
            sizes.append(batch)
            key: tuple[Any, ...] = ()
            if per_sample is None:
                key = (configuration(slots), count, _trailing_shape(inputs))
                per_sample = cache.get(key)
            counting = per_sample is None  # the first batch of a configuration not seen before
            outputs: list[Any] | None = None
            if count == 1 or number % stride:
                outputs, counted = _counted(counting, _forwards, model, inputs)
                plain = counted
            elif fused:
                outputs, counted, prefix = _counted_fused(counting, model, measured, inputs, batch, count, alphas)
                # The prefix ran once, everything after it once per variant, variant 0 being the plain forward.
                plain = prefix + (counted - prefix) // count
                fused = outputs is not None
            if outputs is None:  # not fused: one whole forward per variant
                outputs, counted = _counted(counting, _variant_forwards, model, measured, inputs, count, alphas)
                plain = counted // count
            if counting:
                per_sample = (counted / batch, plain / batch)
                cache[key] = per_sample
            if first and count > 1 and max_measurement_passes > 0 and per_sample is not None:
                stride = _stride(per_sample, max_measurement_passes)
                if number % stride and len(outputs) == count:
                    # A rank's first batch of a sharded pass, run with the variants to count them, that is not one
                    # of every k-th: scored as a plain forward, as one process scores it.
                    outputs = _forwards(model, inputs)
            first = False
            losses = torch.stack([loss_fn(output, targets).double() for output in outputs])
            plain_losses.append(losses[0])
            batch_correct = correct_fn(outputs[0], targets).double()
            plain_correct += batch_correct
            variant_correct: torch.Tensor | None = None
            if len(outputs) == count:
                batch_losses.append(losses)
                measured_sizes.append(batch)
                variant_correct = torch.stack([correct_fn(output, targets).double() for output in outputs])
                correct += variant_correct
            if shard is not None:
                shares.append(
                    (number, batch, losses[0], batch_correct, losses if variant_correct is not None else None,
                     variant_correct)
                )  # fmt: skip
    if shard is not None:
        gathered = _gathered(shard, shares, per_sample, fused, device)
        sizes, plain_losses, plain_correct, batch_losses, measured_sizes, correct, per_sample, fused = gathered
        correct = correct if batch_losses else torch.zeros(count, dtype=torch.float64, device=device)
    if not sizes:
        raise ValueError("evaluation needs at least one batch")
    samples, measured_samples = sum(sizes), sum(measured_sizes)
    weights = torch.tensor(sizes, dtype=torch.float64, device=device)
    loss = float((torch.stack(plain_losses) * weights).sum() / samples)
    accuracy = float(plain_correct / samples)
    seeds: dict[str, SeedMeasurement] = {}
    if index:
        per_batch = torch.stack(batch_losses)  # (measured batches, variants)
        measured_weights = torch.tensor(measured_sizes, dtype=torch.float64, device=device)
        subset_loss = (per_batch * measured_weights[:, None]).sum(dim=0) / measured_samples
        subset_rates = correct / measured_samples
        # On a subset of the batches, each variant's level is shifted by how that subset differs from the whole
        # set (the model as it is, variant 0, ran on both): a seed's off/on levels stay comparable with the plain
        # validation loss and with their own earlier, unthinned values (G2 compares them); differences are unchanged.
        mean_loss: list[float] = (subset_loss + (loss - float(subset_loss[0]))).tolist()
        rates: list[float] = (subset_rates + (accuracy - float(subset_rates[0]))).tolist()
        for slot_id, (off, on) in index.items():
            stderr = _stderr(per_batch[:, off] - per_batch[:, on])
            seeds[slot_id] = SeedMeasurement(slot_id, mean_loss[off], mean_loss[on], rates[off], rates[on], stderr)
    pass_flops = validation_flops = 0
    if per_sample is not None:
        pass_flops = round(per_sample[0] * measured_samples + per_sample[1] * (samples - measured_samples))
        validation_flops = round(per_sample[1] * samples)
    return Evaluation(
        loss=loss,
        accuracy=accuracy,
        samples=samples,
        seeds=seeds,
        variants=count,
        fused=fused or count == 1,
        seconds=time.perf_counter() - start,
        flops=pass_flops,
        validation_flops=validation_flops,
        measured_samples=measured_samples if index else 0,
    )


def _gathered(
    shard: EvaluationShard,
    shares: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    per_sample: tuple[float, float] | None,
    fused: bool,
    device: torch.device,
) -> tuple[
    list[int], list[torch.Tensor], torch.Tensor, list[torch.Tensor], list[int], torch.Tensor,
    tuple[float, float] | None, bool,
]:  # fmt: skip
    """Every process's per-batch results, in the batches' order (one host synchronisation and one collective):
    the batch sizes, plain losses and correct count, the measured batches' variant losses and sizes, the variants'
    correct counts, the FLOPs per sample and whether the pass stayed fused."""
    local = [
        (number, size, float(loss), float(right), None if losses is None else losses.tolist(),
         None if rights is None else rights.tolist())
        for number, size, loss, right, losses, rights in shares
    ]  # fmt: skip
    everyone = shard.gather((local, per_sample, fused), "the sharded validation pass")
    merged = sorted((item for part, _, _ in everyone for item in part), key=lambda item: item[0])
    found = next((cost for _, cost, _ in everyone if cost is not None), None)

    def tensor(value: Any) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=device)

    measured = [item for item in merged if item[4] is not None]
    rights = [tensor(item[5]) for item in measured]
    return (
        [item[1] for item in merged],
        [tensor(item[2]) for item in merged],
        tensor(sum(item[3] for item in merged)),
        [tensor(item[4]) for item in measured],
        [item[1] for item in measured],
        torch.stack(rights).sum(dim=0) if rights else tensor(0.0),
        found,
        all(flag for _, _, flag in everyone),
    )


def _stride(per_sample: tuple[float, float], cap: float) -> int:
    """The smallest k such that running the variants on every k-th batch adds at most ``cap`` plain passes."""
    pass_flops, plain_flops = per_sample
    if plain_flops <= 0:
        return 1
    extra = (pass_flops - plain_flops) / plain_flops
    return max(1, math.ceil(extra / cap - 1e-9))


def _counted(counting: bool, function: Callable[..., list[Any]], *args: Any) -> tuple[list[Any], int]:
    """``function(*args)``, with the FLOPs it ran when ``counting`` (else 0)."""
    if not counting:
        return function(*args), 0
    outputs, counted = count_flops(lambda: function(*args))
    return outputs, counted


def _forwards(model: nn.Module, inputs: Any) -> list[Any]:
    """The plain forward, as the one output of the one variant."""
    return [_forward(model, inputs)]


def _counted_fused(
    counting: bool,
    model: nn.Module,
    measured: Sequence[SeedSlot],
    inputs: Any,
    batch: int,
    count: int,
    alphas: dict[str, torch.Tensor],
) -> tuple[list[Any] | None, int, int]:
    """The fused forward, with (when ``counting``) its FLOPs and those of the prefix: the layers up to the expansion
    slot's module, which run once (read as the counter stands when that module returns, before its slot
    replicates the batch)."""
    if not counting:
        return _fused_forward(model, measured, inputs, batch, count, alphas), 0, 0
    target = measured[0]._target
    assert target is not None
    prefix: list[int] = []
    with flop_counter() as counter:
        handle = target.register_forward_hook(
            lambda _m, _i, _o: prefix.append(int(counter.get_total_flops())), prepend=True
        )
        try:
            outputs = _fused_forward(model, measured, inputs, batch, count, alphas)
        finally:
            handle.remove()
    return outputs, int(counter.get_total_flops()), prefix[0] if prefix else 0


def _stderr(differences: torch.Tensor) -> float | None:
    """Standard error of the mean of per-batch differences (batches of near-equal size, the last one aside)."""
    if differences.numel() < 2:
        return None
    return float(differences.std() / differences.numel() ** 0.5)


def _set_measurement(slots: Sequence[SeedSlot], measurement: Measurement | None) -> None:
    for slot in slots:
        slot.measurement = measurement


def _fused_forward(
    model: nn.Module,
    measured: Sequence[SeedSlot],
    inputs: Any,
    batch: int,
    count: int,
    alphas: dict[str, torch.Tensor],
) -> list[Any] | None:
    measurement = Measurement(variants=count, expansion_slot=measured[0].slot_id, alphas=alphas)
    _set_measurement(measured, measurement)
    try:
        output = _forward(model, inputs)
    except RuntimeError:
        return None  # e.g. a view with a hard-coded batch size; measured one variant at a time instead
    finally:
        _set_measurement(measured, None)
    if not isinstance(output, torch.Tensor) or output.shape[0] != batch * count:
        return None
    return list(torch.split(output, batch))


def _variant_forwards(
    model: nn.Module, measured: Sequence[SeedSlot], inputs: Any, count: int, alphas: dict[str, torch.Tensor]
) -> list[Any]:
    outputs = []
    for variant in range(count):
        single = {slot_id: values[variant : variant + 1] for slot_id, values in alphas.items()}
        _set_measurement(measured, Measurement(variants=1, expansion_slot=measured[0].slot_id, alphas=single))
        try:
            outputs.append(_forward(model, inputs))
        finally:
            _set_measurement(measured, None)
    return outputs
