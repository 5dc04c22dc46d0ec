"""The crucible's probes: each runs a blueprint's module on CPU and returns one record of :mod:`.results`.

Every probe gets what it needs explicitly (the module or a ``build`` function giving a fresh one, a seeded
generator, the slot) and keeps nothing, so :func:`esper_urza.urabrask.crucible.measure_blueprint` decides the order,
the budget and what a failure means. Probes that train (gradient health, learning) or that feed poison (extreme and
non-finite inputs) work on their own fresh builds, never on a module another probe measures.

Random data is unit-variance noise from the caller's generator, and every loss is a mean, so the numbers are on one
scale for every blueprint and slot and the thresholds of :class:`~esper_urza.urabrask.options.CrucibleOptions` mean
the same everywhere.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional

from esper_core.flops import count_training_step
from esper_core.leyline import SlotKind
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_core.stats import percentile
from esper_urza.urabrask.options import CrucibleOptions
from esper_urza.urabrask.results import (
    Cost,
    Determinism,
    GradientHealth,
    InputRobustness,
    Learning,
    ParameterCount,
    StartCheck,
    Timing,
)

Build = Callable[[], nn.Module]

#: Standard deviation given to a zero-started one-dimensional parameter (a gain, a bias) to make a module active.
ACTIVE_VECTOR_STD = 0.5


# -- helpers ----------------------------------------------------------------------------------------------------------
def run(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, insisting on a tensor (the seed contract: one activation in, one out)."""
    output = module(x)
    if not isinstance(output, Tensor):
        raise TypeError(f"the forward pass returned {type(output).__name__}, not a tensor")
    return output


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def features(kind: SlotKind.ValueType, shape: Sequence[int]) -> int:
    """C for a conv2d activation, D (the last dimension) otherwise."""
    return int(shape[0] if kind == SlotKind.SLOT_KIND_CONV2D else shape[-1])


def reference_layer(slot: SlotShape) -> nn.Module:
    """The plain layer a blueprint is compared with: a pointwise map from what the seed reads to the written slot's
    features (a 1x1 convolution on a conv2d activation, a linear map of the last dimension otherwise); for a
    residual slot C -> C or D -> D. The cheapest real layer at the slot, so that time spent doing nothing (a sleep,
    a Python loop) stands out against it, while real work is judged by its counted FLOPs (see
    :func:`esper_urza.urabrask.hazards.timing_hazards`)."""
    source = slot.input
    width_in, width_out = features(source.kind, source.shape), features(slot.kind, slot.shape)
    if source.kind == SlotKind.SLOT_KIND_CONV2D:
        return nn.Conv2d(width_in, width_out, 1)
    return nn.Linear(width_in, width_out)


def gradient_norm(tensors: Sequence[Tensor | None]) -> float:
    """L2 norm over all the tensors, ``inf`` when any element is not finite (0 for none)."""
    present = [tensor.detach() for tensor in tensors if tensor is not None]
    if not present:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in present])))
    return norm if math.isfinite(norm) else math.inf


def finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


