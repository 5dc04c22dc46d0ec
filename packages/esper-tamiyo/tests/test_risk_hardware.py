"""The risk engine's hardware rules on what Tolaria's probe now measures: a hot GPU pauses growth like low free
memory does, and the CPU rule stays off by default even on a machine that training keeps fully busy."""

from __future__ import annotations

from typing import Any

import pytest

from esper_core.config import load_config
from esper_core.errors import ConfigError
from esper_core.leyline import CommandType, HardwareContext, SeedOperation
from esper_tamiyo.commands import seed_command
from esper_tamiyo.options import RiskOptions
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import blueprint, packet, slot

BLUEPRINTS = {"BP101": blueprint("BP101", risk=0.2)}


def germinate() -> Any:
    return seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "proposed", policy="test", blueprint_id="BP101")


def state(**hardware: Any) -> Any:
    built = packet(5, 0.5, [slot("a")])
    built.hardware.CopyFrom(HardwareContext(device_type="cuda", total_memory_gb=80, available_memory_gb=40, **hardware))
    return built


def test_a_gpu_at_the_temperature_limit_pauses_growth() -> None:
    review = RiskEngine().review(germinate(), state(temperature_celsius=90.0), BLUEPRINTS)
    assert [(f.rule, f.action) for f in review.fired] == [("device_pressure_high", "pause")]
    assert "GPU at 90 °C" in review.fired[0].detail
    assert review.command.command_type == CommandType.COMMAND_NOOP
    assert review.conservative


@pytest.mark.parametrize("hardware", [{"temperature_celsius": 89.9}, {}])
def test_a_cooler_gpu_or_an_unmeasured_temperature_passes(hardware: dict[str, float]) -> None:
    review = RiskEngine().review(germinate(), state(**hardware), BLUEPRINTS)
    assert review.fired == []
    assert review.command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE


def test_the_temperature_limit_is_an_option_and_both_pressures_make_one_firing() -> None:
    cool_limit = RiskEngine(RiskOptions(max_device_temperature_celsius=70.0))
    assert cool_limit.review(germinate(), state(temperature_celsius=75.0), BLUEPRINTS).fired[0].rule == (
        "device_pressure_high"
    )
    both = state(temperature_celsius=95.0)
    both.hardware.available_memory_gb = 0.1
    fired = RiskEngine().review(germinate(), both, BLUEPRINTS).fired
    assert len(fired) == 1
    assert "0.10 GB free" in fired[0].detail and "95 °C" in fired[0].detail


@pytest.mark.parametrize("busy", [99.0, 100.0])
def test_the_cpu_rule_is_off_by_default_even_on_a_fully_busy_machine(busy: float) -> None:
    assert RiskEngine().review(germinate(), state(cpu_utilization_percent=busy), BLUEPRINTS).fired == []


def test_the_cpu_rule_fires_at_or_above_a_limit_below_100() -> None:
    strict = RiskEngine(RiskOptions(max_cpu_percent=95.0))
    assert strict.review(germinate(), state(cpu_utilization_percent=94.0), BLUEPRINTS).fired == []
    fired = strict.review(germinate(), state(cpu_utilization_percent=95.0), BLUEPRINTS).fired
    assert [(f.rule, f.action) for f in fired] == [("cpu_pressure_high", "downgrade")]


@pytest.mark.parametrize("value", ["100.5", "0", "-3"])
def test_a_cpu_limit_outside_0_to_100_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="max_cpu_percent"):
        load_config(sections=[RiskOptions], text=f"[tamiyo.risk]\nmax_cpu_percent = {value}\n", env={})


def test_the_defaults() -> None:
    options = RiskOptions()
    assert options.max_cpu_percent == 100.0
    assert options.max_device_temperature_celsius == 90.0
