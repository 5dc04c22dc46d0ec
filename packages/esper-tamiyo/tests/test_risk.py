"""Every risk rule fires on its condition, holds back growth (never a cull), is recorded with its reason, and
conservative mode comes and goes on its own."""

from __future__ import annotations

from typing import Any

import pytest

from esper_core.leyline import AdaptationCommand, CommandType, HardwareContext, SeedOperation, lifecycle
from esper_tamiyo.commands import noop, seed_command
from esper_tamiyo.options import RiskOptions
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import blueprint, packet, slot

BLUEPRINTS = {
    "BP101": blueprint("BP101", risk=0.2),
    "BP150": blueprint("BP150", risk=0.65),
    "BP190": blueprint("BP190", risk=0.9),
    "BP199": blueprint("BP199", risk=0.3, quarantine=True),
}


def germinate(blueprint_id: str = "BP101") -> AdaptationCommand:
    return seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "proposed", policy="test", blueprint_id=blueprint_id)


def calm_state(**metrics: Any) -> Any:
    return packet(5, 0.5, [slot("a")], **metrics)


@pytest.mark.parametrize(
    ("rule", "action", "command", "state", "engine"),
    [
        ("bp_quarantine", "pause", germinate("BP190"), calm_state(), {}),
        ("bp_quarantine", "pause", germinate("BP199"), calm_state(), {}),
        ("blueprint_risk", "downgrade", germinate("BP150"), calm_state(), {}),
        ("loss_spike", "pause", germinate(), calm_state(loss_delta=0.2), {}),  # 0.3 -> 0.5: +67%
        ("loss_warning", "downgrade", germinate(), calm_state(loss_delta=0.06), {}),  # +13.6%
        ("hook_budget", "pause", germinate(), calm_state(hook_latency_ms=5_000.0), {}),
        ("step_latency_high", "pause", germinate(), calm_state(step_latency_ms=20_000.0), {}),
        ("kasmina_apply_slow", "downgrade", germinate(), calm_state(kasmina_apply_ms=400.0), {}),
        ("isolation_violation", "pause", germinate(), calm_state(isolation_violations=1), {}),
        ("loss_volatility", "downgrade", germinate(), calm_state(loss_volatility=0.9), {}),
        ("gradient_variance", "downgrade", germinate(), calm_state(gradient_variance=1e7), {}),
        ("gradient_conflict", "downgrade", germinate(), calm_state(gradient_conflict_rate=0.8), {}),
        ("optimizer_hint", "downgrade", germinate(), calm_state(learning_rate=0.0, loss_delta=0.01), {}),
        ("timeout_inference", "pause", germinate(), calm_state(), {"last_decision_over_budget": True}),
    ],
)
def test_each_rule_holds_back_growth_and_says_why(
    rule: str, action: str, command: AdaptationCommand, state: Any, engine: dict[str, Any]
) -> None:
    risk = RiskEngine()
    for name, value in engine.items():
        setattr(risk, name, value)
    review = risk.review(command, state, BLUEPRINTS)
    assert review.fired[0].rule == rule
    assert review.fired[0].action == action
    assert review.command.command_type == CommandType.COMMAND_NOOP
    assert review.command.decision.risk_reason == rule
    assert rule in review.command.decision.risk_rules_fired
    assert review.command.decision.rationale.startswith("held back germinate")
    assert review.conservative == (action == "pause")
    assert any(event.name == rule for event in review.events)


def test_policy_risk_scores_pause_or_downgrade() -> None:
    for score, rule in ((0.99, "policy_risk_critical"), (0.9, "policy_risk_elevated")):
        proposal = germinate()
        proposal.decision.risk_score = score
        review = RiskEngine().review(proposal, calm_state(), BLUEPRINTS)
        assert review.fired[0].rule == rule


def test_device_pressure_rules() -> None:
    state = calm_state()
    state.hardware.CopyFrom(HardwareContext(device_type="cuda", total_memory_gb=16, available_memory_gb=0.1))
    assert RiskEngine().review(germinate(), state, BLUEPRINTS).fired[0].rule == "device_pressure_high"
    cpu = calm_state()
    cpu.hardware.cpu_utilization_percent = 99.0
    assert RiskEngine().review(germinate(), cpu, BLUEPRINTS).fired == []  # off by default: training saturates a CPU
    strict = RiskEngine(RiskOptions(max_cpu_percent=95.0))
    assert strict.review(germinate(), cpu, BLUEPRINTS).fired[0].rule == "cpu_pressure_high"


def test_culls_and_waiting_always_pass() -> None:
    risk = RiskEngine()
    risk.conservative = True
    spiking = packet(5, 0.9, [slot("a", lifecycle.BLENDING)], loss_delta=0.5)
    cull = seed_command(SeedOperation.SEED_OP_CULL, "a", "it hurts", policy="test")
    assert risk.review(cull, spiking, BLUEPRINTS).command.seed_operation.operation == SeedOperation.SEED_OP_CULL
    start = seed_command(SeedOperation.SEED_OP_START_TRAINING, "a", "go", policy="test")
    assert risk.review(start, spiking, BLUEPRINTS).command.command_type == CommandType.COMMAND_SEED
    assert risk.review(noop("wait"), spiking, BLUEPRINTS).command.command_type == CommandType.COMMAND_NOOP


def test_conservative_mode_is_entered_and_left_automatically() -> None:
    risk = RiskEngine(RiskOptions(conservative_exit_after=2))
    entering = risk.review(germinate(), calm_state(isolation_violations=1), BLUEPRINTS)
    assert entering.conservative and any(e.name == "conservative_mode_entered" for e in entering.events)
    held = risk.review(germinate(), calm_state(), BLUEPRINTS)
    assert held.command.command_type == CommandType.COMMAND_NOOP
    assert held.command.decision.risk_reason == "conservative_mode" and held.conservative
    leaving = risk.review(germinate(), calm_state(), BLUEPRINTS)
    assert not leaving.conservative
    assert any(e.name == "conservative_mode_exited" for e in leaving.events)
    assert risk.review(germinate(), calm_state(), BLUEPRINTS).command.command_type == CommandType.COMMAND_SEED


def test_a_calm_proposal_passes_unchanged_with_the_reason_policy() -> None:
    review = RiskEngine().review(germinate(), calm_state(), BLUEPRINTS)
    assert review.fired == [] and review.command.decision.risk_reason == "policy"
    assert review.command.seed_operation.blueprint_id == "BP101"


def test_its_state_survives_a_checkpoint() -> None:
    risk = RiskEngine()
    risk.review(germinate(), calm_state(isolation_violations=2), BLUEPRINTS)
    restored = RiskEngine()
    restored.load_state_dict(risk.state_dict())
    assert restored.conservative and restored.state_dict() == risk.state_dict()


def test_only_new_isolation_violations_pause_growth() -> None:
    risk = RiskEngine(RiskOptions(conservative_exit_after=1))
    assert [f.rule for f in risk.review(germinate(), calm_state(isolation_violations=1), BLUEPRINTS).fired] == [
        "isolation_violation"
    ]
    for _ in range(3):  # the run's counter never goes down; the same old violation must not hold growth forever
        review = risk.review(germinate(), calm_state(isolation_violations=1), BLUEPRINTS)
    assert review.command.command_type == CommandType.COMMAND_SEED
    again = risk.review(germinate(), calm_state(isolation_violations=3), BLUEPRINTS)
    assert [f.rule for f in again.fired] == ["isolation_violation"] and "2 new" in again.fired[0].detail
