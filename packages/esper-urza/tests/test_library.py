"""Urza: fetches from memory, disk or a build; SHA-256 on every load; queries; budgets; recovery; the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import esper_urza.tezzeret
from esper_core.errors import ConfigError, EsperError
from esper_core.leyline import BlueprintDescriptor, MessagePriority, SlotKind
from esper_core.plugins import Registry
from esper_core.protocols import ArtifactStore, BlueprintCatalog, SlotShape
from esper_core.storage import AppendOnlyLog, read_records
from esper_core.testing.conformance import ArtifactStoreConformance
from esper_urza.errors import ArtifactBuildError, ArtifactIntegrityError
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.options import UrzaOptions

CONV_SLOT = SlotShape(SlotKind.SLOT_KIND_CONV2D, (16, 14, 14))
VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))
SEQUENCE_SLOT = SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (6, 16))


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


@pytest.fixture
def library(tmp_path: Path, karn: KarnCatalog) -> Iterator[UrzaLibrary]:
    with UrzaLibrary(tmp_path / "urza", [karn]) as opened:
        yield opened


def reopen(library: UrzaLibrary, **options: Any) -> UrzaLibrary:
    library.close()
    catalogs = {catalog.name: catalog for catalog, _ in library._catalogs.values()}.values()
    return UrzaLibrary(library.root, catalogs, options=UrzaOptions(**options))


def artifact_files(library: UrzaLibrary) -> set[str]:
    return {path.relative_to(library.root).as_posix() for path in library.artifacts_dir.rglob("*") if path.is_file()}


def events(library: UrzaLibrary) -> list[Any]:
    return [event for packet in library.drain_telemetry() for event in packet.events]


class TestUrzaConformance(ArtifactStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ArtifactStore]:
        with UrzaLibrary(tmp_path / "urza", [KarnCatalog()]) as opened:
            yield opened

    @pytest.fixture
    def fetch_request(self) -> tuple[str, SlotShape, Mapping[str, float]]:
        return "BP009", CONV_SLOT, {"depth": 2.0}


# -- fetching -------------------------------------------------------------------------------------------------------
def test_a_fetch_is_built_then_served_from_memory_then_from_disk_after_a_restart(library: UrzaLibrary) -> None:
    built = library.fetch("BP009", CONV_SLOT, {})
    warm = library.fetch("BP009", CONV_SLOT, {"depth": 2.0})  # the default, spelled out: the same artifact
    assert (built.source, warm.source) == ("built", "memory")
    assert built.artifact_sha256 == warm.artifact_sha256
    assert isinstance(built.descriptor, BlueprintDescriptor) and built.descriptor.blueprint_id == "BP009"
    restarted = reopen(library)
    cold = restarted.fetch("BP009", CONV_SLOT, {})
    assert cold.source == "disk" and cold.artifact_sha256 == built.artifact_sha256
    assert restarted.fetch("BP009", CONV_SLOT, {}).source == "memory"
    restarted.close()


def test_every_fetch_is_a_new_module_with_the_artifacts_weights(library: UrzaLibrary) -> None:
    first = library.fetch("BP052", VECTOR_SLOT, {}).module
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)  # one slot trains its seed...
    second = library.fetch("BP052", VECTOR_SLOT, {}).module
    assert first is not second
    pointers = {p.data_ptr() for p in first.parameters()}
    assert not pointers & {p.data_ptr() for p in second.parameters()}
    assert float(second.fc2.weight.detach().abs().sum()) == 0.0  # ...and the next fetch still starts at zero
    assert second.training


def test_different_parameters_or_shapes_are_different_artifacts(library: UrzaLibrary) -> None:
    a = library.fetch("BP009", CONV_SLOT, {"depth": 1})
    b = library.fetch("BP009", CONV_SLOT, {"depth": 3})
    c = library.fetch("BP009", SlotShape(SlotKind.SLOT_KIND_CONV2D, (8, 14, 14)), {"depth": 1})
    assert len({a.artifact_sha256, b.artifact_sha256, c.artifact_sha256}) == 3
    assert all(fetched.source == "built" for fetched in (a, b, c))
    assert len(library.query(blueprint_id="BP009")) == 3


def test_protocol_errors(library: UrzaLibrary) -> None:
    with pytest.raises(KeyError, match="BP999"):
        library.fetch("BP999", CONV_SLOT, {})
    with pytest.raises(ValueError, match="depth"):
        library.fetch("BP009", CONV_SLOT, {"depth": 7})
    with pytest.raises(ValueError, match="does not grow in vector"):
        library.fetch("BP009", VECTOR_SLOT, {})
    assert library.query() == []


def test_a_build_failure_is_raised_reported_and_stores_nothing(library: UrzaLibrary) -> None:
    with pytest.raises(ArtifactBuildError) as caught:
        library.fetch("BP045", VECTOR_SLOT, {})
    assert isinstance(caught.value, EsperError) and caught.value.check == "finite"
    (event,) = events(library)
    assert event.name == "artifact_build_failed" and event.attributes["check"] == "finite"
    assert library.query() == [] and artifact_files(library) == set()
    assert library.metrics_snapshot()["urza.build.failures_total"] == 1


def test_the_lru_cache_holds_at_most_cache_size_artifacts(tmp_path: Path, karn: KarnCatalog) -> None:
    with UrzaLibrary(tmp_path, [karn], options=UrzaOptions(cache_size=1)) as library:
        library.fetch("BP052", VECTOR_SLOT, {})
        library.fetch("BP053", VECTOR_SLOT, {})
        assert library.fetch("BP052", VECTOR_SLOT, {}).source == "disk"
        assert library.fetch("BP052", VECTOR_SLOT, {}).source == "memory"
        assert library.metrics_snapshot()["urza.cache.evictions_total"] == 2


# -- width slots ----------------------------------------------------------------------------------------------------
WIDTH_SLOT = SlotShape(
    SlotKind.SLOT_KIND_CONV2D, (4, 7, 7), read_kind=SlotKind.SLOT_KIND_CONV2D, read_shape=(2, 14, 14)
)


def test_a_width_fetch_is_built_then_served_from_memory_then_from_disk(library: UrzaLibrary) -> None:
    built = library.fetch("BP057", WIDTH_SLOT, {"width": 3})
    assert built.source == "built" and built.descriptor.blueprint_id == "BP057"
    assert library.fetch("BP057", WIDTH_SLOT, {"width": 3}).source == "memory"
    (record,) = library.query()
    assert record.slot == WIDTH_SLOT and record.guard.read_shape == (2, 14, 14)
    restarted = reopen(library)
    cold = restarted.fetch("BP057", WIDTH_SLOT, {"width": 3})
    assert cold.source == "disk" and cold.artifact_sha256 == built.artifact_sha256
    assert cold.module(torch.randn(2, 2, 14, 14)).shape == (2, 4, 7, 7)
    restarted.close()


def test_width_slots_reading_different_activations_are_different_artifacts(library: UrzaLibrary) -> None:
    other = SlotShape(WIDTH_SLOT.kind, WIDTH_SLOT.shape, read_kind=WIDTH_SLOT.read_kind, read_shape=(3, 14, 14))
    first, second = library.fetch("BP057", WIDTH_SLOT, {}), library.fetch("BP057", other, {})
    assert (first.source, second.source) == ("built", "built")
    assert first.artifact_sha256 != second.artifact_sha256 and len(library.query(blueprint_id="BP057")) == 2


def test_a_blueprint_of_the_other_growth_mode_is_refused_before_anything_is_built(library: UrzaLibrary) -> None:
    with pytest.raises(ValueError, match="BP009 is a residual blueprint"):
        library.fetch(
            "BP009", SlotShape(WIDTH_SLOT.kind, (16, 14, 14), read_kind=WIDTH_SLOT.kind, read_shape=(8, 28, 28)), {}
        )
    with pytest.raises(ValueError, match="BP057 is a width blueprint"):
        library.fetch("BP057", CONV_SLOT, {})
    assert library.query() == []
    assert [d.blueprint_id for d in library.blueprints(slot=WIDTH_SLOT)] == ["BP057"]
    assert "BP057" not in {d.blueprint_id for d in library.blueprints(slot=CONV_SLOT)}


def test_a_width_artifact_loaded_for_another_slot_is_a_mismatch(library: UrzaLibrary, karn: KarnCatalog) -> None:
    """The loader checks the artifact's guard against the slot asked for, read side included."""
    _, record = library.fetch_artifact("BP057", WIDTH_SLOT, {})
    library.clear_cache()
    written_only = SlotShape(WIDTH_SLOT.kind, WIDTH_SLOT.shape)
    assert library._loader.load(record.key, karn, written_only) is None
    (event,) = events(library)
    assert event.name == "artifact_mismatch" and library.get(record.key) is None


