"""What the conformance suites cannot know: that each component does what its documentation says."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from esper_core.errors import ConfigError
from esper_core.leyline import (
    CommandType,
    MetricPoint,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TelemetryPacket,
    TrainingMetrics,
    lifecycle,
)
from esper_core.plugins import Registry
from esper_core.protocols import SlotShape

import esper_example_plugin.plugin
from esper_example_plugin.catalog import ExampleCatalog
from esper_example_plugin.policy import GreedyOptions, GreedyPolicy
from esper_example_plugin.sink import COLUMNS, CsvSink

BLUEPRINTS = list(ExampleCatalog().descriptors())


@pytest.fixture
def registry(esper_registry: Registry, register_plugin: Any) -> Registry:
    register_plugin(esper_example_plugin.plugin, name="example")
    return esper_registry


def slot(slot_id: str, stage: SeedLifecycleStage.ValueType = lifecycle.DORMANT, **fields: Any) -> SeedState:
    fields.setdefault("slot_kind", SlotKind.SLOT_KIND_VECTOR)
    fields.setdefault("slot_shape", [32])
    return SeedState(slot_id=slot_id, stage=stage, **fields)


def packet(epoch: int, *seeds: SeedState, total: int = 20) -> SystemStatePacket:
    return SystemStatePacket(current_epoch=epoch, metrics=TrainingMetrics(epoch=epoch, epochs_total=total), seeds=seeds)


def decide(state: SystemStatePacket, **options: Any) -> Any:
    return GreedyPolicy(GreedyOptions(**options)).decide(state, BLUEPRINTS)


# -- the policy -------------------------------------------------------------------------------------------------
def test_after_the_warm_up_it_germinates_in_the_most_sensitive_free_slot() -> None:
    state = packet(
        2,
        slot("a", host_gradient_norm=1.0, activation_rms=0.5),
        slot("b", host_gradient_norm=2.0, activation_rms=0.5),
        slot("c", host_gradient_norm=9.0, activation_rms=9.0, embargo_epochs_remaining=1),
        slot("d", host_gradient_norm=9.0, activation_rms=9.0, slot_kind=SlotKind.SLOT_KIND_SEQUENCE),
    )
    command = decide(state)
    assert command.command_type == CommandType.COMMAND_SEED and command.target_slot_id == "b"
    operation = command.seed_operation
    assert operation.operation == SeedOperation.SEED_OP_GERMINATE and operation.blueprint_id == "EX001"
    assert dict(operation.parameters) == {"gate_bias": 0.0, "reduction": 4.0}
    assert command.decision.policy_name == "example-greedy"
    assert command.decision.selected_slot_score == pytest.approx(1.0)
    assert "most sensitive free slot" in command.decision.rationale


@pytest.mark.parametrize(
    ("state", "options", "why"),
    [
        (packet(1, slot("a")), {}, "warming up (1/2 epochs)"),
        (packet(16, slot("a")), {}, "too late to grow: 4 epochs left"),
        (packet(5, slot("a"), slot("b", lifecycle.BLENDING, alpha_total_steps=30)), {}, "1 seed(s) in flight"),
        (packet(5, slot("a")), {"blueprint": "BP052"}, "blueprint BP052 is not offered to this run (offered: EX001)"),
        (packet(5, slot("a", slot_kind=SlotKind.SLOT_KIND_SEQUENCE)), {}, "no DORMANT, un-embargoed slot"),
    ],
)
def test_it_waits_and_says_why(state: SystemStatePacket, options: dict[str, Any], why: str) -> None:
    command = decide(state, **options)
    assert command.command_type == CommandType.COMMAND_NOOP
    assert why in command.decision.rationale


def test_it_finishes_the_latest_seed_first() -> None:
    state = packet(
        9,
        slot("a", lifecycle.GERMINATED),
        slot("b", lifecycle.BLENDING, alpha_steps=30, alpha_total_steps=30),
        slot("c", lifecycle.PROBATIONARY, stage_epochs=1, contribution=0.002),
    )
    assert decide(state, max_in_flight=3).seed_operation.operation == SeedOperation.SEED_OP_FOSSILIZE
    del state.seeds[2]
    assert decide(state, max_in_flight=3).seed_operation.operation == SeedOperation.SEED_OP_STABILIZE
    del state.seeds[1]
    assert decide(state, max_in_flight=3).seed_operation.operation == SeedOperation.SEED_OP_START_TRAINING


@pytest.mark.parametrize(
    ("seed", "operation"),
    [
        (slot("a", lifecycle.TRAINING, stage_epochs=0), None),
        (slot("a", lifecycle.TRAINING, stage_epochs=1), SeedOperation.SEED_OP_START_GRAFTING),
        (slot("a", lifecycle.BLENDING, alpha_steps=29, alpha_total_steps=30), None),
        (slot("a", lifecycle.SHADOWING, stage_epochs=0), None),
        (slot("a", lifecycle.SHADOWING, stage_epochs=1), SeedOperation.SEED_OP_EVALUATE),
        (slot("a", lifecycle.PROBATIONARY, stage_epochs=1, contribution=-0.001), None),
        (slot("a", lifecycle.PROBATIONARY, stage_epochs=1), None),
        (slot("a", lifecycle.PROBATIONARY, stage_epochs=1, contribution=0.0), SeedOperation.SEED_OP_FOSSILIZE),
        (slot("a", lifecycle.PROBATIONARY, stage_epochs=3, contribution=-0.001), SeedOperation.SEED_OP_CULL),
        (slot("a", lifecycle.BLENDING, alpha_total_steps=30, contribution=-0.02), SeedOperation.SEED_OP_CULL),
        (slot("a", lifecycle.TRAINING, stage_epochs=1, contribution=-0.005), SeedOperation.SEED_OP_START_GRAFTING),
    ],
)
def test_each_seed_advances_as_soon_as_its_stage_allows(seed: SeedState, operation: int | None) -> None:
    command = decide(packet(9, seed))
    if operation is None:
        assert command.command_type == CommandType.COMMAND_NOOP, command.decision.rationale
    else:
        assert command.seed_operation.operation == operation and command.target_slot_id == "a"
        assert command.decision.rationale


def test_the_worst_of_several_hurting_seeds_is_culled_first() -> None:
    state = packet(
        9,
        slot("a", lifecycle.SHADOWING, contribution=-0.02),
        slot("b", lifecycle.PROBATIONARY, stage_epochs=1, contribution=-0.5),
        slot("c", lifecycle.PROBATIONARY, stage_epochs=1, contribution=0.5),
    )
    command = decide(state, max_in_flight=3)
    assert command.seed_operation.operation == SeedOperation.SEED_OP_CULL and command.target_slot_id == "b"
    assert command.decision.rationale == "it hurts: contribution -0.5 < -0.01"


# -- the policy's configuration -----------------------------------------------------------------------------------
def only_example_catalog(registry: Registry, *overrides: str) -> Any:
    """A configuration offering only this plugin's catalog (Karn is not registered here)."""
    return registry.load_config(env={}, overrides=['urza.catalogs=["example"]', *overrides])


