"""Tezzeret: artifacts are checked, plain (never a pickled module), hashed, reproducible; refusals say why."""

from __future__ import annotations

import hashlib
import io
import json
import pickletools
import zipfile
from collections.abc import Callable, Mapping, Sequence

import pytest
import torch
from torch import nn

from esper_core.errors import EsperError
from esper_core.leyline import BlueprintDescriptor, BlueprintTier, GrowthMode, SlotKind
from esper_core.protocols import SlotShape
from esper_urza.errors import ArtifactBuildError
from esper_urza.karn import KarnCatalog
from esper_urza.options import TezzeretOptions
from esper_urza.parameters import artifact_key
from esper_urza.records import ArtifactRecord
from esper_urza.tezzeret import Tezzeret, load_artifact

CONV_SLOT = SlotShape(SlotKind.SLOT_KIND_CONV2D, (16, 14, 14))
VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (8,))


class OneBlueprint:
    """A catalog with one blueprint (FK001) whose module, and parameter estimate, a test chooses."""

    name = "fake"

    def __init__(self, make: Callable[[SlotShape], object], estimate: int | None = None) -> None:
        self.make = make
        self.estimate = estimate

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id="FK001",
                name="fake",
                tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
                risk=0.1,
                slot_kinds=[SlotKind.SLOT_KIND_VECTOR],
                catalog="fake",
            )
        ]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        return self.make(slot)  # type: ignore[return-value]

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        if self.estimate is not None:
            return self.estimate
        module = self.make(slot)
        assert isinstance(module, nn.Module)
        return sum(p.numel() for p in module.parameters())


def zero_linear(slot: SlotShape) -> nn.Module:
    layer = nn.Linear(slot.shape[0], slot.shape[0])
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def refused(catalog: object, slot: SlotShape = VECTOR_SLOT, **options: object) -> ArtifactBuildError:
    with pytest.raises(ArtifactBuildError) as caught:
        Tezzeret(TezzeretOptions(**options)).build(catalog, "FK001", slot, {})  # type: ignore[arg-type]
    return caught.value


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


def test_an_artifact_is_plain_data_and_tensors_with_the_hash_of_its_bytes(karn: KarnCatalog) -> None:
    built = Tezzeret().build(karn, "BP009", CONV_SLOT, {"depth": 2})
    assert built.record.sha256 == hashlib.sha256(built.data).hexdigest()
    payload = torch.load(io.BytesIO(built.data), weights_only=True)  # would refuse a pickled module
    assert set(payload) == {"format", "record", "state_dict"}
    assert all(isinstance(tensor, torch.Tensor) for tensor in payload["state_dict"].values())
    with zipfile.ZipFile(io.BytesIO(built.data)) as archive:
        (pickled,) = [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
    imported = {arg for op, arg, _ in pickletools.genops(pickled) if op.name == "GLOBAL"}
    assert imported <= {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"}, imported
    record = json.loads(payload["record"])
    assert record["blueprint_id"] == "BP009" and record["parameters"] == {"depth": 2.0}
    assert record["guard"] == {"slot_kind": "conv2d", "shape": [16, 14, 14], "dtype": "float32"}
    assert BlueprintDescriptor.FromString(built.record.descriptor_bytes).name == "residual_block"


def test_the_record_carries_what_tezzeret_measured(karn: KarnCatalog) -> None:
    record = Tezzeret().build(karn, "BP009", CONV_SLOT, {}).record
    assert record.parameter_count == 4640
    assert record.forward_latency_ms > 0 and record.build_ms >= record.forward_latency_ms
    assert record.initial_output_ratio == 0.0
    assert record.tier == "SAFE" and record.risk == pytest.approx(0.3) and not record.compiled
    assert set(record.versions) == {"torch", "esper_urza", "python"}


def test_the_artifact_rebuilds_the_same_module_and_builds_are_reproducible(karn: KarnCatalog) -> None:
    first = Tezzeret().build(karn, "BP023", SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (6, 16)), {"layers": 2})
    second = Tezzeret().build(karn, "BP023", SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (6, 16)), {"layers": 2})
    record, state = load_artifact(first.data, sha256=first.record.sha256)
    assert record.key == first.record.key
    _, other = load_artifact(second.data, sha256=second.record.sha256)
    assert state.keys() == other.keys() and all(torch.equal(state[name], other[name]) for name in state)
    module = karn.build("BP023", record.slot, record.parameters)
    module.load_state_dict(state)  # strict: the artifact fits the module the catalog builds


def test_building_leaves_the_callers_random_stream_alone(karn: KarnCatalog) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Tezzeret().build(karn, "BP052", VECTOR_SLOT, {})
    assert torch.equal(torch.rand(3), expected)