def test_a_width_artifact_opened_for_another_slot_is_refused(tmp_path: Path, karn: KarnCatalog) -> None:
    with UrzaLibrary(tmp_path, [karn]) as writer:
        _, record = writer.fetch_artifact("BP057", WIDTH_SLOT, {})
    with UrzaLibrary(tmp_path, [karn]) as reader:
        written_only = SlotShape(WIDTH_SLOT.kind, WIDTH_SLOT.shape)
        with pytest.raises(ArtifactIntegrityError, match=r"built for conv2d\[2, 14, 14\] -> conv2d\[4, 7, 7\], not"):
            reader.open_artifact(record.key, record.sha256, slot=written_only)
        opened = reader.open_artifact(record.key, record.sha256, slot=WIDTH_SLOT)
        assert opened.source == "disk" and opened.module(torch.randn(1, 2, 14, 14)).shape == (1, 4, 7, 7)


def test_a_lost_index_is_rebuilt_with_width_artifacts_under_their_keys(library: UrzaLibrary) -> None:
    width = library.fetch("BP057", WIDTH_SLOT, {})
    library.fetch("BP009", CONV_SLOT, {})
    library.close()
    (library.root / "catalog.sqlite").unlink()
    restarted = reopen(library)
    assert restarted.recovery.rows_rebuilt == 2 and restarted.recovery.artifacts_dropped == ()
    again = restarted.fetch("BP057", WIDTH_SLOT, {})
    assert again.source == "disk" and again.artifact_sha256 == width.artifact_sha256
    restarted.close()


