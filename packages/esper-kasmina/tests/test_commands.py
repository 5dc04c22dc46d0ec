"""Commands: verified first (signature, nonce, freshness), then checked for legality and gates. A command that
fails any of that changes nothing, and the result says why with a reason code."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from esper_core.leyline import (
    AdaptationCommand,
    CircuitBreakerState,
    CommandCircuitBreaker,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    SecurityRejectionReason,
    SeedLifecycleStage,
    SeedOperation,
)
from esper_core.signing import CommandSigner, SigningKey
from esper_core.testing.clock import FakeClock

from kasmina_rig import Rig

REJECTED = SecurityRejectionReason


def germinate(slot: str = "1", blueprint: str = "BP901", **parameters: float) -> AdaptationCommand:
    return AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id=slot,
        seed_operation=CommandSeedOperation(
            operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id=blueprint, parameters=parameters
        ),
    )


def snapshot(rig: Rig) -> tuple[object, ...]:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in rig.optimizer.param_groups]
    return tuple(rig.kasmina.export_seed_states()), str(groups)


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    made = rig_factory("vector")
    made.decide()
    return made


def test_an_unsigned_command_is_refused(rig: Rig) -> None:
    before = snapshot(rig)
    result = rig.kasmina.apply(germinate())
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
    assert result.security_reason == REJECTED.SECURITY_REJECTION_MISSING_SIGNATURE
    assert snapshot(rig) == before


def test_a_replayed_command_is_refused(rig: Rig) -> None:
    command = rig.signer.sign(germinate())
    assert rig.kasmina.apply(command).status == CommandStatus.COMMAND_STATUS_APPLIED
    rig.kasmina.apply(AdaptationCommand(command_type=CommandType.COMMAND_SEED))  # unrelated traffic in between
    before = snapshot(rig)
    replay = rig.kasmina.apply(command)
    assert replay.security_reason == REJECTED.SECURITY_REJECTION_NONCE_REPLAYED
    assert snapshot(rig) == before


def test_stale_and_future_dated_commands_are_refused(rig: Rig) -> None:
    clock = FakeClock(rig.kasmina.verifier._clock())
    for offset, reason in (
        (-3600.0, REJECTED.SECURITY_REJECTION_STALE),
        (3600.0, REJECTED.SECURITY_REJECTION_ISSUED_IN_FUTURE),
    ):
        clock.now = rig.kasmina.verifier._clock() + offset
        command = CommandSigner(rig.signer.key, clock=clock).sign(germinate())
        before = snapshot(rig)
        result = rig.kasmina.apply(command)
        assert (result.status, result.security_reason) == (CommandStatus.COMMAND_STATUS_REJECTED_SECURITY, reason)
        assert snapshot(rig) == before


def test_a_command_signed_with_another_secret_or_altered_is_refused(rig: Rig) -> None:
    foreign = CommandSigner(SigningKey.generate()).sign(germinate())
    assert rig.kasmina.apply(foreign).security_reason == REJECTED.SECURITY_REJECTION_INVALID_SIGNATURE
    altered = rig.signer.sign(germinate())
    altered.seed_operation.blueprint_id = "BP990"
    assert rig.kasmina.apply(altered).security_reason == REJECTED.SECURITY_REJECTION_INVALID_SIGNATURE
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_DORMANT


def test_rejections_are_reported_as_telemetry(rig: Rig) -> None:
    rig.kasmina.drain_telemetry()
    rig.kasmina.apply(germinate())
    (packet,) = rig.kasmina.drain_telemetry()
    event = next(e for e in packet.events if e.name == "command_rejected")
    assert event.attributes["reason"] == "SECURITY_REJECTION_MISSING_SIGNATURE"


@pytest.mark.parametrize(
    ("command", "check", "detail"),
    [
        (germinate(blueprint="BP404"), "blueprint_known", "no installed catalog offers 'BP404'"),
        (germinate(hidden=500), "parameter_bounds", "hidden in [1, 64]"),
        (germinate(width=3), "parameter_bounds", "unknown parameter 'width'"),
        (germinate(blueprint="BP990"), "tier_allowed", "tier HIGH_RISK"),
    ],
)
def test_germination_failing_its_gate_is_refused_and_the_slot_stays_dormant(
    rig: Rig, command: AdaptationCommand, check: str, detail: str
) -> None:
    before = snapshot(rig)
    result = rig.kasmina.apply(rig.signer.sign(command))
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    failure = next(gate for gate in result.gates if not gate.passed)
    assert (failure.gate, failure.check) == (1, check) and detail in failure.detail
    assert "G0_SANITY" in result.detail
    assert snapshot(rig) == before


def test_a_seed_that_would_blow_the_parameter_budget_is_refused(rig_factory: Callable[..., Rig]) -> None:
    from kasmina_rig import lenient

    rig = rig_factory("vector", options=lenient(max_seed_parameter_fraction=0.1))
    rig.decide()
    result = rig.kasmina.apply(rig.signer.sign(germinate(hidden=64)))
    budget = next(gate for gate in result.gates if gate.check == "parameter_budget")
    assert not budget.passed and budget.measured > budget.threshold


def test_an_unknown_slot_is_illegal(rig: Rig) -> None:
    result = rig.kasmina.apply(rig.signer.sign(germinate(slot="nowhere")))
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
    assert "the slots are: 1, 3" in result.detail


def test_waiting_and_unsupported_commands(rig: Rig) -> None:
    for kind, status in (
        (CommandType.COMMAND_NOOP, CommandStatus.COMMAND_STATUS_NOOP),
        (CommandType.COMMAND_PAUSE, CommandStatus.COMMAND_STATUS_NOOP),
        (CommandType.COMMAND_OPTIMIZER, CommandStatus.COMMAND_STATUS_UNSUPPORTED),
        (CommandType.COMMAND_ROLLBACK, CommandStatus.COMMAND_STATUS_UNSUPPORTED),
    ):
        assert rig.kasmina.apply(rig.signer.sign(AdaptationCommand(command_type=kind))).status == status


def test_values_from_a_newer_leyline_are_refused_with_a_result_not_an_exception(rig: Rig) -> None:
    """A remote controller on a newer Leyline may send an operation or command type this Kasmina does not know."""
    before = snapshot(rig)
    unknown_operation = germinate()
    unknown_operation.seed_operation.operation = 77  # type: ignore[assignment]
    result = rig.kasmina.apply(rig.signer.sign(unknown_operation))
    assert result.status == CommandStatus.COMMAND_STATUS_UNSUPPORTED and "UNKNOWN(77)" in result.detail
    unknown_type = rig.kasmina.apply(rig.signer.sign(AdaptationCommand(command_type=55)))  # type: ignore[arg-type]
    assert unknown_type.status == CommandStatus.COMMAND_STATUS_UNSUPPORTED and "UNKNOWN(55)" in unknown_type.detail
    assert snapshot(rig) == before


def test_an_open_fetch_breaker_refuses_germination_until_closed(rig: Rig) -> None:
    breaker = AdaptationCommand(
        command_type=CommandType.COMMAND_CIRCUIT_BREAKER,
        circuit_breaker=CommandCircuitBreaker(desired_state=CircuitBreakerState.CIRCUIT_STATE_OPEN, rationale="drill"),
    )
    assert rig.kasmina.apply(rig.signer.sign(breaker)).status == CommandStatus.COMMAND_STATUS_APPLIED
    refused = rig.kasmina.apply(rig.signer.sign(germinate()))
    assert refused.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    assert next(g for g in refused.gates if not g.passed).check == "artifact_fetch"
    breaker.circuit_breaker.desired_state = CircuitBreakerState.CIRCUIT_STATE_CLOSED
    rig.kasmina.apply(rig.signer.sign(breaker))
    assert rig.kasmina.apply(rig.signer.sign(germinate())).status == CommandStatus.COMMAND_STATUS_APPLIED


UNUSABLE_RATES = [math.nan, math.inf, -math.inf, 0.0, -0.01]


@pytest.mark.parametrize("rate", UNUSABLE_RATES)
def test_a_germination_with_an_unusable_learning_rate_is_illegal_and_changes_nothing(rig: Rig, rate: float) -> None:
    command = germinate()
    command.seed_operation.learning_rate = rate
    before = snapshot(rig)
    result = rig.kasmina.apply(rig.signer.sign(command))
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
    assert f"GERMINATE learning_rate must be a finite number above 0, got {rate}" in result.detail
    assert snapshot(rig) == before
    assert all(math.isfinite(group["lr"]) and group["lr"] > 0 for group in rig.optimizer.param_groups)


@pytest.mark.parametrize("rate", UNUSABLE_RATES)
def test_a_fine_tune_with_an_unusable_learning_rate_is_illegal_and_keeps_the_seeds_rate(rig: Rig, rate: float) -> None:
    assert rig.kasmina.apply(rig.signer.sign(germinate())).status == CommandStatus.COMMAND_STATUS_APPLIED
    fine_tune = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="1",
        seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_FINE_TUNE, learning_rate=rate),
    )
    before = snapshot(rig)
    result = rig.kasmina.apply(rig.signer.sign(fine_tune))
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
    assert f"FINE_TUNE learning_rate must be a finite number above 0, got {rate}" in result.detail
    assert snapshot(rig) == before
    assert all(math.isfinite(group["lr"]) and group["lr"] > 0 for group in rig.optimizer.param_groups)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_germination_parameters_that_are_not_finite_are_illegal(rig: Rig, value: float) -> None:
    before = snapshot(rig)
    result = rig.kasmina.apply(rig.signer.sign(germinate(hidden=value)))
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
    assert f"GERMINATE parameters must be finite numbers, got hidden = {value}" in result.detail
    assert snapshot(rig) == before
