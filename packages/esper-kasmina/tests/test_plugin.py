"""Kasmina through the registry: built by its factory from the run's services, passing the executor conformance
suite, and publishing its telemetry on the bus."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from esper_core.leyline import CommandStatus, SeedOperation, TelemetryPacket
from esper_core.oona import MemoryBackend, Oona
from esper_core.plugins import Registry
from esper_core.signing import SigningKey
from esper_core.testing.conformance import SeedExecutorConformance
from esper_kasmina.executor import KasminaSeedExecutor

from kasmina_rig import HOSTS, CatalogStore, SmallCatalog


@pytest.fixture
def registry() -> Registry:
    return Registry.create(env={})


def build(registry: Registry, **overrides: str) -> tuple[KasminaSeedExecutor, SigningKey, Oona]:
    key = SigningKey.generate()
    bus = Oona(MemoryBackend(), signing_key=key)
    bus.subscribe([bus.streams.telemetry, bus.streams.emergency])  # before Kasmina publishes on them
    config = registry.load_config(env={}, overrides=[f"{k}={v}" for k, v in overrides.items()])
    catalog = SmallCatalog()
    kasmina = registry.build(
        registry.seed_executor("kasmina"),
        config=config,
        signing_key=key,
        bus=bus,
        store=CatalogStore(catalog),
        catalogs=[catalog],
    )
    factory, points, shape, _ = HOSTS["conv"]
    model = factory()
    inputs = torch.randn(8, *shape)
    kasmina.attach(model, points, inputs[:2])
    kasmina.set_probe(inputs, torch.randint(0, 5, (8,)), torch.nn.functional.cross_entropy)
    return kasmina, key, bus


def test_the_registry_builds_kasmina_with_its_configured_options(registry: Registry) -> None:
    kasmina, _, _ = build(registry, **{"kasmina.embargo_epochs": "5", "urza.allowed_tiers": '["SAFE", "HIGH_RISK"]'})
    assert isinstance(kasmina, KasminaSeedExecutor)
    assert kasmina.options.embargo_epochs == 5
    assert kasmina.allowed_tiers == ["SAFE", "HIGH_RISK"]


def test_the_factory_names_what_is_missing(registry: Registry) -> None:
    with pytest.raises(ValueError, match="artifact store"):
        registry.build(registry.seed_executor("kasmina"), signing_key=SigningKey.generate())
    with pytest.raises(ValueError, match="signing key"):
        registry.build(registry.seed_executor("kasmina"), store=object())


def test_transitions_and_rejections_are_published_on_the_bus(registry: Registry) -> None:
    from esper_core.leyline import AdaptationCommand, CommandSeedOperation, CommandType
    from esper_core.signing import CommandSigner

    kasmina, key, bus = build(registry)
    command = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="features.5",
        seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id="BP901"),
    )
    assert kasmina.apply(CommandSigner(key).sign(command)).status == CommandStatus.COMMAND_STATUS_APPLIED
    kasmina.apply(command)  # a replay
    packets: list[Any] = [m.payload for m in bus.poll([bus.streams.telemetry, bus.streams.emergency])]
    events = [(event.name, packet.source_subsystem) for packet in packets for event in packet.events]
    assert ("seed_transition", "kasmina") in events and ("command_rejected", "kasmina") in events
    assert all(isinstance(packet, TelemetryPacket) for packet in packets)
    assert kasmina.drain_telemetry() == []


class TestKasminaConforms(SeedExecutorConformance):
    @pytest.fixture
    def executor(self, registry: Registry) -> KasminaSeedExecutor:
        return build(registry)[0]