# -- integrity ------------------------------------------------------------------------------------------------------
def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_artifact_is_evicted_and_reported_never_loaded(
    library: UrzaLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = library.fetch("BP009", CONV_SLOT, {})
    (record,) = library.query()
    corrupt(library.root / record.path)
    restarted = reopen(library, verify_on_open=False)  # so that the fetch meets the corrupt file
    loads: list[str] = []
    real_load = esper_urza.tezzeret.load_artifact

    def spy(data: bytes, **kwargs: Any) -> Any:
        loads.append(kwargs["sha256"])
        return real_load(data, **kwargs)

    monkeypatch.setattr(esper_urza.tezzeret, "load_artifact", spy)
    fetched = restarted.fetch("BP009", CONV_SLOT, {})
    assert fetched.source == "built" and fetched.artifact_sha256 != original.artifact_sha256
    assert loads == []  # the corrupt bytes never reached torch.load
    (event,) = [event for event in events(restarted) if event.name.startswith("artifact_")]
    assert event.name == "artifact_corrupt" and event.attributes["sha256"] == original.artifact_sha256
    assert restarted.metrics_snapshot()["urza.integrity.failures_total"] == 1
    assert artifact_files(restarted) == {restarted.query()[0].path}  # the corrupt file is gone
    assert restarted.fetch("BP009", CONV_SLOT, {}).source == "memory"
    restarted.close()


def test_opening_drops_rows_whose_file_is_missing_or_altered(library: UrzaLibrary) -> None:
    library.fetch("BP009", CONV_SLOT, {})
    library.fetch("BP052", VECTOR_SLOT, {})
    by_id = {record.blueprint_id: record for record in library.query()}
    corrupt(library.root / by_id["BP009"].path)
    (library.root / by_id["BP052"].path).unlink()
    restarted = reopen(library)
    assert dict(restarted.recovery.rows_dropped) == {by_id["BP009"].key: "corrupt", by_id["BP052"].key: "missing"}
    assert restarted.query() == [] and artifact_files(restarted) == set()
    assert restarted.fetch("BP052", VECTOR_SLOT, {}).source == "built"
    restarted.close()


def test_verify_rehashes_every_file(library: UrzaLibrary) -> None:
    library.fetch("BP009", CONV_SLOT, {})
    assert library.verify() == []
    (record,) = library.query()
    corrupt(library.root / record.path)
    assert library.verify() == [(record.key, "corrupt")]


class Evolving:
    """A catalog whose blueprint changes architecture between releases (``width``)."""

    name = "evolving"

    def __init__(self, width: int) -> None:
        self.width = width

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        return [BlueprintDescriptor(blueprint_id="EV001", name="evolving", slot_kinds=[SlotKind.SLOT_KIND_VECTOR])]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        out = nn.Linear(self.width, slot.shape[0])
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        return nn.Sequential(nn.Linear(slot.shape[0], self.width), out)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return sum(p.numel() for p in self.build(blueprint_id, slot, parameters).parameters())


def test_an_artifact_that_no_longer_fits_its_blueprint_is_rebuilt(tmp_path: Path) -> None:
    with UrzaLibrary(tmp_path, [Evolving(4)]) as library:
        library.fetch("EV001", VECTOR_SLOT, {})
    with UrzaLibrary(tmp_path, [Evolving(6)]) as library:
        fetched = library.fetch("EV001", VECTOR_SLOT, {})
        assert fetched.source == "built" and fetched.module[0].out_features == 6
        assert [event.name for event in events(library)] == ["artifact_stale"]


# -- queries and extras ---------------------------------------------------------------------------------------------
def test_queries_by_tier_risk_and_slot_kind(library: UrzaLibrary) -> None:
    library.fetch("BP009", CONV_SLOT, {})  # SAFE 0.3 conv2d
    library.fetch("BP052", VECTOR_SLOT, {})  # SAFE 0.3 vector
    library.fetch("BP023", SEQUENCE_SLOT, {})  # SAFE 0.5 sequence
    library.fetch("BP039", VECTOR_SLOT, {})  # EXPERIMENTAL 0.8 vector
    library.fetch("BP046", VECTOR_SLOT, {"delay_ms": 5})  # HIGH_RISK 1.0 vector

    def ids(**filters: Any) -> list[str]:
        return [record.blueprint_id for record in library.query(**filters)]

    assert ids(tier="SAFE") == ["BP009", "BP023", "BP052"]
    assert ids(tier=["EXPERIMENTAL", "HIGH_RISK"]) == ["BP039", "BP046"]
    assert ids(slot_kind="vector") == ["BP039", "BP046", "BP052"]
    assert ids(slot_kind=SlotKind.SLOT_KIND_SEQUENCE) == ["BP023"]
    assert ids(max_risk=0.5, slot_kind="vector") == ["BP052"]
    assert ids(min_risk=0.8) == ["BP039", "BP046"]
    (record,) = library.query(blueprint_id="BP046")
    assert record.quarantine_only and record.approval_required and record.parameters == {"delay_ms": 5.0}
    assert record.guard.describe() == "float32[N x 12] (vector)"
    safe_sequence = library.blueprints(tiers=["SAFE"], slot_kind=SlotKind.SLOT_KIND_SEQUENCE)
    assert {"BP022", "BP023", "BP031", "BP035", "BP055"} <= {d.blueprint_id for d in safe_sequence}


def test_extras_leave_room_for_safety_data_sheets(library: UrzaLibrary) -> None:
    library.fetch("BP052", VECTOR_SLOT, {})
    (record,) = library.query()
    updated = library.update_extras(record.key, {"bsds": {"hazard_band": "LOW", "risk_score": 0.3}})
    assert updated.extras["bsds"]["hazard_band"] == "LOW"
    restarted = reopen(library)
    assert restarted.get(record.key).extras == {"bsds": {"hazard_band": "LOW", "risk_score": 0.3}}  # type: ignore[union-attr]
    assert restarted.evict(record.key) and restarted.get(record.key) is None
    assert artifact_files(restarted) == set()
    restarted.close()


def test_two_catalogs_may_not_offer_one_blueprint_id(tmp_path: Path, karn: KarnCatalog) -> None:
    with pytest.raises(EsperError, match=r"BP002.*'karn' and 'karn'"):
        UrzaLibrary(tmp_path, [karn, KarnCatalog()])


# -- latency budget and telemetry -----------------------------------------------------------------------------------
def test_fetches_over_budget_are_counted_and_reported(tmp_path: Path, karn: KarnCatalog) -> None:
    # a build budget no build can miss and a fetch budget no fetch can meet: the test does not depend on how fast
    # this machine builds
    options = UrzaOptions(fetch_budget_ms=1e-6, build_budget_ms=1e9)
    with UrzaLibrary(tmp_path, [karn], options=options) as library:
        library.fetch("BP052", VECTOR_SLOT, {})  # built: within the build budget
        library.fetch("BP052", VECTOR_SLOT, {})  # memory: over a budget nothing can meet
        (packet,) = library.drain_telemetry()
        (event,) = packet.events
        assert event.name == "timeout_urza" and event.attributes["source"] == "memory"
        assert event.attributes["blueprint_id"] == "BP052" and float(event.attributes["latency_ms"]) > 0
        assert packet.priority == MessagePriority.MESSAGE_PRIORITY_HIGH  # a latency budget is operational
        metrics = {metric.name: metric.value for metric in packet.metrics}
        assert metrics["urza.fetch.over_budget_total"] == 1 and metrics["urza.fetch.total"] == 2
        assert metrics["urza.fetch.memory.p50_ms"] > 0
        assert library.drain_telemetry() == []  # drained


def test_fetch_latency_is_recorded_per_source(library: UrzaLibrary) -> None:
    for _ in range(3):
        fetched = library.fetch("BP052", VECTOR_SLOT, {})
        assert fetched.fetch_latency_ms > 0
    snapshot = library.metrics_snapshot()
    assert snapshot["urza.fetch.built_total"] == 1 and snapshot["urza.fetch.memory_total"] == 2
    assert 0 < snapshot["urza.fetch.memory.p50_ms"] <= snapshot["urza.fetch.memory.p95_ms"]


# -- recovery (deterministic; the kill test is in test_crash.py) ----------------------------------------------------
def journal(library: UrzaLibrary, *entries: dict[str, Any]) -> None:
    with AppendOnlyLog(library.journal_path) as log:
        for entry in entries:
            log.append(json.dumps(entry).encode())


def test_opening_rolls_back_a_save_that_never_reached_its_row(library: UrzaLibrary) -> None:
    relative = "artifacts/karn/BP009/interrupted.pt"
    (library.root / relative).parent.mkdir(parents=True)
    (library.root / relative).write_bytes(b"half an artifact")
    (library.root / "artifacts/karn/BP009/.x.pt.123.tmp").write_bytes(b"a temporary file")
    library.close()
    journal(library, {"op": "intent", "tx": "t1", "key": "k" * 64, "path": relative, "sha256": "0" * 64})
    restarted = reopen(library)
    assert restarted.recovery.rolled_back == 1 and restarted.recovery.orphans_removed == 1
    assert artifact_files(restarted) == set()
    assert read_records(restarted.journal_path) == []
    assert [event.name for event in events(restarted)] == ["journal_replayed"]
    restarted.close()


def test_opening_keeps_a_save_that_reached_its_row(library: UrzaLibrary) -> None:
    fetched = library.fetch("BP052", VECTOR_SLOT, {})
    (record,) = library.query()
    library.close()
    journal(library, {"op": "intent", "tx": "t2", "key": record.key, "path": record.path, "sha256": record.sha256})
    restarted = reopen(library)
    assert restarted.recovery.rolled_forward == 1 and not restarted.recovery.repaired
    assert restarted.fetch("BP052", VECTOR_SLOT, {}).artifact_sha256 == fetched.artifact_sha256
    restarted.close()


def test_a_journal_entry_cannot_delete_files_outside_the_library(library: UrzaLibrary, tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    library.close()
    journal(library, {"op": "intent", "tx": "t3", "key": "k", "path": "../precious.txt", "sha256": "0" * 64})
    reopen(library).close()
    assert outside.read_text() == "keep me"


# -- through the registry -------------------------------------------------------------------------------------------
def test_the_registry_builds_karn_and_urza_from_their_entry_points(tmp_path: Path) -> None:
    registry = Registry.create()
    catalog = registry.build(registry.blueprint_catalog("karn"))
    assert isinstance(catalog, BlueprintCatalog) and catalog.name == "karn"
    config = registry.load_config(overrides=["urza.fetch_budget_ms=5"])
    store = registry.build(registry.artifact_store("urza"), config=config, run_dir=tmp_path)
    try:
        assert isinstance(store, UrzaLibrary) and isinstance(store, ArtifactStore)
        assert store.root == tmp_path / "urza" and store.options.fetch_budget_ms == 5.0
        assert store.fetch("BP002", VECTOR_SLOT, {}).source == "built"
    finally:
        store.close()


def test_the_store_uses_the_runs_catalogs_and_a_configured_root(tmp_path: Path) -> None:
    registry = Registry.create()
    config = registry.load_config(overrides=[f"urza.root={tmp_path / 'library'}"])
    store = registry.build(registry.artifact_store("urza"), config=config, catalogs=[Evolving(3)])
    try:
        assert store.root == tmp_path / "library"
        assert [d.blueprint_id for d in store.blueprints()] == ["EV001"]
    finally:
        store.close()


def test_the_store_without_a_directory_is_a_clear_error() -> None:
    registry = Registry.create()
    with pytest.raises(ConfigError, match=r"urza\.root"):
        registry.build(registry.artifact_store("urza"))


def test_a_closed_library_refuses_to_fetch(library: UrzaLibrary) -> None:
    library.close()
    library.close()
    with pytest.raises(EsperError, match="closed"):
        library.fetch("BP052", VECTOR_SLOT, {})
