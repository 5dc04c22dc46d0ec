"""The risk engine: ordered rules applied to every policy's proposal (PROTOTYPE-REFERENCE.md section 6.6, adapted to
Leyline's typed metrics).

A rule can *pause* (hold back growth and enter conservative mode) or *downgrade* (hold back growth this once). Growth
is any operation that increases a seed's influence on the host's output (germinate, graft, stabilize, evaluate,
fossilize); culls, the start of training (which leaves the host's output unchanged) and no-ops always pass. In
conservative mode every growth proposal is held back; the mode is left automatically after
``conservative_exit_after`` calm decision points (no rule fired, no decision over budget).

Rules, in evaluation order, with the reason each records:

=====================  ============================================================================  ==========
reason                 condition                                                                     action
=====================  ============================================================================  ==========
policy_risk_critical   the policy's own risk score >= ``policy_risk_pause``                          pause
policy_risk_elevated   ... >= ``policy_risk_downgrade``                                              downgrade
conservative_mode      conservative mode is on                                                       hold
timeout_inference      the previous decision took longer than its budget                             pause
bp_quarantine          the blueprint is quarantine-only, or its risk >= ``blueprint_risk_pause``      pause
blueprint_risk         blueprint risk >= ``blueprint_risk_downgrade``                                downgrade
loss_spike             validation loss rose by > ``loss_spike_pause`` of its previous value          pause
loss_warning           ... by > ``loss_spike_downgrade``                                             downgrade
hook_budget            Tolaria's decision hook over ``hook_budget_ms``                               pause
step_latency_high      the training step over ``step_budget_ms``                                     pause
kasmina_apply_slow     Kasmina's command application over ``apply_budget_ms``                        downgrade
isolation_violation    an isolation violation was recorded since the previous decision point          pause
loss_volatility        loss volatility > ``max_loss_volatility``                                     downgrade
gradient_variance      gradient variance > ``max_gradient_variance``                                 downgrade
gradient_conflict      gradient conflict rate > ``max_gradient_conflict_rate``                       downgrade
optimizer_hint         learning rate <= 0 while the loss rises                                       downgrade
device_pressure_high   free device memory < ``min_free_memory_gb``                                   pause
cpu_pressure_high      CPU use >= ``max_cpu_percent`` (off at 100)                                   downgrade
=====================  ============================================================================  ==========
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from esper_core.leyline import AdaptationCommand, BlueprintDescriptor, CommandType, SystemStatePacket, lifecycle
from esper_core.telemetry import CRITICAL, INFO, WARNING, Event
from esper_tamiyo.commands import GROWTH, noop
from esper_tamiyo.options import RiskOptions

PAUSE, DOWNGRADE = "pause", "downgrade"
#: The severity each rule's event carries (pauses of these kinds are operational: they route as HIGH priority).
SEVERITY = {"bp_quarantine": CRITICAL, "policy_risk_critical": CRITICAL}


@attrs.frozen
class Firing:
    rule: str
    action: str
    detail: str


@attrs.frozen
class Review:
    """The command after review, every rule that fired, and the events to publish."""

    command: AdaptationCommand
    fired: list[Firing]
    events: list[Event]
    conservative: bool


class RiskEngine:
    def __init__(self, options: RiskOptions | None = None) -> None:
        self.options = options or RiskOptions()
        self.conservative = False
        self.calm = 0
        self.last_decision_over_budget = False
        self.fired_total: dict[str, int] = {}
        #: The run's isolation violations so far (counters only grow), to see which ones are new.
        self.violations_seen = 0

    def _rules(
        self, command: AdaptationCommand, state: SystemStatePacket, blueprint: BlueprintDescriptor | None
    ) -> list[Firing]:
        o = self.options
        m = state.metrics
        fired: list[Firing] = []

        def fire(rule: str, action: str, detail: str) -> None:
            fired.append(Firing(rule, action, detail))

        risk = command.decision.risk_score if command.decision.HasField("risk_score") else None
        if risk is not None and risk >= o.policy_risk_pause:
            fire("policy_risk_critical", PAUSE, f"policy risk {risk:.3f} >= {o.policy_risk_pause}")
        elif risk is not None and risk >= o.policy_risk_downgrade:
            fire("policy_risk_elevated", DOWNGRADE, f"policy risk {risk:.3f} >= {o.policy_risk_downgrade}")
        if self.last_decision_over_budget:
            fire("timeout_inference", PAUSE, "the previous decision overran its latency budget")
        if blueprint is not None:
            if blueprint.quarantine_only or blueprint.risk >= o.blueprint_risk_pause:
                fire(
                    "bp_quarantine",
                    PAUSE,
                    f"{blueprint.blueprint_id} risk {blueprint.risk:.2f}"
                    f"{' (quarantine-only)' if blueprint.quarantine_only else ''}",
                )
            elif blueprint.risk >= o.blueprint_risk_downgrade:
                fire("blueprint_risk", DOWNGRADE, f"{blueprint.blueprint_id} risk {blueprint.risk:.2f}")
        if m.HasField("loss_delta") and m.HasField("val_loss"):
            previous = m.val_loss - m.loss_delta
            if previous > 0:
                rise = m.loss_delta / previous
                if rise > o.loss_spike_pause:
                    fire("loss_spike", PAUSE, f"validation loss rose {rise:.1%} (> {o.loss_spike_pause:.0%})")
                elif rise > o.loss_spike_downgrade:
                    fire("loss_warning", DOWNGRADE, f"validation loss rose {rise:.1%} (> {o.loss_spike_downgrade:.0%})")
        if m.HasField("hook_latency_ms") and m.hook_latency_ms > o.hook_budget_ms:
            fire("hook_budget", PAUSE, f"decision hook {m.hook_latency_ms:.0f} ms > {o.hook_budget_ms:.0f} ms")
        if m.HasField("step_latency_ms") and m.step_latency_ms > o.step_budget_ms:
            fire("step_latency_high", PAUSE, f"training step {m.step_latency_ms:.0f} ms > {o.step_budget_ms:.0f} ms")
        if m.HasField("kasmina_apply_ms") and m.kasmina_apply_ms > o.apply_budget_ms:
            fire("kasmina_apply_slow", DOWNGRADE, f"command application {m.kasmina_apply_ms:.0f} ms")
        total = m.isolation_violations or sum(seed.isolation_violations for seed in state.seeds)
        new, self.violations_seen = total - self.violations_seen, max(total, self.violations_seen)
        if new > 0:
            fire("isolation_violation", PAUSE, f"{new} new isolation violation(s) since the previous decision point")
        if m.HasField("loss_volatility") and m.loss_volatility > o.max_loss_volatility:
            fire("loss_volatility", DOWNGRADE, f"loss volatility {m.loss_volatility:.3g}")
        if m.HasField("gradient_variance") and m.gradient_variance > o.max_gradient_variance:
            fire("gradient_variance", DOWNGRADE, f"gradient variance {m.gradient_variance:.3g}")
        if m.HasField("gradient_conflict_rate") and m.gradient_conflict_rate > o.max_gradient_conflict_rate:
            fire("gradient_conflict", DOWNGRADE, f"gradient conflict rate {m.gradient_conflict_rate:.2f}")
        if m.HasField("learning_rate") and m.learning_rate <= 0 and m.HasField("loss_delta") and m.loss_delta > 0:
            fire("optimizer_hint", DOWNGRADE, "learning rate is 0 while the loss rises")
        hardware = state.hardware
        known_memory = state.HasField("hardware") and hardware.total_memory_gb > 0
        if known_memory and hardware.available_memory_gb < o.min_free_memory_gb:
            fire("device_pressure_high", PAUSE, f"{hardware.available_memory_gb:.2f} GB free")
        if hardware.HasField("cpu_utilization_percent") and hardware.cpu_utilization_percent >= o.max_cpu_percent:
            fire("cpu_pressure_high", DOWNGRADE, f"CPU at {hardware.cpu_utilization_percent:.0f}%")
        return fired

    def review(
        self, proposal: AdaptationCommand, state: SystemStatePacket, blueprints: Mapping[str, BlueprintDescriptor]
    ) -> Review:
        growth = proposal.command_type == CommandType.COMMAND_SEED and proposal.seed_operation.operation in GROWTH
        blueprint = blueprints.get(proposal.seed_operation.blueprint_id) if growth else None
        fired = self._rules(proposal, state, blueprint)
        events: list[Event] = []
        entering = any(f.action == PAUSE for f in fired) and not self.conservative
        if entering:
            self.conservative = True
            cause = next(f for f in fired if f.action == PAUSE)
            events.append(
                Event("conservative_mode_entered", f"{cause.rule}: {cause.detail}", WARNING, {"reason": cause.rule})
            )
        held = growth and (self.conservative or bool(fired))
        if self.conservative and growth and not fired:
            fired.append(Firing("conservative_mode", "hold", "growth waits while conservative mode is on"))
        for firing in fired:
            self.fired_total[firing.rule] = self.fired_total.get(firing.rule, 0) + 1
            level = SEVERITY.get(firing.rule, WARNING if firing.action != "hold" else INFO)
            events.append(
                Event(firing.rule, firing.detail, level, {"action": firing.action, "held": str(held).lower()})
            )
        calm = not any(f.rule != "conservative_mode" for f in fired)
        self.calm = self.calm + 1 if calm else 0
        if self.conservative and not entering and self.calm >= self.options.conservative_exit_after:
            self.conservative = False
            events.append(Event("conservative_mode_exited", f"{self.calm} calm decision points", INFO))
        command = proposal
        if held:
            reason = fired[0]
            command = noop("", proposal.decision.policy_name)
            command.decision.CopyFrom(proposal.decision)
            command.decision.rationale = (
                f"held back {lifecycle.command_name(proposal)}: {reason.rule} ({reason.detail}); "
                f"the policy proposed: {proposal.decision.rationale}"
            )
        command.decision.risk_reason = fired[0].rule if held else "policy"
        command.decision.risk_rules_fired.extend(f.rule for f in fired)
        command.decision.conservative_mode = self.conservative
        return Review(command, fired, events, self.conservative)

    def state_dict(self) -> dict[str, Any]:
        return {
            "conservative": self.conservative,
            "calm": self.calm,
            "fired_total": dict(self.fired_total),
            "last_decision_over_budget": self.last_decision_over_budget,
            "violations_seen": self.violations_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.conservative = bool(state.get("conservative", False))
        self.calm = int(state.get("calm", 0))
        self.fired_total = dict(state.get("fired_total", {}))
        self.last_decision_over_budget = bool(state.get("last_decision_over_budget", False))
        self.violations_seen = int(state.get("violations_seen", 0))
