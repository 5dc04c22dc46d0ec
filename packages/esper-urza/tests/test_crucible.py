"""Urabrask's crucible: every blueprint is judged by what it does, not by what its catalog declares.

Every Karn blueprint at every standard slot gets a result and the ordinary ones carry no hazard; the stressors
(BP043, BP045, BP046) are caught and quarantined, also when a catalog relabels them SAFE; a deliberately mislabelled
"SAFE" blueprint that explodes its gradients is caught; and each hazard class is shown on a small module built to
have it. Thresholds are far from both sides (see CrucibleOptions): the only timing verdict is a ratio to a plain
layer timed in the same loop.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from torch import nn

from esper_core.leyline import (
    BSDS,
    BlueprintDescriptor,
    BlueprintTier,
    HandlingClass,
    HazardBand,
    Provenance,
    SlotKind,
)
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_urza.karn import KarnCatalog
from esper_urza.urabrask import (
    CrucibleOptions,
    CrucibleResult,
    measure_blueprint,
    safety_data_sheet,
    standard_slots,
)

CONV = SlotKind.SLOT_KIND_CONV2D
VECTOR = SlotKind.SLOT_KIND_VECTOR
SEQUENCE = SlotKind.SLOT_KIND_SEQUENCE
SAFE = BlueprintTier.BLUEPRINT_TIER_SAFE
HIGH_RISK = BlueprintTier.BLUEPRINT_TIER_HIGH_RISK
LOW = HazardBand.HAZARD_BAND_LOW
MEDIUM = HazardBand.HAZARD_BAND_MEDIUM
HIGH = HazardBand.HAZARD_BAND_HIGH
CRITICAL = HazardBand.HAZARD_BAND_CRITICAL

#: Each Karn stressor and the hazard that must catch it.
STRESSORS = {"BP043": "exploding_gradients", "BP045": "non_finite_output", "BP046": "slow"}
#: A generous budget for sweeps, so that a loaded machine never skips a probe (the default budget is tested apart).
SWEEP = CrucibleOptions(time_budget_s=60.0)
EXAMPLE_PLUGIN = Path(__file__).resolve().parents[3] / "examples" / "esper-example-plugin" / "src"


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


@pytest.fixture(scope="module")
def karn_results(karn: KarnCatalog) -> dict[tuple[str, SlotShape], CrucibleResult]:
    """Every Karn blueprint at every standard slot it grows in, measured once for the module: the stressors with the
    default options (the default budget keeps BP046's 100 ms forwards from taking long), the others with a budget
    no loaded machine runs out of."""
    with torch.random.fork_rng(devices=[]):
        return {
            (descriptor.blueprint_id, slot): measure_blueprint(
                karn,
                descriptor.blueprint_id,
                slot,
                CrucibleOptions() if descriptor.blueprint_id in STRESSORS else SWEEP,
            )
            for descriptor in karn.descriptors()
            for slot in standard_slots(descriptor)
        }


# -- a catalog of small modules, each built to have one hazard -------------------------------------------------------
def zero_linear(features_in: int, features_out: int, *, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(features_in, features_out, bias=bias)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
    return layer


class DeepGain(nn.Module):
    """Three linear layers with their weights scaled 30 times, then a zero-started output: a seed that starts at
    exactly zero and looks harmless, but whose gradients grow with every layer (a badly scaled initialisation)."""

    def __init__(self, features: int, gain: float = 30.0) -> None:
        super().__init__()
        layers = [nn.Linear(features, features) for _ in range(3)]
        with torch.no_grad():
            for layer in layers:
                layer.weight.mul_(gain)
        self.hidden = nn.ModuleList(layers)
        self.out = zero_linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(x)
        output: torch.Tensor = self.out(x)
        return output


class ZeroStarted(nn.Module):
    """``out(inner(x))`` with ``out`` starting at zero: the healthy shape each faulty module below varies."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.inner = nn.Linear(features, features)
        self.out = zero_linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.out(torch.relu(self.inner(x)))
        return output


class Dead(nn.Module):
    """Both layers start at zero, without biases: no gradient reaches either, so it never learns."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.inner = zero_linear(features, features, bias=False)
        self.out = zero_linear(features, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.out(torch.relu(self.inner(x)))
        return output


class BatchCoupled(ZeroStarted):
    """Batch normalization in front: in training mode one sample's NaN reaches every sample's output."""

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.norm = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class Noisy(ZeroStarted):
    """Adds a little fresh noise on every pass, evaluation included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1e-5 * torch.rand_like(x)


class MutatesInput(ZeroStarted):
    """Rescales the host's activation in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return super().forward(x)


class NonZeroStart(nn.Module):
    """A plain linear layer: its first output is as large as the host's activation."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.layer(x)
        return output


class ForwardRaises(ZeroStarted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


class WrongShape(ZeroStarted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., :-1]


class Exponential(ZeroStarted):
    """``out(exp(inner(x)))``: fine on ordinary inputs, inf (and 0 * inf = NaN) on large ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.out(torch.exp(self.inner(x)))
        return output


def raising_build(features: int) -> nn.Module:
    raise RuntimeError("the builder is broken")


#: id -> (builder from the feature width, a correction to the parameter estimate).
FAULTY: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "T000": (ZeroStarted, 0),
    "T001": (DeepGain, 0),
    "T002": (ZeroStarted, 1),
    "T003": (Dead, 0),
    "T004": (BatchCoupled, 0),
    "T005": (Noisy, 0),
    "T006": (MutatesInput, 0),
    "T007": (NonZeroStart, 0),
    "T008": (raising_build, 0),
    "T009": (ForwardRaises, 0),
    "T010": (WrongShape, 0),
    "T011": (Exponential, 0),
}


class MislabelledCatalog:
    """A third-party catalog that declares every blueprint SAFE with a risk of 0.05, whatever it builds."""

    name = "mislabelled"

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id=blueprint_id,
                name=builder.__name__.lower(),
                tier=SAFE,
                risk=0.05,
                slot_kinds=[VECTOR],
                catalog=self.name,
            )
            for blueprint_id, (builder, _) in FAULTY.items()
        ]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id not in FAULTY:
            raise KeyError(blueprint_id)
        return FAULTY[blueprint_id][0](slot.shape[-1])

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        builder, correction = FAULTY[blueprint_id]
        try:
            module = builder(slot.shape[-1])
        except RuntimeError:
            return 0
        return sum(p.numel() for p in module.parameters()) + correction


class RelabelledKarn:
    """Karn's blueprints with every descriptor rewritten as SAFE, risk 0, no quarantine: what a careless (or
    malicious) third-party catalog could ship."""

    name = "relabelled-karn"

    def __init__(self) -> None:
        self.karn = KarnCatalog()

    def descriptors(self) -> list[BlueprintDescriptor]:
        relabelled = []
        for descriptor in self.karn.descriptors():
            descriptor.tier, descriptor.risk = SAFE, 0.0
            descriptor.quarantine_only = descriptor.approval_required = False
            relabelled.append(descriptor)
        return relabelled

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        return self.karn.build(blueprint_id, slot, parameters)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return self.karn.parameter_count(blueprint_id, slot, parameters)


VECTOR_SLOT = SlotShape(VECTOR, (128,))


@pytest.fixture(scope="module")
def mislabelled() -> MislabelledCatalog:
    return MislabelledCatalog()


def test_the_test_catalogs_satisfy_the_protocol(mislabelled: MislabelledCatalog) -> None:
    assert isinstance(mislabelled, BlueprintCatalog)
    assert isinstance(RelabelledKarn(), BlueprintCatalog)


# -- Karn -------------------------------------------------------------------------------------------------------------
def test_every_karn_blueprint_gets_a_result_at_every_standard_slot(
    karn: KarnCatalog, karn_results: dict[tuple[str, SlotShape], CrucibleResult]
) -> None:
    measured = {blueprint_id for blueprint_id, _ in karn_results}
    assert measured == {descriptor.blueprint_id for descriptor in karn.descriptors()}
    for (blueprint_id, slot), result in karn_results.items():
        assert result.blueprint_id == blueprint_id and result.slot == slot and result.catalog == "karn"
        assert 0.0 <= result.risk_score <= 1.0
        assert result.hazard_band != HazardBand.HAZARD_BAND_UNSPECIFIED
        assert not result.errors, (blueprint_id, result.errors)
        sheet = safety_data_sheet(result)
        assert sheet.blueprint_id == blueprint_id and len(sheet.SerializeToString()) < 4096


def test_ordinary_karn_blueprints_measure_clean(karn_results: dict[tuple[str, SlotShape], CrucibleResult]) -> None:
    for (blueprint_id, slot), result in karn_results.items():
        if blueprint_id in STRESSORS:
            continue
        where = f"{blueprint_id} at {slot.describe()}: {[h.detail for h in result.hazards]}"
        assert not result.hazards, where
        assert not result.quarantine and not result.skipped, where
        assert result.hazard_band == LOW and result.handling_class == HandlingClass.HANDLING_CLASS_STANDARD, where
        assert result.risk_score < 0.3, where
        assert not result.understates_risk, where
        # Every measurement was taken and says what a healthy seed should.
        assert result.start is not None and result.start.finite and result.start.initial_output_ratio <= 1e-3
        assert result.parameter_count is not None and result.parameter_count.relative_error == 0.0
        assert result.timing is not None and result.timing.samples >= 1 and result.timing.forward_p95_ms > 0
        assert result.cost is not None and result.cost.memory_bytes > 0
        assert result.gradients is not None and not result.gradients.non_finite
        assert result.inputs is not None and result.inputs.nan_contamination == 0.0
        assert result.determinism is not None and result.determinism.same_build and result.determinism.same_forward
        assert result.learning is not None and result.learning.loss_ratio < 0.9, where


def test_the_stressors_are_caught_and_quarantined_by_measurement(
    karn_results: dict[tuple[str, SlotShape], CrucibleResult],
) -> None:
    for (blueprint_id, slot), result in karn_results.items():
        if blueprint_id not in STRESSORS:
            continue
        hazard = result.hazard(STRESSORS[blueprint_id])
        assert hazard is not None and hazard.critical, f"{blueprint_id} at {slot.describe()}: {result.hazards}"
        assert result.quarantine and result.hazard_band == CRITICAL and result.risk_score >= 0.85
        sheet = safety_data_sheet(result)
        assert sheet.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE
        assert sheet.hazards[STRESSORS[blueprint_id]].startswith("CRITICAL: ")


def test_the_stressor_measurements_behind_the_verdicts(
    karn_results: dict[tuple[str, SlotShape], CrucibleResult],
) -> None:
    conv = SlotShape(CONV, (16, 14, 14))
    exploding = karn_results["BP043", conv].gradients
    assert exploding is not None and exploding.non_finite_step == 1 and exploding.non_finite_what == "gradient"
    nan = karn_results["BP045", conv].start
    assert nan is not None and not nan.finite and 0.05 < nan.non_finite_fraction < 0.2  # frequency 0.1
    slow = karn_results["BP046", conv]
    assert slow.timing is not None and slow.timing.forward_p50_ms >= 100.0  # it sleeps 100 ms a forward
    hazard = slow.hazard("slow")
    assert hazard is not None and hazard.measured > 2 * slow.options.critical_slow_ratio
    assert slow.elapsed_s < 5.0  # the budget cut the probes a 100 ms forward would have made long
    assert set(slow.skipped) and slow.hazard("incomplete") is not None


def test_the_stressors_are_quarantined_when_a_catalog_calls_them_safe() -> None:
    catalog = RelabelledKarn()
    for blueprint_id, hazard_name in STRESSORS.items():
        result = measure_blueprint(catalog, blueprint_id, VECTOR_SLOT)
        assert result.declared_tier == SAFE and result.declared_risk == 0.0
        assert result.quarantine and hazard_name in result.hazard_names, result.hazards
        assert result.understates_risk and result.measured_tier == HIGH_RISK


def test_a_milder_exploding_stressor_is_caught_by_its_gradient_norm(karn: KarnCatalog) -> None:
    """10^8 keeps the gradients finite: the measured norm, not an overflow, catches it."""
    result = measure_blueprint(karn, "BP043", VECTOR_SLOT, parameters={"log10_factor": 8.0})
    gradients = result.gradients
    assert gradients is not None and not gradients.non_finite
    assert gradients.max_gradient_norm > 1e3 * result.options.max_gradient_norm
    hazard = result.hazard("exploding_gradients")
    assert hazard is not None and hazard.critical and result.quarantine
    assert result.parameters == {"log10_factor": 8.0}


# -- a catalog that lies ----------------------------------------------------------------------------------------------
def test_a_mislabelled_safe_blueprint_that_explodes_its_gradients_is_caught(mislabelled: MislabelledCatalog) -> None:
    result = measure_blueprint(mislabelled, "T001", VECTOR_SLOT)
    assert result.declared_tier == SAFE and result.start is not None and result.start.initial_output_ratio == 0.0
    hazard = result.hazard("exploding_gradients")
    assert hazard is not None and hazard.critical, result.hazards
    assert result.gradients is not None and result.gradients.max_gradient_norm > 100 * result.options.max_gradient_norm
    assert result.quarantine and result.understates_risk
    sheet = safety_data_sheet(result)
    assert sheet.hazard_band == CRITICAL and sheet.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE
    assert "exploding_gradients" in sheet.hazards and "gradient" in sheet.hazards["exploding_gradients"]


def test_its_healthy_sibling_is_clean(mislabelled: MislabelledCatalog) -> None:
    result = measure_blueprint(mislabelled, "T000", VECTOR_SLOT, SWEEP)
    assert not result.hazards and result.hazard_band == LOW and not result.understates_risk


@pytest.mark.parametrize(
    ("blueprint_id", "hazard_name", "band"),
    [
        ("T002", "parameter_estimate_wrong", MEDIUM),
        ("T003", "does_not_learn", HIGH),
        ("T004", "nan_propagation", HIGH),
        ("T005", "nondeterministic", HIGH),
        ("T006", "mutates_input", CRITICAL),
        ("T007", "nonzero_start", HIGH),
        ("T008", "build_failed", CRITICAL),
        ("T009", "raises", CRITICAL),
        ("T010", "wrong_shape", CRITICAL),
        ("T011", "extreme_input_overflow", MEDIUM),
    ],
)
def test_each_hazard_class_is_measured(
    mislabelled: MislabelledCatalog, blueprint_id: str, hazard_name: str, band: HazardBand.ValueType
) -> None:
    result = measure_blueprint(mislabelled, blueprint_id, VECTOR_SLOT, SWEEP)
    hazard = result.hazard(hazard_name)
    assert hazard is not None, f"{blueprint_id}: {[h.detail for h in result.hazards]}"
    assert hazard.band == band and hazard.detail
    assert result.hazard_band >= band
    assert result.quarantine == (result.hazard_band == CRITICAL)
    if band == CRITICAL:
        assert result.quarantine and result.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE
    elif band == HIGH:
        assert result.handling_class in (
            HandlingClass.HANDLING_CLASS_RESTRICTED,
            HandlingClass.HANDLING_CLASS_QUARANTINE,
        )
    assert safety_data_sheet(result).hazards[hazard_name].startswith(HazardBand.Name(band).removeprefix("HAZARD_BAND_"))


def test_what_a_failure_leaves_unmeasured_is_said(mislabelled: MislabelledCatalog) -> None:
    built = measure_blueprint(mislabelled, "T008", VECTOR_SLOT)
    assert "build" in built.errors and "RuntimeError" in built.errors["build"]
    assert built.start is None and built.timing is None and "learning" in built.skipped
    raised = measure_blueprint(mislabelled, "T009", VECTOR_SLOT)
    assert "boom" in raised.errors["start"] and raised.parameter_count is not None
    assert raised.timing is None and "timing" in raised.skipped


# -- the example plugin's catalog (a third party's) -------------------------------------------------------------------
def test_the_example_plugins_catalog_is_rated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))  # its source, whether or not the example is installed here
    catalog: BlueprintCatalog = importlib.import_module("esper_example_plugin.catalog").ExampleCatalog()
    (descriptor,) = catalog.descriptors()
    for slot in standard_slots(descriptor):
        result = measure_blueprint(catalog, descriptor.blueprint_id, slot, SWEEP)
        assert not result.hazards and not result.quarantine, (slot, result.hazards)
        assert result.catalog == "example" and result.learning is not None and result.learning.loss_ratio < 0.9


# -- the request, the budget, reproducibility -------------------------------------------------------------------------
def test_mistakes_in_the_request_raise(karn: KarnCatalog) -> None:
    with pytest.raises(KeyError):
        measure_blueprint(karn, "BP999", VECTOR_SLOT)
    with pytest.raises(ValueError, match="BP009"):
        measure_blueprint(karn, "BP009", VECTOR_SLOT)  # conv2d only
    with pytest.raises(ValueError, match="scale"):
        measure_blueprint(karn, "BP002", VECTOR_SLOT, parameters={"scale": 100.0})
    with pytest.raises(ValueError, match="width"):
        measure_blueprint(karn, "BP059", VECTOR_SLOT)  # a width blueprint in a residual slot


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="critical_slow_ratio"):
        CrucibleOptions(slow_ratio=50.0, critical_slow_ratio=10.0)
    with pytest.raises(ValueError, match="batch"):
        CrucibleOptions(batch=0)
    with pytest.raises(ValueError, match="threads"):
        CrucibleOptions(threads=0)
    assert CrucibleOptions(extreme_scales=(10, 1e6)).extreme_scales == (10.0, 1e6)


def test_probes_over_the_time_budget_are_skipped_and_said(karn: KarnCatalog) -> None:
    result = measure_blueprint(karn, "BP002", VECTOR_SLOT, CrucibleOptions(time_budget_s=1e-9))
    assert result.start is not None and result.timing is not None  # always run
    assert set(result.skipped) == {"cost", "gradients", "inputs", "determinism", "learning"}
    hazard = result.hazard("incomplete")
    assert hazard is not None and hazard.band == MEDIUM and "learning" in hazard.detail
    assert not result.quarantine and result.hazard_band == MEDIUM


def _measured(result: CrucibleResult) -> dict[str, Any]:
    """Everything a result measured except wall times (and the score, whose margins include the slowdown)."""
    fields = attrs.asdict(result, recurse=True)
    for name in ("timing", "elapsed_s", "risk_score"):
        fields.pop(name)
    fields["hazards"] = [h for h in fields["hazards"] if h["name"] != "slow"]
    return fields


def test_a_result_is_reproducible_and_leaves_the_caller_alone(karn: KarnCatalog) -> None:
    slot = SlotShape(SEQUENCE, (16, 64))
    torch.set_num_threads(2)  # the crucible measures on one (the autouse fixture restores the test's setting)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    with torch.no_grad():  # the crucible needs gradients whatever the caller's mode
        first = measure_blueprint(karn, "BP023", slot)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == 2
    assert torch.is_grad_enabled()
    second = measure_blueprint(karn, "BP023", slot)
    assert first.gradients is not None and first.learning is not None
    assert _measured(first) == _measured(second)


def test_standard_slots_fit_their_blueprints(karn: KarnCatalog) -> None:
    from esper_core.leyline import growth

    for descriptor in karn.descriptors():
        slots = standard_slots(descriptor)
        assert slots and all(growth.fits(descriptor, slot) for slot in slots), descriptor.blueprint_id
    (sequence_width,) = standard_slots(karn.descriptor("BP060"))
    assert sequence_width.read_shape[0] == sequence_width.shape[0]


def test_the_sheet_carries_the_verdict(karn_results: dict[tuple[str, SlotShape], CrucibleResult]) -> None:
    result = karn_results["BP045", VECTOR_SLOT]
    sheet = safety_data_sheet(result, issued_at=1_700_000_000.5)
    assert isinstance(sheet, BSDS) and sheet.version == 1
    assert sheet.provenance == Provenance.PROVENANCE_URABRASK
    assert sheet.issued_at.ToNanoseconds() == 1_700_000_000_500_000_000
    assert math.isclose(sheet.risk_score, result.risk_score)
    assert sheet.resource_profile == result.resource_profile
    assert sheet.recommendation.startswith("quarantine") and "vector[128]" in sheet.recommendation
    assert set(sheet.hazards) == set(result.hazard_names)
    assert all(len(text) <= 160 for text in sheet.hazards.values())
    assert BSDS.FromString(sheet.SerializeToString()) == sheet