def test_a_blueprint_the_run_does_not_have_is_a_configuration_error(registry: Registry) -> None:
    config = only_example_catalog(registry, "tamiyo.example-greedy.blueprint=EX002")
    with pytest.raises(ConfigError, match=r"tamiyo\.example-greedy\.blueprint = 'EX002': no catalog .* offered: EX001"):
        registry.build(registry.policy("example-greedy"), config=config)


def test_a_blueprint_of_a_tier_the_run_does_not_allow_is_a_configuration_error(registry: Registry) -> None:
    config = only_example_catalog(registry, 'urza.allowed_tiers=["EXPERIMENTAL"]')
    with pytest.raises(ConfigError, match=r"its tier SAFE is not in urza\.allowed_tiers \['EXPERIMENTAL'\]"):
        registry.build(registry.policy("example-greedy"), config=config)


def test_the_policy_builds_from_a_valid_configuration(registry: Registry) -> None:
    config = only_example_catalog(registry, "tamiyo.example-greedy.warmup_epochs=4")
    policy = registry.build(registry.policy("example-greedy"), config=config)
    assert isinstance(policy, GreedyPolicy) and policy.options.warmup_epochs == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tamiyo.example-greedy.cull_below=0.01", "cull_below must be negative"),
        ("tamiyo.example-greedy.max_probation_epochs=0", "max_probation_epochs must be at least 1"),
        (
            "tamiyo.example-greedy.probation_epochs=4",
            r"max_probation_epochs \(3\) must be at least probation_epochs \(4\) \("
            r"tamiyo\.example-greedy\.max_probation_epochs: default; "
            r"tamiyo\.example-greedy\.probation_epochs: from --set tamiyo\.example-greedy\.probation_epochs=4\)",
        ),
        ("tamiyo.example-greedy.blend_schedul=linear", "blend_schedul"),
    ],
)
def test_bad_options_name_the_key(registry: Registry, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.load_config(env={}, overrides=[override])


# -- the catalog --------------------------------------------------------------------------------------------------
def test_the_catalog_checks_what_it_is_asked_to_build() -> None:
    catalog = ExampleCatalog()
    vector = SlotShape(SlotKind.SLOT_KIND_VECTOR, (32,))
    with pytest.raises(ValueError, match=r"EX001 \(gated_bottleneck\): parameter reduction = 9 is outside .*\[1, 8\]"):
        catalog.parameter_count("EX001", vector, {"reduction": 9})
    with pytest.raises(ValueError, match="has no parameter 'width'"):
        catalog.build("EX001", vector, {"width": 3})
    with pytest.raises(ValueError, match=r"does not grow in sequence\[4, 8\] slots"):
        catalog.build("EX001", SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (4, 8)), {})
    with pytest.raises(KeyError, match="it has EX001"):
        catalog.parameter_count("BP001", vector, {})
    assert catalog.parameter_count("EX001", vector, {"reduction": 3.6}) == 3 * 32 * 8 + 8 + 2 * 32  # rounded to 4