def test_nan_injection_is_refused_at_the_finiteness_probe(karn: KarnCatalog) -> None:
    with pytest.raises(ArtifactBuildError) as caught:
        Tezzeret().build(karn, "BP045", VECTOR_SLOT, {"frequency": 0.25})
    error = caught.value
    assert isinstance(error, EsperError)
    assert error.check == "finite" and error.numbers == {"non_finite": 4, "total": 16}
    assert "BP045 (nan_injection) at vector[8]" in str(error) and "frequency=0.25" in str(error)
    assert "4 of 16 outputs are not finite" in str(error)


def test_a_slow_forward_is_measured_and_refused_over_a_limit(karn: KarnCatalog) -> None:
    record = Tezzeret().build(karn, "BP046", VECTOR_SLOT, {"delay_ms": 25}).record
    assert record.forward_latency_ms >= 25
    with pytest.raises(ArtifactBuildError) as caught:
        Tezzeret(TezzeretOptions(max_forward_ms=10.0)).build(karn, "BP046", VECTOR_SLOT, {"delay_ms": 25})
    assert caught.value.check == "latency"
    assert float(caught.value.numbers["median_ms"]) >= 25 and caught.value.numbers["limit_ms"] == 10.0


def test_a_wrong_parameter_estimate_is_refused_with_both_numbers() -> None:
    error = refused(OneBlueprint(zero_linear, estimate=10))
    assert error.check == "parameter_count" and error.numbers == {"estimate": 10, "actual": 72}


def test_a_module_that_changes_the_shape_is_refused() -> None:
    error = refused(OneBlueprint(lambda slot: nn.Linear(slot.shape[0], 3)))
    assert error.check == "shape" and error.numbers == {"expected": "[2, 8]", "got": "[2, 3]"}


def test_a_module_that_does_not_start_near_zero_is_refused() -> None:
    error = refused(OneBlueprint(lambda slot: nn.Linear(slot.shape[0], slot.shape[0])))
    assert error.check == "initial_output" and float(error.numbers["ratio"]) > 1e-3
    assert "jolt the host" in str(error)
    # a looser limit lets it through
    Tezzeret(TezzeretOptions(max_initial_output_ratio=1e9)).build(
        OneBlueprint(lambda slot: nn.Linear(slot.shape[0], slot.shape[0])), "FK001", VECTOR_SLOT, {}
    )


def test_builder_and_forward_failures_are_refused_not_leaked() -> None:
    def broken(slot: SlotShape) -> nn.Module:
        raise RuntimeError("out of ideas")

    class Crashes(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    assert refused(OneBlueprint(broken)).check == "build"
    assert refused(OneBlueprint(lambda slot: "not a module")).check == "build"
    assert refused(OneBlueprint(lambda slot: Crashes())).check == "forward"


def test_unknown_ids_and_bad_parameters_keep_their_protocol_errors(karn: KarnCatalog) -> None:
    with pytest.raises(KeyError):
        Tezzeret().build(karn, "BP999", VECTOR_SLOT, {})
    with pytest.raises(ValueError, match="hidden_multiple"):
        Tezzeret().build(karn, "BP052", VECTOR_SLOT, {"hidden_multiple": 9})
    with pytest.raises(ValueError, match="does not grow in vector"):
        Tezzeret().build(karn, "BP009", VECTOR_SLOT, {})


def test_compiling_is_checked_against_eager_and_falls_back_to_eager(karn: KarnCatalog) -> None:
    compiled = Tezzeret(TezzeretOptions(compile=True, compile_backend="eager")).build(karn, "BP052", VECTOR_SLOT, {})
    assert compiled.record.compiled and compiled.record.report["compile_ms"] >= 0
    fallback = Tezzeret(TezzeretOptions(compile=True, compile_backend="no-such-backend")).build(
        karn, "BP052", VECTOR_SLOT, {}
    )
    assert not fallback.record.compiled and "no-such-backend" in fallback.record.report["compile_error"]


# -- width slots ----------------------------------------------------------------------------------------------------
WIDTH_SLOT = SlotShape(
    SlotKind.SLOT_KIND_CONV2D, (2, 14, 14), read_kind=SlotKind.SLOT_KIND_CONV2D, read_shape=(1, 28, 28)
)
VECTOR_WIDTH_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (8,), read_kind=SlotKind.SLOT_KIND_VECTOR, read_shape=(12,))


class OneWidthBlueprint(OneBlueprint):
    """FK001 as a width blueprint (vector to vector)."""

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        (descriptor,) = super().descriptors()
        descriptor.growth_mode = GrowthMode.GROWTH_MODE_WIDTH
        descriptor.read_kinds.append(SlotKind.SLOT_KIND_VECTOR)
        return [descriptor]


