"""What the crucible measured: one frozen record per probe, the hazards derived from them, and the whole result.

Plain numbers only (no tensors, no torch import), so a result can be kept, compared, printed or turned into JSON
(``attrs.asdict``) and into the Leyline ``BSDS`` message (:mod:`esper_urza.urabrask.sheet`) without torch.
A probe that was skipped (over the time budget) or that raised leaves its field ``None``; the result's ``skipped``
and ``errors`` say which and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from esper_core.leyline import BlueprintTier, HandlingClass, HazardBand, ResourceProfile
from esper_core.protocols import SlotShape
from esper_urza.urabrask.options import CrucibleOptions


@attrs.frozen
class StartCheck:
    """The freshly built module on one random batch (training mode), as Kasmina would graft it."""

    #: Output shape and dtype are what the slot writes (the input's dtype).
    shape_ok: bool
    output_shape: tuple[int, ...]
    dtype_ok: bool
    #: Every output element finite on finite input.
    finite: bool
    #: Share of output elements that are not finite.
    non_finite_fraction: float
    #: RMS of the output over RMS of the input (a seed must start near zero; a width seed at exactly zero).
    initial_output_ratio: float
    #: The forward pass changed its input tensor in place (the host's activation).
    mutates_input: bool


@attrs.frozen
class Timing:
    """Forward and backward wall time of the training step (``time.perf_counter``), each pass of the blueprint
    interleaved with one of a plain reference layer at the same slot, so that load on the machine hits both."""

    forward_p50_ms: float
    forward_p95_ms: float
    backward_p50_ms: float
    backward_p95_ms: float
    #: Timed passes (fewer than asked when the latency budget ran out).
    samples: int
    reference_step_p50_ms: float
    #: Median over the timed iterations of (blueprint forward+backward) / (reference forward+backward).
    slowdown: float

    @property
    def step_p50_ms(self) -> float:
        return self.forward_p50_ms + self.backward_p50_ms


@attrs.frozen
class Cost:
    """Counted FLOPs (:mod:`esper_core.flops`) and the memory of one training step, with a plain reference layer's.

    Memory counted, in bytes: trainable parameters, their gradients (same size), the tensors autograd saves for the
    backward pass (distinct storages, seen through ``torch.autograd.graph.saved_tensors_hooks``, excluding the
    parameters and the input, which exist anyway) and the output. Not counted: temporaries freed inside the forward
    or backward pass, buffers, optimizer state, and anything a custom autograd function keeps outside
    ``save_for_backward``. On a CPU this is the part of a step's peak that the seed adds and keeps alive.
    """

    forward_flops: int
    backward_flops: int
    flops_per_sample: float
    reference_flops_per_sample: float
    parameter_bytes: int
    gradient_bytes: int
    saved_bytes: int
    output_bytes: int
    reference_memory_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.saved_bytes + self.output_bytes

    @property
    def memory_ratio(self) -> float:
        return self.memory_bytes / max(1, self.reference_memory_bytes)

    @property
    def flops_ratio(self) -> float:
        return self.flops_per_sample / self.reference_flops_per_sample if self.reference_flops_per_sample else 0.0


@attrs.frozen
class ParameterCount:
    """Trainable parameters of the built module against the catalog's ``parameter_count`` estimate."""

    actual: int
    #: ``None`` when the estimate raised (``estimate_error`` says what).
    estimate: int | None
    estimate_error: str = ""

    @property
    def relative_error(self) -> float:
        if self.estimate is None:
            return float("inf")
        return abs(self.estimate - self.actual) / max(1, self.actual)


@attrs.frozen
class GradientHealth:
    """SGD at a high learning rate with the gradient clipped to one norm (each step moves the parameters by
    ``step_size``, a fixed fraction of their initial norm), on random inputs towards unit-variance random regression
    targets (mean squared error), from the fresh module; the input requires a gradient, as the host's does once a
    seed is no longer isolated. Norms are the raw L2 norms before clipping, over all trainable parameters'
    gradients (``inf`` when any element is not finite)."""

    step_size: float
    #: Steps that ran (the probe stops at the first non-finite loss, gradient or parameter).
    steps: int
    losses: tuple[float, ...]
    gradient_norms: tuple[float, ...]
    input_gradient_norms: tuple[float, ...]
    #: The first step (from 1) at which the loss, a gradient or a parameter was not finite (``None``: all stayed
    #: finite), and which: "loss", "gradient", "input gradient" or "parameters".
    non_finite_step: int | None
    non_finite_what: str = ""

    @property
    def non_finite(self) -> bool:
        return self.non_finite_step is not None

    @property
    def max_gradient_norm(self) -> float:
        return max((*self.gradient_norms, *self.input_gradient_norms), default=0.0)

    @property
    def gradient_growth(self) -> float:
        """Largest parameter-gradient norm over the first non-zero one (1 when there is nothing to compare)."""
        return _growth(self.gradient_norms)

    @property
    def loss_growth(self) -> float:
        return _growth(self.losses)


def _growth(values: tuple[float, ...]) -> float:
    first = next((value for value in values if value > 0), None)
    if first is None:
        return 1.0
    return max(values) / first


