"""Karn: genuinely different blueprints that keep the seed contract, and stressors that break exactly what they
exist to break."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import pytest
import torch

from esper_core.leyline import BlueprintDescriptor, BlueprintTier, SlotKind
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_core.testing.conformance import BlueprintCatalogConformance
from esper_core.testing.conformance.catalog import check_blueprint
from esper_urza.karn import KarnCatalog

CONV = SlotKind.SLOT_KIND_CONV2D
VECTOR = SlotKind.SLOT_KIND_VECTOR
SEQUENCE = SlotKind.SLOT_KIND_SEQUENCE
SAFE = BlueprintTier.BLUEPRINT_TIER_SAFE
EXPERIMENTAL = BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL
HIGH_RISK = BlueprintTier.BLUEPRINT_TIER_HIGH_RISK

#: Each stressor and the conformance properties it exists to break (and nothing else).
STRESSOR_BREAKS = {
    "BP043": frozenset({"gradients"}),  # exploding gradients
    "BP045": frozenset({"finite", "near_zero"}),  # NaN injection: NaN is neither finite nor near zero
    "BP046": frozenset(),  # slow forward: breaks a latency budget, which the conformance suite does not time
}
#: A shape of each kind used where a test needs one.
REFERENCE = {CONV: (16, 14, 14), VECTOR: (32,), SEQUENCE: (10, 24)}
#: A width slot for each width blueprint: what it reads, and what it writes.
WIDTH_REFERENCE = {
    "BP057": SlotShape(CONV, (16, 7, 7), read_kind=CONV, read_shape=(8, 14, 14)),
    "BP058": SlotShape(VECTOR, (10,), read_kind=CONV, read_shape=(16, 14, 14)),
    "BP059": SlotShape(VECTOR, (32,), read_kind=VECTOR, read_shape=(64,)),
    "BP060": SlotShape(SEQUENCE, (10, 24), read_kind=SEQUENCE, read_shape=(10, 16)),
}


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


class TestKarnConformance(BlueprintCatalogConformance):
    @pytest.fixture
    def catalog(self) -> BlueprintCatalog:
        return KarnCatalog()

    def exemptions(self, descriptor: BlueprintDescriptor) -> frozenset[str]:
        return STRESSOR_BREAKS.get(descriptor.blueprint_id, frozenset())


# -- the catalog as a whole -----------------------------------------------------------------------------------------
def test_at_least_twenty_safe_and_experimental_blueprints_across_all_three_slot_kinds(karn: KarnCatalog) -> None:
    growth = [d for d in karn.descriptors() if d.tier in (SAFE, EXPERIMENTAL)]
    assert len(growth) >= 20
    for kind in (CONV, VECTOR, SEQUENCE):
        assert sum(kind in d.slot_kinds for d in growth) >= 8, SlotKind.Name(kind)


def test_tiers_keep_the_prototype_risk_semantics(karn: KarnCatalog) -> None:
    for d in karn.descriptors():
        assert re.fullmatch(r"BP\d{3}", d.blueprint_id)
        assert d.catalog == "karn" and d.description and 0 <= d.stage <= 6
        if d.tier == SAFE:
            assert d.risk <= 0.5 and not d.approval_required and not d.quarantine_only and d.stage <= 4
        elif d.tier == EXPERIMENTAL:
            assert 0.7 <= d.risk <= 0.8 and d.approval_required and not d.quarantine_only and d.stage == 5
        else:
            assert d.tier == HIGH_RISK
            assert 0.9 <= d.risk <= 1.0 and d.approval_required and d.quarantine_only and d.stage == 6
        for name, bound in d.allowed_parameters.items():
            assert bound.description, f"{d.blueprint_id}.{name} has no description"
            assert bound.min_value <= bound.default_value <= bound.max_value


def test_the_stressors_are_exactly_the_high_risk_tier(karn: KarnCatalog) -> None:
    assert {d.blueprint_id for d in karn.query(tiers=["HIGH_RISK"])} == set(STRESSOR_BREAKS)
    assert all(d.tier == SAFE for d in karn.query(tiers=["SAFE"]))
    assert {d.blueprint_id for d in karn.query(slot_kind=SEQUENCE, max_risk=0.5)} >= {"BP022", "BP023", "BP031"}


def _signature(module: torch.nn.Module) -> tuple[object, ...]:
    """What a module is made of: its layer types and parameter shapes, in order."""
    layers = tuple(type(m).__name__ for m in module.modules())
    shapes = tuple((name, tuple(p.shape)) for name, p in module.named_parameters())
    return layers, shapes


def test_no_two_blueprints_build_the_same_module(karn: KarnCatalog) -> None:
    """The prototype built 49 of 50 blueprints as the same MLP; every Karn blueprint is a different module."""
    for kind, shape in REFERENCE.items():
        seen: dict[tuple[object, ...], str] = {}
        for d in karn.query(slot=SlotShape(kind, shape)):
            if d.tier == HIGH_RISK:
                continue
            signature = _signature(karn.build(d.blueprint_id, SlotShape(kind, shape), {}))
            assert signature not in seen, f"{d.blueprint_id} builds the same module as {seen[signature]}"
            seen[signature] = d.blueprint_id


def test_blueprints_compute_different_functions(karn: KarnCatalog) -> None:
    """With every weight randomized (no zero start), no two blueprints of a kind compute the same function."""
    for kind, shape in REFERENCE.items():
        inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
        outputs: dict[str, torch.Tensor] = {}
        for d in karn.query(slot=SlotShape(kind, shape), max_risk=0.8):
            torch.manual_seed(1)
            module = karn.build(d.blueprint_id, SlotShape(kind, shape), {})
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.normal_(0.0, 0.3)
                outputs[d.blueprint_id] = module(inputs)
        ids = sorted(outputs)
        for i, first in enumerate(ids):
            for second in ids[i + 1 :]:
                assert not torch.allclose(outputs[first], outputs[second], atol=1e-4), (first, second)


@pytest.mark.parametrize("kind", [CONV, VECTOR, SEQUENCE], ids=["conv2d", "vector", "sequence"])
def test_every_growth_blueprint_learns_from_its_zero_start(karn: KarnCatalog, kind: SlotKind.ValueType) -> None:
    """A zero start must not be a dead start: from it, a few Adam steps move each blueprint well towards what a
    randomly weighted copy of itself computes (a target its architecture can represent)."""
    shape = REFERENCE[kind]
    inputs = torch.randn(8, *shape, generator=torch.Generator().manual_seed(3))
    for d in karn.query(slot=SlotShape(kind, shape), max_risk=0.8):
        slot = SlotShape(kind, shape)
        torch.manual_seed(0)
        teacher = karn.build(d.blueprint_id, slot, {})
        with torch.no_grad():
            for parameter in teacher.parameters():
                parameter.normal_(0.0, 0.3)
            target = teacher(inputs)
        student = karn.build(d.blueprint_id, slot, {})
        optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
        with torch.no_grad():
            initial = float((student(inputs) - target).pow(2).mean())
        for _ in range(30):
            optimizer.zero_grad()
            loss = (student(inputs) - target).pow(2).mean()
            loss.backward()
            optimizer.step()
        final = float(loss.detach())
        assert final < 0.8 * initial, f"{d.blueprint_id} ({d.name}): loss {initial:.4f} -> {final:.4f}"


# -- parameters and slots -------------------------------------------------------------------------------------------
def test_unknown_id_is_a_key_error_naming_it(karn: KarnCatalog) -> None:
    with pytest.raises(KeyError, match="BP999"):
        karn.build("BP999", SlotShape(VECTOR, (8,)), {})
    with pytest.raises(KeyError):
        karn.parameter_count("BP999", SlotShape(VECTOR, (8,)), {})


def test_unknown_parameter_is_a_value_error_naming_blueprint_parameter_value_and_bounds(karn: KarnCatalog) -> None:
    with pytest.raises(ValueError, match=r"BP009 \(residual_block\).*'width'.*3.*depth integer \[1, 4\]"):
        karn.build("BP009", SlotShape(CONV, (4, 5, 5)), {"width": 3.0})


@pytest.mark.parametrize("value", [0.0, 5.0, float("nan"), float("inf")])
def test_out_of_bounds_parameter_is_a_value_error(karn: KarnCatalog, value: float) -> None:
    with pytest.raises(ValueError, match=r"BP009 \(residual_block\): parameter 'depth' = .* outside .*\[1, 4\]"):
        karn.build("BP009", SlotShape(CONV, (4, 5, 5)), {"depth": value})
    with pytest.raises(ValueError):
        karn.parameter_count("BP009", SlotShape(CONV, (4, 5, 5)), {"depth": value})


def test_unsupported_slot_kind_is_a_value_error(karn: KarnCatalog) -> None:
    with pytest.raises(ValueError, match=r"BP009 .* does not grow in vector slots.*conv2d"):
        karn.build("BP009", SlotShape(VECTOR, (8,)), {})
    with pytest.raises(ValueError, match="3 positive dimensions"):
        karn.build("BP009", SlotShape(CONV, (8, 4)), {})


def test_missing_parameters_take_defaults_and_integer_ones_are_rounded(karn: KarnCatalog) -> None:
    slot = SlotShape(CONV, (16, 14, 14))
    assert karn.parameter_count("BP009", slot, {}) == 4640  # depth 2: two 3x3 convs of 16 channels
    assert karn.parameter_count("BP009", slot, {"depth": 3.4}) == 3 * 2320
    module = karn.build("BP009", slot, {"depth": 3.6})
    assert sum(isinstance(m, torch.nn.Conv2d) for m in module.modules()) == 4


def test_sizes_adapt_to_the_slot(karn: KarnCatalog) -> None:
    grouped: Any = karn.build("BP013", SlotShape(CONV, (12, 4, 4)), {"groups": 8})
    assert grouped.grouped.groups == 6  # the largest divisor of 12 not above 8
    attention: Any = karn.build("BP022", SlotShape(SEQUENCE, (5, 14)), {"heads": 8})
    assert attention.heads == 7
    lora: Any = karn.build("BP053", SlotShape(VECTOR, (3,)), {"rank": 16})
    assert lora.down.out_features == 3


def test_every_build_is_a_new_module(karn: KarnCatalog) -> None:
    slot = SlotShape(VECTOR, (16,))
    first, second = karn.build("BP052", slot, {}), karn.build("BP052", slot, {})
    assert first is not second
    assert not {id(p) for p in first.parameters()} & {id(p) for p in second.parameters()}


def test_descriptors_are_copies(karn: KarnCatalog) -> None:
    karn.descriptors()[0].risk = 0.99
    assert karn.descriptors()[0].risk != 0.99


# -- stressors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blueprint_id", sorted(STRESSOR_BREAKS))
@pytest.mark.parametrize("kind", [CONV, VECTOR, SEQUENCE], ids=["conv2d", "vector", "sequence"])
def test_each_stressor_breaks_exactly_its_properties(
    karn: KarnCatalog, blueprint_id: str, kind: SlotKind.ValueType
) -> None:
    descriptor = karn.descriptor(blueprint_id)
    slot = SlotShape(kind, REFERENCE[kind])
    parameters = {"delay_ms": 5.0} if blueprint_id == "BP046" else {}
    breaks = STRESSOR_BREAKS[blueprint_id]
    check_blueprint(karn, descriptor, slot, parameters, exempt=breaks)  # keeps everything else
    for prop in breaks:  # and, without its exemption, fails on each property it exists to break
        with pytest.raises(AssertionError):
            check_blueprint(karn, descriptor, slot, parameters, exempt=breaks - {prop})


def test_exploding_gradient_multiplies_gradients_by_its_factor(karn: KarnCatalog) -> None:
    slot = SlotShape(VECTOR, (8,))
    inputs = torch.randn(3, 8)
    module: Any = karn.build("BP043", slot, {"log10_factor": 6.0})
    module(inputs).sum().backward()
    amplified = module.projection.weight.grad
    assert amplified is not None
    plain = torch.nn.Linear(8, 8)
    plain(inputs).sum().backward()
    assert plain.weight.grad is not None
    torch.testing.assert_close(amplified, plain.weight.grad * 1e6)
    stressed: Any = karn.build("BP043", slot, {})  # the default, 10^40, overflows float32
    stressed(inputs).sum().backward()
    assert stressed.projection.weight.grad is not None
    assert not torch.isfinite(stressed.projection.weight.grad).all()


def test_nan_injection_always_emits_nan(karn: KarnCatalog) -> None:
    for frequency in (0.01, 0.5):
        out = karn.build("BP045", SlotShape(VECTOR, (1,)), {"frequency": frequency})(torch.randn(1, 1))
        assert torch.isnan(out).any()
    out = karn.build("BP045", SlotShape(CONV, (4, 5, 5)), {"frequency": 0.1})(torch.randn(2, 4, 5, 5))
    assert int(torch.isnan(out).sum()) == 20  # every 10th of 200 elements


def test_slow_forward_is_slow(karn: KarnCatalog) -> None:
    module = karn.build("BP046", SlotShape(VECTOR, (4,)), {"delay_ms": 60})
    start = time.perf_counter()
    module(torch.randn(2, 4))
    assert time.perf_counter() - start >= 0.06


def test_parameter_counts_are_exact_at_the_reference_shapes(karn: KarnCatalog) -> None:
    counts: dict[str, list[int]] = defaultdict(list)
    for d in karn.descriptors():
        for kind in d.slot_kinds:
            slot = WIDTH_REFERENCE[d.blueprint_id] if d.read_kinds else SlotShape(kind, REFERENCE[kind])
            module = karn.build(d.blueprint_id, slot, {"delay_ms": 5.0} if d.blueprint_id == "BP046" else {})
            built = sum(p.numel() for p in module.parameters() if p.requires_grad)
            assert karn.parameter_count(d.blueprint_id, slot, {}) == built, d.blueprint_id
            counts[d.blueprint_id].append(built)
    assert counts["BP009"] == [4640]
    # width 8, 3x3 from 8 channels, then a 3x3 into 16: (8*8*9 + 8) + (16*8*9 + 16)
    assert counts["BP057"] == [584 + 1168]
    # width 8, 3x3 from 16 channels; 2x2 max-pool: 8 * 7 * 7 = 392 features into 10
    assert counts["BP058"] == [(8 * 16 * 9 + 8) + (392 * 10 + 10)]
    assert counts["BP059"] == [(64 * 32 + 32) + (32 * 32 + 32)]  # width 32
    assert counts["BP060"] == [(16 * 64 + 64) + (64 * 24 + 24)]  # width 64