def test_a_width_artifact_is_probed_with_the_read_shape_and_records_both_sides(karn: KarnCatalog) -> None:
    built = Tezzeret().build(karn, "BP057", WIDTH_SLOT, {"width": 4})
    record = built.record
    guard = record.guard
    assert (guard.slot_kind, guard.shape, guard.dtype, guard.read_kind, guard.read_shape) == (
        "conv2d",
        (2, 14, 14),
        "float32",
        "conv2d",
        (1, 28, 28),
    )
    assert record.slot == WIDTH_SLOT and record.initial_output_ratio == 0.0
    assert record.parameter_count == (4 * 9 + 4) + (2 * 4 * 9 + 2)
    assert record.guard.describe() == "float32[N x 1 x 28 x 28] (conv2d) -> float32[N x 2 x 14 x 14] (conv2d)"
    payload = torch.load(io.BytesIO(built.data), weights_only=True)
    assert json.loads(payload["record"])["guard"] == {
        "slot_kind": "conv2d",
        "shape": [2, 14, 14],
        "dtype": "float32",
        "read_kind": "conv2d",
        "read_shape": [1, 28, 28],
    }
    loaded, state = load_artifact(built.data, sha256=record.sha256)
    assert loaded.slot == WIDTH_SLOT
    module = karn.build("BP057", loaded.slot, loaded.parameters)
    module.load_state_dict(state)  # strict: it fits the module the catalog builds for the width slot


def test_a_width_slot_has_its_own_artifact_key_and_a_residual_key_is_what_it_always_was() -> None:
    parameters = {"width": 4.0}
    written = SlotShape(WIDTH_SLOT.kind, WIDTH_SLOT.shape)
    residual_key = artifact_key("karn", "BP057", parameters, written)
    before_width_slots = json.dumps(
        {"catalog": "karn", "blueprint": "BP057", "parameters": parameters, "kind": "conv2d", "shape": [2, 14, 14]},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert residual_key == hashlib.sha256(before_width_slots.encode()).hexdigest()
    width_key = artifact_key("karn", "BP057", parameters, WIDTH_SLOT)
    other_read = SlotShape(WIDTH_SLOT.kind, WIDTH_SLOT.shape, read_kind=WIDTH_SLOT.read_kind, read_shape=(3, 28, 28))
    assert len({residual_key, width_key, artifact_key("karn", "BP057", parameters, other_read)}) == 3


def test_a_record_without_a_read_side_is_a_residual_one(karn: KarnCatalog) -> None:
    """Artifacts stored before width slots existed have no read side in their guard: they stay valid, as residual."""
    record = Tezzeret().build(karn, "BP009", CONV_SLOT, {}).record
    data = record.to_json()
    assert data["guard"] == {"slot_kind": "conv2d", "shape": [16, 14, 14], "dtype": "float32"}
    parsed = ArtifactRecord.from_json(data, sha256=record.sha256, size_bytes=record.size_bytes)
    assert parsed.slot == CONV_SLOT and not parsed.guard.is_width
    assert parsed.guard.fits(CONV_SLOT) and not parsed.guard.fits(WIDTH_SLOT)


def test_a_width_module_that_returns_the_read_shape_is_refused() -> None:
    error = refused(OneWidthBlueprint(lambda slot: nn.Linear(12, 12)), VECTOR_WIDTH_SLOT)
    assert error.check == "shape" and error.numbers == {"expected": "[2, 8]", "got": "[2, 12]"}
    assert "differs from the written activation's [2, 8] (it read [2, 12])" in str(error)


def test_a_width_module_must_start_near_zero_and_count_its_parameters() -> None:
    def zero_width(slot: SlotShape) -> nn.Module:
        layer = nn.Linear(slot.read_shape[0], slot.shape[0])
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    built = Tezzeret().build(OneWidthBlueprint(zero_width), "FK001", VECTOR_WIDTH_SLOT, {})  # type: ignore[arg-type]
    assert built.record.parameter_count == 12 * 8 + 8 and built.record.slot == VECTOR_WIDTH_SLOT
    error = refused(OneWidthBlueprint(lambda slot: nn.Linear(12, 8)), VECTOR_WIDTH_SLOT)
    assert error.check == "initial_output"
    error = refused(OneWidthBlueprint(zero_width, estimate=7), VECTOR_WIDTH_SLOT)
    assert error.check == "parameter_count" and error.numbers == {"estimate": 7, "actual": 104}


def test_a_blueprint_of_the_other_growth_mode_is_a_value_error(karn: KarnCatalog) -> None:
    with pytest.raises(ValueError, match="BP057 is a width blueprint"):
        Tezzeret().build(karn, "BP057", CONV_SLOT, {})
    with pytest.raises(ValueError, match="BP009 is a residual blueprint"):
        Tezzeret().build(karn, "BP009", WIDTH_SLOT, {})