@attrs.frozen
class InputRobustness:
    """The module on extreme and non-finite inputs, in training mode without gradients, both fresh and *active*
    (its zero-started parameters given random values, as training will give them: a fresh seed's zero output
    layer hides what its hidden layers do)."""

    #: The fresh and the active module's outputs on ordinary random input are finite (when they are not, the other
    #: fields say nothing about extreme or poisoned inputs).
    clean_finite: bool
    #: For each extreme scale: the outputs stayed finite (fresh and active both).
    extreme_finite: tuple[tuple[float, bool], ...]
    #: One NaN element in the first sample: share of that sample's outputs that turned non-finite (active module).
    nan_spread: float
    #: ... share of the *other* samples' outputs that turned non-finite (one bad example poisons the batch).
    nan_contamination: float
    #: The same two for one ``inf`` element.
    inf_spread: float
    inf_contamination: float

    @property
    def smallest_overflow_scale(self) -> float | None:
        failing = [scale for scale, finite in self.extreme_finite if not finite]
        return min(failing) if failing else None


@attrs.frozen
class Determinism:
    """Two builds under the same seed, and two forward passes of one module (evaluation mode, one input)."""

    #: The two builds' weights and buffers are identical.
    same_build: bool
    #: The two passes' outputs are identical.
    same_forward: bool
    #: Largest absolute difference between the two builds' weights and buffers, and between the two passes'
    #: outputs (NaNs in the same places count as equal).
    build_difference: float
    forward_difference: float


@attrs.frozen
class Learning:
    """Gradient descent (with a line search) from the fresh module towards an *active* build of itself (a target
    its own architecture can express) on one fixed batch: whether a zero-started seed learns at all."""

    #: Steps that lowered the loss (fewer than asked when no step could).
    steps: int
    initial_loss: float
    final_loss: float

    @property
    def loss_ratio(self) -> float:
        """Final over initial loss (``inf`` when either is not finite; 0 when the target was already met)."""
        if not (math.isfinite(self.initial_loss) and math.isfinite(self.final_loss)):
            return float("inf")
        if self.initial_loss <= 0.0:
            return 0.0
        return self.final_loss / self.initial_loss


@attrs.frozen
class Hazard:
    """One hazard class with the measurement behind it: ``measured`` crossed ``limit`` (see ``detail``)."""

    name: str
    band: HazardBand.ValueType
    measured: float
    limit: float
    #: A short sentence with the measured value (the BSDS ``hazards`` map's text).
    detail: str

    @property
    def critical(self) -> bool:
        return self.band == HazardBand.HAZARD_BAND_CRITICAL


@attrs.frozen(kw_only=True)
class CrucibleResult:
    """Everything one crucible run measured and concluded for one blueprint at one slot."""

    catalog: str
    blueprint_id: str
    name: str
    declared_tier: BlueprintTier.ValueType
    declared_risk: float
    #: The resolved parameters the module was built with (every declared one, defaults filled in).
    parameters: Mapping[str, float]
    slot: SlotShape
    options: CrucibleOptions
    start: StartCheck | None = None
    timing: Timing | None = None
    cost: Cost | None = None
    parameter_count: ParameterCount | None = None
    gradients: GradientHealth | None = None
    inputs: InputRobustness | None = None
    determinism: Determinism | None = None
    learning: Learning | None = None
    #: Probes not run, each with why (over the time budget, or nothing to run after a failed build).
    skipped: Mapping[str, str] = attrs.field(factory=dict)
    #: Probes that raised: ``"ExceptionType: message"``.
    errors: Mapping[str, str] = attrs.field(factory=dict)
    hazards: tuple[Hazard, ...] = ()
    risk_score: float = 0.0
    hazard_band: HazardBand.ValueType = HazardBand.HAZARD_BAND_UNSPECIFIED
    handling_class: HandlingClass.ValueType = HandlingClass.HANDLING_CLASS_UNSPECIFIED
    resource_profile: ResourceProfile.ValueType = ResourceProfile.RESOURCE_PROFILE_UNSPECIFIED
    #: Wall time of the probes (from the build on: the first call's imports are not the blueprint's).
    elapsed_s: float = 0.0
    torch_version: str = ""

    @property
    def quarantine(self) -> bool:
        """Never germinate it: a critical hazard (or hazards adding up to a CRITICAL band) was measured."""
        return self.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE

    @property
    def hazard_names(self) -> frozenset[str]:
        return frozenset(hazard.name for hazard in self.hazards)

    def hazard(self, name: str) -> Hazard | None:
        return next((hazard for hazard in self.hazards if hazard.name == name), None)

    @property
    def measured_tier(self) -> BlueprintTier.ValueType:
        """The Karn tier the measurements support: HIGH_RISK for a HIGH or CRITICAL band, EXPERIMENTAL for MEDIUM,
        SAFE for LOW."""
        if self.hazard_band >= HazardBand.HAZARD_BAND_HIGH:
            return BlueprintTier.BLUEPRINT_TIER_HIGH_RISK
        if self.hazard_band == HazardBand.HAZARD_BAND_MEDIUM:
            return BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL
        return BlueprintTier.BLUEPRINT_TIER_SAFE

    @property
    def understates_risk(self) -> bool:
        """The catalog declared a safer tier than the measurements support (a mislabelled blueprint)."""
        return self.measured_tier > self.declared_tier
