"""From measurements to hazard classes, a risk score, a hazard band, a handling class and a resource profile.

Each hazard class is one rule over one probe's record with one threshold of
:class:`~esper_urza.urabrask.options.CrucibleOptions`, and carries its band (a Leyline ``HazardBand``):

============================ ======== ==================================================================================
hazard                       band     measured
============================ ======== ==================================================================================
``build_failed``             CRITICAL the catalog's ``build`` raised
``raises``                   CRITICAL a forward or backward pass raised (the probe is named)
``wrong_shape``              CRITICAL output shape or dtype is not what the slot writes
``non_finite_output``        CRITICAL non-finite outputs on ordinary random input (fresh or active module)
``mutates_input``            CRITICAL the forward pass changed the host's activation in place
``exploding_gradients``      CRITICAL under SGD steps of ``stress_step`` of the weights' norm: a non-finite gradient,
                                      parameter or (after the first step) loss, a gradient norm above
                                      ``max_gradient_norm``, gradient growth above ``max_gradient_growth`` or loss
                                      growth above ``max_loss_growth``
``slow``                     HIGH /   forward+backward slowdown against a plain layer at the slot beyond what its
                             CRITICAL counted FLOPs explain, above ``slow_ratio`` (CRITICAL: ``critical_slow_ratio``)
``nondeterministic``         HIGH     two evaluation passes on one input, or two builds' weights (one seed), differ
``does_not_learn``           HIGH     the learning probe's loss ratio is above ``max_learn_loss_ratio`` (or not finite)
``nonzero_start``            HIGH     initial output above ``max_initial_output_ratio`` of the input (a width seed: any)
``nan_propagation``          HIGH     one non-finite input element made other samples' outputs non-finite
``extreme_input_overflow``   MEDIUM   non-finite outputs for finite inputs of an extreme scale
``parameter_estimate_wrong`` MEDIUM   the catalog's parameter estimate is off by more than ``parameter_tolerance``
``incomplete``               MEDIUM   probes skipped for the time budget (a sheet cannot vouch for what it did not run)
============================ ======== ==================================================================================

Risk score: ``1 - prod(1 - s)`` over every hazard's severity (CRITICAL 0.9, HIGH 0.6, MEDIUM 0.3, LOW 0.1) and
over small *margins* (at most 0.1 each) for measurements still inside their thresholds: how far the slowdown, the
gradient norm and the memory have come towards their limits on a log scale, and the learning ratio linearly. So one
critical hazard gives at least 0.9, two high ones 0.84, and a blueprint without hazards stays below 0.35. The band
is the worse of the worst hazard's band and the score's band under the original prototype's cuts (0.85 CRITICAL,
0.60 HIGH, 0.30 MEDIUM). Handling: QUARANTINE for a CRITICAL band, RESTRICTED for HIGH, STANDARD otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from esper_core.leyline import HandlingClass, HazardBand, ResourceProfile
from esper_urza.urabrask.options import CrucibleOptions
from esper_urza.urabrask.results import (
    Cost,
    Determinism,
    GradientHealth,
    Hazard,
    InputRobustness,
    Learning,
    ParameterCount,
    StartCheck,
    Timing,
)

LOW = HazardBand.HAZARD_BAND_LOW
MEDIUM = HazardBand.HAZARD_BAND_MEDIUM
HIGH = HazardBand.HAZARD_BAND_HIGH
CRITICAL = HazardBand.HAZARD_BAND_CRITICAL

#: Each band's contribution to the risk score.
SEVERITY: dict[HazardBand.ValueType, float] = {LOW: 0.1, MEDIUM: 0.3, HIGH: 0.6, CRITICAL: 0.9}
#: The largest contribution of one measurement still inside its threshold.
MARGIN_WEIGHT = 0.1
#: Risk-score cuts of the bands (the prototype's BSDS bands): CRITICAL, HIGH, MEDIUM, else LOW.
BAND_CUTS: tuple[tuple[float, HazardBand.ValueType], ...] = ((0.85, CRITICAL), (0.60, HIGH), (0.30, MEDIUM))


def _number(value: float) -> str:
    return f"{value:.3g}"


def start_hazards(start: StartCheck, *, width: bool, options: CrucibleOptions) -> list[Hazard]:
    hazards: list[Hazard] = []
    if not (start.shape_ok and start.dtype_ok):
        hazards.append(
            Hazard(
                "wrong_shape",
                CRITICAL,
                1.0,
                0.0,
                f"output shape {list(start.output_shape)}{'' if start.dtype_ok else ' or dtype'} is not the slot's",
            )
        )
    if not start.finite:
        hazards.append(
            Hazard(
                "non_finite_output",
                CRITICAL,
                start.non_finite_fraction,
                0.0,
                f"{start.non_finite_fraction:.1%} of outputs non-finite on random input",
            )
        )
    if start.mutates_input:
        hazards.append(Hazard("mutates_input", CRITICAL, 1.0, 0.0, "the forward pass changes its input in place"))
    limit = 0.0 if width else options.max_initial_output_ratio
    if start.finite and start.initial_output_ratio > limit:
        hazards.append(
            Hazard(
                "nonzero_start",
                HIGH,
                start.initial_output_ratio,
                limit,
                f"initial output RMS {_number(start.initial_output_ratio)} of the input's (limit {_number(limit)})",
            )
        )
    return hazards


def excess_slowdown(timing: Timing, cost: Cost | None) -> float:
    """The slowdown against the plain layer that the blueprint's counted work does not explain: the time ratio
    divided by the FLOP ratio when that is above 1 (a module doing 12 times the plain layer's arithmetic may take
    12 times as long). A sleep, a Python loop or a device sync does no counted work and keeps its whole ratio.
    Without a cost measurement, the plain time ratio."""
    work = cost.flops_ratio if cost is not None else 1.0
    return timing.slowdown / max(1.0, work)


def timing_hazards(timing: Timing, cost: Cost | None, options: CrucibleOptions) -> list[Hazard]:
    excess = excess_slowdown(timing, cost)
    if excess <= options.slow_ratio:
        return []
    critical = excess > options.critical_slow_ratio
    limit = options.critical_slow_ratio if critical else options.slow_ratio
    return [
        Hazard(
            "slow",
            CRITICAL if critical else HIGH,
            excess,
            limit,
            f"step {timing.slowdown:.0f}x a plain layer's, {excess:.0f}x beyond its FLOPs (limit {limit:g}x; "
            f"p50 {timing.step_p50_ms:.3g} ms)",
        )
    ]


def gradient_hazards(gradients: GradientHealth, options: CrucibleOptions) -> list[Hazard]:
    lr = f"SGD steps of {options.stress_step:.0%} of the weights' norm"
    if gradients.non_finite_step == 1 and gradients.non_finite_what == "loss":
        return []  # the forward pass itself is not finite: ``non_finite_output``, not a gradient that exploded
    if gradients.non_finite_step is not None:
        return [
            Hazard(
                "exploding_gradients",
                CRITICAL,
                math.inf,
                options.max_gradient_norm,
                f"non-finite {gradients.non_finite_what} at step {gradients.non_finite_step} ({lr})",
            )
        ]
    checks = (
        (gradients.max_gradient_norm, options.max_gradient_norm, "gradient norm"),
        (gradients.gradient_growth, options.max_gradient_growth, "gradient norm growth"),
        (gradients.loss_growth, options.max_loss_growth, "loss growth"),
    )
    for measured, limit, what in checks:
        if measured > limit:
            detail = f"{what} {_number(measured)} in {gradients.steps} steps (limit {limit:g}; {lr})"
            return [Hazard("exploding_gradients", CRITICAL, measured, limit, detail)]
    return []


def input_hazards(inputs: InputRobustness) -> list[Hazard]:
    hazards: list[Hazard] = []
    if not inputs.clean_finite:
        return [Hazard("non_finite_output", CRITICAL, 1.0, 0.0, "non-finite outputs on random input once trained")]
    contamination = max(inputs.nan_contamination, inputs.inf_contamination)
    if contamination > 0.0:
        hazards.append(
            Hazard(
                "nan_propagation",
                HIGH,
                contamination,
                0.0,
                f"one non-finite input element poisons {contamination:.0%} of the other samples' outputs",
            )
        )
    scale = inputs.smallest_overflow_scale
    if scale is not None:
        hazards.append(
            Hazard(
                "extreme_input_overflow",
                MEDIUM,
                scale,
                math.inf,
                f"non-finite outputs for finite inputs of scale {scale:g}",
            )
        )
    return hazards


def determinism_hazards(determinism: Determinism) -> list[Hazard]:
    if determinism.same_build and determinism.same_forward:
        return []
    if not determinism.same_forward:
        measured, which = determinism.forward_difference, "two evaluation passes on one input"
    else:
        measured, which = determinism.build_difference, "the weights of two builds from one seed"
    return [Hazard("nondeterministic", HIGH, measured, 0.0, f"{which} differ by up to {_number(measured)}")]


def learning_hazards(learning: Learning, options: CrucibleOptions) -> list[Hazard]:
    ratio = learning.loss_ratio
    if ratio <= options.max_learn_loss_ratio:
        return []
    return [
        Hazard(
            "does_not_learn",
            HIGH,
            ratio,
            options.max_learn_loss_ratio,
            f"loss ratio {_number(ratio)} after {learning.steps} descent steps "
            f"(limit {options.max_learn_loss_ratio:g})",
        )
    ]


def parameter_hazards(count: ParameterCount, options: CrucibleOptions) -> list[Hazard]:
    if count.relative_error <= options.parameter_tolerance:
        return []
    if count.estimate is None:
        detail = f"the estimate raised {count.estimate_error}; built {count.actual}"
    else:
        detail = f"estimated {count.estimate} parameters, built {count.actual}"
    return [Hazard("parameter_estimate_wrong", MEDIUM, count.relative_error, options.parameter_tolerance, detail)]


def failure_hazards(
    errors: Mapping[str, str], skipped: Mapping[str, str], *, over_budget: Iterable[str]
) -> list[Hazard]:
    hazards: list[Hazard] = []
    if "build" in errors:
        hazards.append(Hazard("build_failed", CRITICAL, 1.0, 0.0, f"build raised {errors['build']}"[:200]))
    probes = [name for name in errors if name != "build"]
    if probes:
        first = probes[0]
        hazards.append(Hazard("raises", CRITICAL, len(probes), 0.0, f"{first}: {errors[first]}"[:200]))
    late = [name for name in over_budget if name in skipped]
    if late:
        hazards.append(
            Hazard("incomplete", MEDIUM, len(late), 0.0, "over the time budget, not run: " + ", ".join(late))
        )
    return hazards


# -- the verdict ------------------------------------------------------------------------------------------------------
def _log_share(value: float, limit: float) -> float:
    """Where ``value`` lies between 1 and ``limit`` on a log scale, clamped to [0, 1]."""
    if not value > 1.0 or not limit > 1.0:
        return 0.0
    return min(1.0, math.log(value) / math.log(limit))


def margins(
    timing: Timing | None,
    gradients: GradientHealth | None,
    learning: Learning | None,
    cost: Cost | None,
    options: CrucibleOptions,
) -> list[float]:
    """Small contributions of measurements inside their thresholds: how far each has come towards its limit."""
    shares: list[float] = []
    if timing is not None:
        shares.append(_log_share(excess_slowdown(timing, cost), options.slow_ratio))
    if gradients is not None:
        shares.append(_log_share(1.0 + gradients.max_gradient_norm, options.max_gradient_norm))
    if learning is not None:
        ratio = learning.loss_ratio
        shares.append(min(1.0, ratio / options.max_learn_loss_ratio) if math.isfinite(ratio) else 1.0)
    if cost is not None:
        shares.append(_log_share(cost.memory_ratio, options.memory_heavy_ratio))
    return [MARGIN_WEIGHT * share for share in shares]


def band_of(score: float) -> HazardBand.ValueType:
    for cut, band in BAND_CUTS:
        if score >= cut:
            return band
    return LOW


def verdict(
    hazards: Iterable[Hazard], margin_scores: Iterable[float]
) -> tuple[float, HazardBand.ValueType, HandlingClass.ValueType]:
    """(risk score, hazard band, handling class) from the hazards and the margins (see the module's notes)."""
    hazards = list(hazards)
    safe = 1.0
    for contribution in [SEVERITY[hazard.band] for hazard in hazards] + list(margin_scores):
        safe *= 1.0 - min(1.0, max(0.0, contribution))
    score = round(1.0 - safe, 4)
    band = max([band_of(score), *(hazard.band for hazard in hazards)])
    if band == CRITICAL:
        handling = HandlingClass.HANDLING_CLASS_QUARANTINE
    elif band == HIGH:
        handling = HandlingClass.HANDLING_CLASS_RESTRICTED
    else:
        handling = HandlingClass.HANDLING_CLASS_STANDARD
    return score, band, handling


def resource_profile(cost: Cost | None, options: CrucibleOptions) -> ResourceProfile.ValueType:
    """MEMORY_HEAVY when a step's memory exceeds ``memory_heavy_ratio`` times a plain layer's; GPU (dense compute
    that wants an accelerator) when its FLOPs exceed ``compute_heavy_ratio`` times; CPU when it does no more counted
    work than the plain layer (cheap anywhere); MIXED otherwise, and when cost was not measured."""
    if cost is None:
        return ResourceProfile.RESOURCE_PROFILE_MIXED
    if cost.memory_ratio > options.memory_heavy_ratio:
        return ResourceProfile.RESOURCE_PROFILE_MEMORY_HEAVY
    if cost.flops_ratio > options.compute_heavy_ratio:
        return ResourceProfile.RESOURCE_PROFILE_GPU
    if cost.flops_ratio <= 1.0:
        return ResourceProfile.RESOURCE_PROFILE_CPU
    return ResourceProfile.RESOURCE_PROFILE_MIXED
