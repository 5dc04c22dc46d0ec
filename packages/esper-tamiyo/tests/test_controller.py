"""The Tamiyo controller: policy, risk engine and signing in one decision; field reports from outcomes; policy
updates between decisions; built through the registry by name."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.errors import UnknownComponentError
from esper_core.leyline import (
    AdaptationCommand,
    BlueprintTier,
    CommandResult,
    CommandStatus,
    CommandType,
    FieldReport,
    PolicyUpdate,
    SeedOperation,
    SystemStatePacket,
    lifecycle,
)
from esper_core.oona import MemoryBackend, Oona
from esper_core.plugins import Registry
from esper_core.signing import CommandSigner, CommandVerifier, SigningKey
from esper_core.testing.conformance import ControllerConformance
from esper_tamiyo.commands import noop, seed_command
from esper_tamiyo.controller import TamiyoController, offered_blueprints
from esper_tamiyo.options import TamiyoOptions

from tamiyo_scenarios import CONV, VECTOR, CountingCatalog, blueprint, packet, slot

BLUEPRINTS = [blueprint("BP101", kinds=[CONV, VECTOR, 3])]


class Scripted:
    """A policy that returns what it is told (or raises, or dawdles)."""

    name = "scripted"

    def __init__(self, command: AdaptationCommand | Exception, delay: float = 0.0) -> None:
        self.command, self.delay = command, delay
        self.updates: list[PolicyUpdate] = []

    def decide(self, state: SystemStatePacket, blueprints: Sequence[object]) -> AdaptationCommand:
        time.sleep(self.delay)
        if isinstance(self.command, Exception):
            raise self.command
        result = AdaptationCommand()
        result.CopyFrom(self.command)
        return result

    def load_update(self, update: PolicyUpdate) -> Any:
        self.updates.append(update)

        @attrs.frozen
        class Verdict:
            accepted: bool = update.policy_name == "scripted"
            reason: str = "" if update.policy_name == "scripted" else "wrong_policy"
            detail: str = update.policy_name

        return Verdict()


def controller(policy: Any, **kwargs: Any) -> tuple[TamiyoController, SigningKey]:
    key = SigningKey.generate()
    return TamiyoController(policy=policy, blueprints=BLUEPRINTS, signer=CommandSigner(key), **kwargs), key


def test_a_decision_is_reviewed_signed_and_explained() -> None:
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "plateau", policy="scripted", blueprint_id="BP101")
    tamiyo, key = controller(Scripted(proposal))
    command = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert CommandVerifier(key).verify(command).accepted
    assert command.command_type == CommandType.COMMAND_SEED
    assert (command.training_run_id, command.decision_epoch, command.decision_step) == ("run", 4, 400)
    assert command.issued_by == "tamiyo" and command.security.nonce == command.command_id
    decision = command.decision
    assert (decision.policy_name, decision.risk_reason, decision.rationale) == ("scripted", "policy", "plateau")
    assert decision.decision_latency_ms >= 0


def test_a_failing_policy_yields_a_signed_no_op_with_the_reason() -> None:
    tamiyo, key = controller(Scripted(RuntimeError("bad weights")))
    command = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert command.command_type == CommandType.COMMAND_NOOP
    assert "bad weights" in command.decision.rationale
    assert CommandVerifier(key).verify(command).accepted


def test_a_slow_decision_is_reported_and_makes_the_next_one_cautious() -> None:
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "plateau", policy="scripted", blueprint_id="BP101")
    bus = Oona(MemoryBackend(), signing_key=SigningKey.generate())
    bus.subscribe([bus.streams.telemetry, bus.streams.emergency])  # before anything is published on them
    tamiyo, _ = controller(Scripted(proposal, delay=0.03), options=TamiyoOptions(decision_budget_ms=5), bus=bus)
    first = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    second = tamiyo.decide(packet(5, 0.5, [slot("a")]))
    assert first.command_type == CommandType.COMMAND_SEED
    assert second.command_type == CommandType.COMMAND_NOOP and second.decision.risk_reason == "timeout_inference"
    names = [
        e.name for m in bus.poll([bus.streams.telemetry, bus.streams.emergency], count=50) for e in m.payload.events
    ]  # type: ignore[attr-defined]
    assert "decision_over_budget" in names and "conservative_mode_entered" in names


def test_outcomes_become_field_reports_on_the_bus_and_in_the_log(tmp_path: Path) -> None:
    from esper_tamiyo.reports import FieldReports

    options = TamiyoOptions(observation_window=1)
    bus = Oona(MemoryBackend(), signing_key=SigningKey.generate())
    bus.subscribe([bus.streams.normal])  # before anything is published on it
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "plateau", policy="scripted", blueprint_id="BP101")
    tamiyo, _ = controller(
        Scripted(proposal), options=options, bus=bus, reports=FieldReports(options, tmp_path / "reports.log", "run")
    )
    state = packet(4, 0.5, [slot("a")])
    command = tamiyo.decide(state)
    assert tamiyo.observe(state, command, CommandResult(status=CommandStatus.COMMAND_STATUS_APPLIED)) == []
    later = packet(5, 0.45, [slot("a", lifecycle.GERMINATED, seed_id="")])
    waiting = noop("wait", "scripted")
    (report,) = tamiyo.observe(later, waiting, CommandResult(status=CommandStatus.COMMAND_STATUS_NOOP))
    assert report.command_id == command.command_id
    published = [m.payload for m in bus.poll([bus.streams.normal], count=10)]
    assert any(isinstance(p, FieldReport) and p.report_id == report.report_id for p in published)
    assert [r.report_id for r in tamiyo.reports.all_reports()] == [report.report_id]


def test_policy_updates_arrive_between_decisions() -> None:
    key = SigningKey.generate()
    bus = Oona(MemoryBackend(), signing_key=key)
    bus.subscribe([bus.streams.telemetry])  # before anything is published on it
    policy = Scripted(noop("wait", "scripted"))
    tamiyo, _ = controller(policy, bus=bus)
    bus.publish(PolicyUpdate(policy_id="u1", policy_name="scripted"))
    bus.publish(PolicyUpdate(policy_id="u2", policy_name="other"))
    tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert [u.policy_id for u in policy.updates] == ["u1", "u2"]
    names = [e.name for m in bus.poll([bus.streams.telemetry], count=10) for e in m.payload.events]  # type: ignore[attr-defined]
    assert "policy_update_applied" in names and "policy_update_rejected" in names


def test_a_policy_without_weights_refuses_updates() -> None:
    from esper_tamiyo.policies.heuristic import HeuristicPolicy

    tamiyo, _ = controller(HeuristicPolicy())
    accepted, reason = tamiyo.apply_policy_update(PolicyUpdate(policy_name="heuristic"))
    assert not accepted and "does not take weight updates" in reason


def test_only_allowed_tiers_are_offered() -> None:
    safe, experimental = blueprint("BP001"), blueprint("BP036", tier=BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL)
    stressor = blueprint("BP043", tier=BlueprintTier.BLUEPRINT_TIER_HIGH_RISK, quarantine=True)
    every = [safe, experimental, stressor]
    assert offered_blueprints(every, ["SAFE"]) == [safe]
    assert offered_blueprints(every, ["SAFE", "EXPERIMENTAL"]) == [safe, experimental]
    assert offered_blueprints(every, ["SAFE", "HIGH_RISK"]) == [safe, stressor]


def test_its_state_survives_a_checkpoint() -> None:
    from esper_tamiyo.policies.heuristic import HeuristicPolicy

    tamiyo, _ = controller(HeuristicPolicy())
    for epoch, loss in enumerate([1.0, 0.9, 0.8]):
        tamiyo.decide(packet(epoch, loss, [slot("a")], isolation_violations=int(epoch == 2)))
    restored, _ = controller(HeuristicPolicy())
    restored.load_state_dict(tamiyo.state_dict())
    assert restored.state_dict() == tamiyo.state_dict() and restored.risk.conservative


def built(registry: Registry, tmp_path: Path, policy: str = "heuristic") -> tuple[Any, SigningKey]:
    key = SigningKey.generate()
    config = registry.load_config(
        env={},
        overrides=[
            f"tamiyo.policy={policy}",
            "tamiyo.heuristic.warmup_epochs=0",
            "tamiyo.heuristic.plateau_window=1",
            "tamiyo.heuristic.plateau_threshold=1.0",
        ],
    )
    built_controller = registry.build(
        registry.controller("tamiyo"),
        config=config,
        signing_key=key,
        run_dir=tmp_path,
        catalogs=[CountingCatalog(BLUEPRINTS)],
    )
    return built_controller, key


def test_the_registry_builds_tamiyo_with_the_configured_policy(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    tamiyo, _ = built(registry, tmp_path, "fixed-schedule")
    assert tamiyo.policy.name == "fixed-schedule"
    assert tamiyo.reports.log_path == tmp_path / "tamiyo" / "field_reports.log"
    with pytest.raises(UnknownComponentError, match="heuristc"):
        built(registry, tmp_path, "heuristc")


class TestTamiyoConforms(ControllerConformance):
    @pytest.fixture
    def registry(self) -> Registry:
        return Registry.create(env={})

    @pytest.fixture
    def pair(self, registry: Registry, tmp_path: Path) -> tuple[Any, SigningKey]:
        return built(registry, tmp_path)

    @pytest.fixture
    def controller(self, pair: tuple[Any, SigningKey]) -> Any:
        return pair[0]

    @pytest.fixture
    def controller_key(self, pair: tuple[Any, SigningKey]) -> SigningKey:
        return pair[1]

    @pytest.fixture
    def blueprints(self) -> list[Any]:
        return BLUEPRINTS


def test_a_failing_policy_is_named_with_its_exception_in_the_command_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from esper_core.leyline.annotations import POLICY_ERROR

    tamiyo, _ = controller(Scripted(ZeroDivisionError("division by zero")))
    with caplog.at_level("ERROR", logger="esper_tamiyo.controller"):
        command = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert command.annotations[POLICY_ERROR] == "policy 'scripted' failed: ZeroDivisionError: division by zero"
    assert "policy 'scripted' failed: ZeroDivisionError" in caplog.text


def test_every_command_names_the_blueprints_on_offer() -> None:
    from esper_core.leyline.annotations import OFFERED_BLUEPRINTS

    tamiyo, _ = controller(Scripted(noop("wait", "scripted")))
    command = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert json.loads(command.annotations[OFFERED_BLUEPRINTS]) == ["BP101"]


def test_the_followed_policy_store_swaps_versions_between_decisions_and_rolls_back(tmp_path: Path) -> None:
    import torch

    from esper_core.storage.policy_store import PolicyStore
    from esper_tamiyo.learned import LearnedPolicy

    trainer_side = LearnedPolicy()
    store = PolicyStore(tmp_path / "policies")
    live = LearnedPolicy()
    tamiyo, _ = controller(live, options=TamiyoOptions(policy_store=str(store.directory)))
    state = packet(4, 0.5, [slot("a")])
    assert tamiyo.decide(state).decision.policy_version.startswith("untrained-")  # an empty store: nothing to load

    def weights(scale: float) -> dict[str, torch.Tensor]:
        return {name: tensor * scale for name, tensor in trainer_side.network.state_dict().items()}

    store.publish("v1", trainer_side.export_update(policy_version="v1", state_dict=weights(1.0)), {"ok": True})
    assert tamiyo.decide(state).decision.policy_version == "v1"
    store.publish("v2", trainer_side.export_update(policy_version="v2", state_dict=weights(0.5)), {"ok": True})
    assert tamiyo.decide(state).decision.policy_version == "v2"
    assert tamiyo.decide(state).decision.policy_version == "v2"  # unchanged store: nothing reloaded
    store.rollback()  # v1 was issued before v2: only a rollback the store asks for may go back
    assert tamiyo.decide(state).decision.policy_version == "v1"
    assert live.verdicts == {"accepted": 3}