def test_importing_the_plugin_imports_no_torch() -> None:
    code = "import sys, esper_example_plugin.plugin; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- the sink -----------------------------------------------------------------------------------------------------
def metrics_packet(epoch: int, **values: float) -> TelemetryPacket:
    packet = TelemetryPacket(source_subsystem="tolaria", epoch=epoch, global_step=10 * epoch)
    packet.timestamp.FromSeconds(1_700_000_000 + epoch)
    packet.metrics.extend(MetricPoint(name=name.replace("_", "."), value=value) for name, value in values.items())
    return packet


def test_the_sink_writes_one_row_per_metric_and_appends_on_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "telemetry.csv"
    sink = CsvSink(path)
    sink.emit(metrics_packet(1, validation_loss=0.5, validation_accuracy=0.75))
    sink.emit(TelemetryPacket(source_subsystem="tamiyo"))  # no metrics: no row
    sink.flush()
    assert len(path.read_text().splitlines()) == 3  # flushed through to the file
    sink.close()
    again = CsvSink(path)
    again.emit(metrics_packet(2, validation_loss=0.25))
    again.close()
    again.close()
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(COLUMNS)
    assert [(row["epoch"], row["metric"], float(row["value"])) for row in rows] == [
        ("1", "validation.loss", 0.5),
        ("1", "validation.accuracy", 0.75),
        ("2", "validation.loss", 0.25),
    ]
    assert rows[0]["timestamp"] == "2023-11-14T22:13:21Z" and rows[0]["source"] == "tolaria"
    with pytest.raises(ValueError, match="is closed"):
        again.emit(metrics_packet(3, loss=1.0))


def test_the_sink_lives_in_the_run_directory_or_at_an_absolute_path(registry: Registry, tmp_path: Path) -> None:
    spec = registry.telemetry_sink("example-csv")
    sink = registry.build(spec, run_dir=tmp_path)
    assert sink.path == tmp_path / "telemetry.csv"
    sink.close()
    with pytest.raises(ConfigError, match=r"nissa\.example-csv\.path = 'telemetry\.csv' is relative"):
        registry.build(spec)
    config = registry.load_config(env={}, overrides=[f"nissa.example-csv.path={tmp_path / 'elsewhere.csv'}"])
    sink = registry.build(spec, config=config)
    assert sink.path == tmp_path / "elsewhere.csv"
    sink.close()