@contextmanager
def training(module: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """``module`` in training (or evaluation) mode for the block, its own mode restored afterwards."""
    modes = {sub: sub.training for sub in module.modules()}
    module.train(mode)
    try:
        yield module
    finally:
        for sub, was in modes.items():
            sub.train(was)


def activate(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give ``module``'s zero-started parameters random values, in place, as training will: a seed starts with a
    zero output layer (or gain), which hides what the rest of it computes, and a target of its own architecture
    needs one that does not. A tensor of two or more dimensions gets N(0, 1/fan_in), a vector or scalar
    N(0, 0.5^2). A module with no all-zero parameter (it does not start at zero that way) gets that noise added to
    every parameter instead."""
    parameters = list(module.parameters())
    zero = [p for p in parameters if p.numel() and not bool(p.detach().any())]
    with torch.no_grad():
        for parameter in zero or parameters:
            std = 1.0 / math.sqrt(max(1, parameter[0].numel())) if parameter.dim() >= 2 else ACTIVE_VECTOR_STD
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * std
            parameter.add_(noise.to(parameter.device))
    return module


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage: count it by itself
        return id(tensor), tensor.numel() * tensor.element_size()


@functools.cache
def warm_up() -> None:
    """Once per process, before any budget clock runs: the first FLOP count makes torch import its symbolic-shape
    machinery (about a second), which is torch's cost, not the first blueprint's."""
    layer = nn.Linear(1, 1)
    count_training_step(layer, torch.zeros(1, 1), trainable(layer))


# -- probes -----------------------------------------------------------------------------------------------------------
def check_start(module: nn.Module, x: Tensor, slot: SlotShape) -> StartCheck:
    """The fresh module on one batch in training mode: shape, dtype, finiteness, initial size, input untouched."""
    before = x.clone()
    with torch.no_grad(), training(module):
        output = run(module, x).detach()
    expected = (x.shape[0], *(int(size) for size in slot.shape))
    finite = torch.isfinite(output)
    total = max(1, output.numel())
    rms_in = x.pow(2).mean().sqrt().clamp_min(1e-12)
    ratio = float(output.float().pow(2).mean().sqrt() / rms_in) if output.numel() else 0.0
    return StartCheck(
        shape_ok=tuple(output.shape) == expected,
        output_shape=tuple(int(size) for size in output.shape),
        dtype_ok=output.dtype == x.dtype,
        finite=bool(finite.all()),
        non_finite_fraction=float((~finite).sum()) / total,
        initial_output_ratio=finite_or_inf(ratio),
        mutates_input=not torch.equal(x, before),
    )


def _step(module: nn.Module, x: Tensor, grad: Tensor) -> tuple[float, float]:
    """One timed forward and backward pass: (forward seconds, backward seconds)."""
    for parameter in module.parameters():
        parameter.grad = None
    start = time.perf_counter()
    output = run(module, x)
    middle = time.perf_counter()
    if output.requires_grad:
        output.backward(grad)  # type: ignore[no-untyped-call, unused-ignore]
    return middle - start, time.perf_counter() - middle


def time_steps(
    module: nn.Module, reference: nn.Module, x: Tensor, generator: torch.Generator, options: CrucibleOptions
) -> Timing:
    """Forward and backward latency of training steps, each of the blueprint's passes right after one of the
    reference layer's, so the slowdown (the median of the per-iteration ratios) is robust to load on the machine.
    Stops early once the blueprint's passes have used ``options.latency_budget_s`` (at least one is timed)."""
    with torch.no_grad():
        grad = torch.randn(run(module, x).shape, generator=generator)
        reference_grad = torch.randn(run(reference, x).shape, generator=generator)
    forwards: list[float] = []
    backwards: list[float] = []
    ratios: list[float] = []
    reference_steps: list[float] = []
    spent = 0.0
    with torch.enable_grad(), training(module), training(reference):
        for index in range(options.warmup + options.repeats):
            reference_time = sum(_step(reference, x, reference_grad))
            forward, backward = _step(module, x, grad)
            spent += forward + backward
            if index >= options.warmup:
                forwards.append(forward)
                backwards.append(backward)
                reference_steps.append(reference_time)
                ratios.append((forward + backward) / max(reference_time, 1e-9))
            if spent >= options.latency_budget_s and forwards:
                break
    for parameter in (*module.parameters(), *reference.parameters()):
        parameter.grad = None
    milliseconds = 1000.0
    return Timing(
        forward_p50_ms=statistics.median(forwards) * milliseconds,
        forward_p95_ms=percentile(forwards, 0.95) * milliseconds,
        backward_p50_ms=statistics.median(backwards) * milliseconds,
        backward_p95_ms=percentile(backwards, 0.95) * milliseconds,
        samples=len(forwards),
        reference_step_p50_ms=statistics.median(reference_steps) * milliseconds,
        slowdown=statistics.median(ratios),
    )


def step_memory(module: nn.Module, x: Tensor) -> tuple[int, int, int, int]:
    """(parameter, gradient, saved, output) bytes of one training step of ``module`` (see :class:`.Cost`)."""
    parameters = trainable(module)
    parameter_bytes = sum(p.numel() * p.element_size() for p in parameters)
    excluded = {_storage_key(p) for p in module.parameters()} | {_storage_key(x)}
    saved: dict[tuple[int, int], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            saved[key] = key[1]
        return tensor

    with torch.enable_grad(), training(module), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = run(module, x)
    output_bytes = output.numel() * output.element_size()
    return parameter_bytes, parameter_bytes, sum(saved.values()), output_bytes


def measure_cost(module: nn.Module, reference: nn.Module, x: Tensor) -> Cost:
    """Counted FLOPs of a training step (forward and the backward to the parameters, :mod:`esper_core.flops`) and
    its memory, for the blueprint and the reference layer."""
    flops = count_training_step(module, x, trainable(module))
    reference_flops = count_training_step(reference, x, trainable(reference))
    parameter_bytes, gradient_bytes, saved_bytes, output_bytes = step_memory(module, x)
    return Cost(
        forward_flops=flops.forward,
        backward_flops=flops.backward,
        flops_per_sample=flops.per_sample(),
        reference_flops_per_sample=reference_flops.per_sample(),
        parameter_bytes=parameter_bytes,
        gradient_bytes=gradient_bytes,
        saved_bytes=saved_bytes,
        output_bytes=output_bytes,
        reference_memory_bytes=sum(step_memory(reference, x)),
    )


def count_parameters(
    catalog: BlueprintCatalog, blueprint_id: str, slot: SlotShape, parameters: dict[str, float], module: nn.Module
) -> ParameterCount:
    """The module's trainable parameters against ``catalog.parameter_count`` (an estimate that raises is recorded,
    not propagated: it is a finding about the catalog)."""
    actual = sum(p.numel() for p in trainable(module))
    try:
        estimate = int(catalog.parameter_count(blueprint_id, slot, parameters))
    except Exception as error:  # noqa: BLE001 - any failure of the catalog's estimate is what is being measured
        return ParameterCount(actual=actual, estimate=None, estimate_error=f"{type(error).__name__}: {error}"[:300])
    return ParameterCount(actual=actual, estimate=estimate)


def stress_gradients(build: Build, x: Tensor, generator: torch.Generator, options: CrucibleOptions) -> GradientHealth:
    """``options.stress_steps`` steps of SGD with a high learning rate and the gradient clipped to one norm, from a
    fresh module towards unit-variance random targets; the input requires a gradient (it is the host's, once the
    seed is not isolated). Each step moves the parameters by ``options.stress_step`` times their initial norm.

    Why clipped: plain SGD at a fixed high rate diverges on any layer stiff enough (a linear head over a large
    flattened map does at lr 0.3), which says more about the rate than the blueprint. With every step of one
    length a stiff layer only oscillates, while a blueprint whose gradients grow with its weights, or that scales
    its gradients, still runs away; the raw gradient norms are recorded before clipping. Stops at the first
    non-finite loss, gradient or parameter."""
    module = build()
    parameters = trainable(module)
    with torch.no_grad(), training(module):
        target = torch.randn(run(module, x).shape, generator=generator)
    initial_norm = gradient_norm(list(parameters))
    step_size = options.stress_step * (initial_norm if 0.0 < initial_norm < math.inf else 1.0)
    inputs = x.detach().clone().requires_grad_(True)
    losses: list[float] = []
    norms: list[float] = []
    input_norms: list[float] = []
    non_finite: int | None = None
    what = ""
    with torch.enable_grad(), training(module):
        for step in range(1, options.stress_steps + 1):
            inputs.grad = None
            for parameter in parameters:
                parameter.grad = None
            loss = functional.mse_loss(run(module, inputs), target)
            if loss.requires_grad:
                loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            losses.append(finite_or_inf(float(loss.detach())))
            norms.append(gradient_norm([p.grad for p in parameters]))
            input_norms.append(gradient_norm([inputs.grad]))
            measured = {"loss": losses[-1], "gradient": norms[-1], "input gradient": input_norms[-1]}
            bad = [name for name, value in measured.items() if not math.isfinite(value)]
            if bad:
                non_finite, what = step, bad[0]
                break
            if norms[-1] > 0.0:
                with torch.no_grad():
                    scale = step_size / norms[-1]
                    for parameter in parameters:
                        if parameter.grad is not None:
                            parameter.add_(parameter.grad, alpha=-scale)
                if not all(bool(torch.isfinite(p).all()) for p in parameters):
                    non_finite, what = step, "parameters"
                    break
    return GradientHealth(
        step_size=step_size,
        steps=len(losses),
        losses=tuple(losses),
        gradient_norms=tuple(norms),
        input_gradient_norms=tuple(input_norms),
        non_finite_step=non_finite,
        non_finite_what=what,
    )


def _newly_non_finite(poisoned: Tensor, clean: Tensor) -> tuple[float, float]:
    """Shares of the first sample's and of the other samples' outputs that are non-finite in ``poisoned`` but
    finite in ``clean``."""
    new = ~torch.isfinite(poisoned) & torch.isfinite(clean)
    first = float(new[:1].float().mean()) if new[:1].numel() else 0.0
    rest = float(new[1:].float().mean()) if new[1:].numel() else 0.0
    return first, rest


def probe_inputs(build: Build, x: Tensor, generator: torch.Generator, options: CrucibleOptions) -> InputRobustness:
    """Fresh and active modules on inputs scaled by each of ``options.extreme_scales``, and the active module with
    one NaN, then one inf, in the first sample's first element (training mode, no gradients: where samples of a
    batch can meet, as in batch normalization)."""
    fresh = build()
    active = activate(build(), generator)
    extreme: list[tuple[float, bool]] = []
    with torch.no_grad(), training(fresh), training(active):
        clean = run(active, x)
        clean_finite = bool(torch.isfinite(clean).all()) and bool(torch.isfinite(run(fresh, x)).all())
        for scale in options.extreme_scales:
            scaled = x * scale
            finite = bool(torch.isfinite(run(fresh, scaled)).all()) and bool(torch.isfinite(run(active, scaled)).all())
            extreme.append((scale, finite))
        spreads: list[tuple[float, float]] = []
        for poison in (math.nan, math.inf):
            poisoned = x.clone()
            poisoned[0].view(-1)[0] = poison
            spreads.append(_newly_non_finite(run(active, poisoned), clean))
    return InputRobustness(
        clean_finite=clean_finite,
        extreme_finite=tuple(extreme),
        nan_spread=spreads[0][0],
        nan_contamination=spreads[0][1],
        inf_spread=spreads[1][0],
        inf_contamination=spreads[1][1],
    )


def _difference(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference, NaNs in the same places counting as equal (``inf`` for shapes that differ)."""
    if a.shape != b.shape:
        return math.inf
    if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
        return 0.0 if torch.equal(a, b) else math.inf
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if bool(same.all()):
        return 0.0
    return finite_or_inf(float((a - b)[~same].abs().max()))


def check_determinism(build: Build, x: Tensor) -> Determinism:
    """Two builds (the caller's ``build`` seeds each identically) compared weight by weight, and two passes of one
    in evaluation mode compared output by output."""
    first, second = build(), build()
    states = first.state_dict(), second.state_dict()
    if states[0].keys() != states[1].keys():
        build_difference = math.inf
    else:
        build_difference = max((_difference(states[0][name], states[1][name]) for name in states[0]), default=0.0)
    with torch.no_grad(), training(first, False):
        forward_difference = _difference(run(first, x), run(first, x))
    return Determinism(
        same_build=build_difference == 0.0,
        same_forward=forward_difference == 0.0,
        build_difference=build_difference,
        forward_difference=forward_difference,
    )


def learn(build: Build, x: Tensor, generator: torch.Generator, options: CrucibleOptions) -> Learning:
    """Gradient descent with a backtracking line search from a fresh module towards an active build's output on one
    fixed batch (evaluation mode, so the objective is deterministic): ``options.learn_steps`` steps along the
    normalized negative gradient, the first of ``options.learn_step`` times the parameters' initial norm, each
    quartered up to ``options.learn_backtracks`` times until the loss falls and doubled after a step that needed no
    backtracking. Stops when no step lowers the loss.

    Why not a fixed-rate optimizer: whether a given rate overshoots depends on the layers' widths (Adam at 0.01
    overshoots on a 2048-wide hidden layer), not on whether the seed can learn; a line search asks only whether
    gradient descent from the zero start finds a way down, and how far it gets."""
    student = build()
    teacher = activate(build(), generator)
    with torch.no_grad(), training(teacher, False):
        target = run(teacher, x)
    parameters = trainable(student)

    def loss_now() -> float:
        with torch.no_grad():
            return finite_or_inf(float(functional.mse_loss(run(student, x), target)))

    steps = 0
    with training(student, False):
        initial = current = loss_now()
        initial_norm = gradient_norm(list(parameters))
        size = options.learn_step * (initial_norm if 0.0 < initial_norm < math.inf else 1.0)
        for _ in range(options.learn_steps if parameters else 0):
            with torch.enable_grad():
                loss = functional.mse_loss(run(student, x), target)
                if not loss.requires_grad:
                    break
                grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            norm = gradient_norm(list(grads))
            if not 0.0 < norm < math.inf:
                break
            origin = [p.detach().clone() for p in parameters]
            trial, accepted = size, None
            for attempt in range(options.learn_backtracks + 1):
                with torch.no_grad():
                    for parameter, start, grad in zip(parameters, origin, grads, strict=True):
                        parameter.copy_(start if grad is None else start - (trial / norm) * grad)
                candidate = loss_now()
                if candidate < current:
                    accepted = attempt
                    break
                trial /= 4.0
            if accepted is None:
                with torch.no_grad():
                    for parameter, start in zip(parameters, origin, strict=True):
                        parameter.copy_(start)
                break
            current, steps = candidate, steps + 1
            size = trial * 2.0 if accepted == 0 else trial
    return Learning(steps=steps, initial_loss=initial, final_loss=current)
