"""How the crucible measures, and the thresholds that turn its measurements into hazards.

Every threshold is a ratio or a number measured on data of a fixed, documented scale (unit-variance random inputs and
targets, mean-reduced losses), so a verdict depends on the blueprint and not on the machine: the one timing verdict
("slow") compares the blueprint with a plain layer timed in the same loop, iteration by iteration, so a busy machine
slows both alike. The defaults were set from Karn's ordinary blueprints, measured at the standard slots and at
slots from 2 to 2048 features wide (the worst value seen is given with each threshold): each threshold sits at
least twice, mostly ten times or more, beyond the worst ordinary blueprint, and as far short of what the stressors
measure.
"""

from __future__ import annotations

from typing import Any

import attrs

from esper_core.config.validators import at_least, fraction, not_negative, positive


def _threads(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not value >= 1:
        raise ValueError(f"{attribute.name} must be at least 1 (or unset), got {value}")


def _scales(value: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(scale) for scale in value)


@attrs.frozen(kw_only=True)
class CrucibleOptions:
    """Repetition counts, budgets and hazard thresholds of one crucible run."""

    # -- how much to run ---------------------------------------------------------------------------------------------
    #: Seeds the random inputs, targets and the forked global generator, so two runs measure the same numbers
    #: (timings aside). The module itself is built with the seed Tezzeret derives from its artifact key, exactly
    #: the weights a germinated seed gets.
    seed: int = 0
    #: Samples per batch in every probe.
    batch: int = attrs.field(default=8, validator=at_least(1))
    #: Untimed forward+backward passes before timing (allocator and dispatcher warm-up).
    warmup: int = attrs.field(default=2, validator=at_least(0))
    #: Timed forward+backward passes (each interleaved with one of the reference layer).
    repeats: int = attrs.field(default=10, validator=at_least(1))
    #: The timing loop stops early once the blueprint's timed passes have taken this long (at least one is always
    #: timed), so that a pathologically slow forward is measured in a fraction of a second, not ``repeats`` times.
    latency_budget_s: float = attrs.field(default=0.5, validator=positive)
    #: The whole crucible's budget: a probe whose cost, estimated from the measured pass time, would overrun it is
    #: skipped and listed in the result's ``skipped`` (Karn's ordinary blueprints at the standard slots take 10 to
    #: 200 ms in all on a small CPU).
    time_budget_s: float = attrs.field(default=2.0, validator=positive)
    #: Intra-op threads while measuring (restored afterwards); ``None`` leaves the process's setting. One thread is
    #: fastest for modules this small and keeps a busy neighbouring core from slowing tiny kernels erratically.
    threads: int | None = attrs.field(default=1, validator=_threads)
    #: The gradient-health probe's SGD step, as a fraction of the parameters' initial norm (the gradient is clipped
    #: to that length: a high learning rate whose verdict does not hinge on how stiff a legitimate layer is).
    stress_step: float = attrs.field(default=0.05, validator=positive)
    #: SGD steps in the gradient-health probe.
    stress_steps: int = attrs.field(default=5, validator=at_least(1))
    #: Gradient-descent steps of the learning probe (each with a backtracking line search).
    learn_steps: int = attrs.field(default=10, validator=at_least(1))
    #: The learning probe's first step, as a fraction of the parameters' initial norm (the line search adapts it).
    learn_step: float = attrs.field(default=0.1, validator=positive)
    #: Times a step may be quartered before the learning probe gives up on finding a lower loss.
    learn_backtracks: int = attrs.field(default=8, validator=at_least(0))
    #: Magnitudes of the finite extreme inputs (unit-variance noise times each scale).
    extreme_scales: tuple[float, ...] = attrs.field(default=(1e4, 1e8), converter=_scales)

    # -- hazard thresholds -------------------------------------------------------------------------------------------
    #: ``exploding_gradients`` when the largest parameter or input gradient norm seen in the gradient-health probe
    #: exceeds this (unit-scale data, mean-reduced loss; ordinary: at most 21; BP043 at its default: inf at the first
    #: step, at 10^5: 5e3 to 7e4 by slot; a SAFE-labelled stack of three linear layers scaled 30x: 3e8).
    max_gradient_norm: float = attrs.field(default=1e3, validator=positive)
    #: ... or when the gradient norm grows by more than this factor over the probe's steps (ordinary: at most 46).
    max_gradient_growth: float = attrs.field(default=1e4, validator=positive)
    #: ... or when the loss grows by more than this factor (divergence; ordinary: at most 3.4).
    max_loss_growth: float = attrs.field(default=1e3, validator=positive)
    #: ``slow`` (HIGH) when a forward+backward pass takes more than this many times a plain pointwise layer's at
    #: the slot, beyond what its counted FLOPs explain (ordinary: at most 7; BP046, 100 ms a forward: 500 to 1000).
    slow_ratio: float = attrs.field(default=20.0, validator=positive)
    #: ``slow`` is CRITICAL (quarantine) beyond this many times.
    critical_slow_ratio: float = attrs.field(default=100.0, validator=positive)
    #: ``nonzero_start`` when a residual seed's initial output RMS exceeds this fraction of the input's (Tezzeret's
    #: and the conformance suite's limit); a width seed's must be exactly zero.
    max_initial_output_ratio: float = attrs.field(default=1e-3, validator=not_negative)
    #: ``does_not_learn`` when the learning probe's final loss is more than this fraction of its initial loss
    #: (ordinary: at most 0.33; a seed no gradient reaches: 1).
    max_learn_loss_ratio: float = attrs.field(default=0.9, validator=fraction)
    #: ``parameter_estimate_wrong`` when the catalog's estimate differs from the built module's trainable parameter
    #: count by more than this fraction of it (the protocol promises an exact count: 0).
    parameter_tolerance: float = attrs.field(default=0.0, validator=not_negative)
    #: The resource profile is MEMORY_HEAVY when the training step's memory exceeds this many times a plain layer's
    #: (the most among Karn's at the standard slots: 17, BP054's expanded activations).
    memory_heavy_ratio: float = attrs.field(default=32.0, validator=positive)
    #: ... GPU (dense compute that wants an accelerator) when its counted FLOPs exceed this many times a plain layer's.
    compute_heavy_ratio: float = attrs.field(default=16.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if not self.critical_slow_ratio >= self.slow_ratio:
            raise ValueError(
                f"critical_slow_ratio ({self.critical_slow_ratio}) must be at least slow_ratio ({self.slow_ratio})"
            )
        if not self.extreme_scales or not all(scale > 0 for scale in self.extreme_scales):
            raise ValueError(f"extreme_scales must be positive numbers, got {self.extreme_scales}")
