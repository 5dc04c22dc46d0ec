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
bp_quarantine          the blueprint is quarantine-only, measured QUARANTINE, or its risk >=           pause
                       ``blueprint_risk_pause``
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
device_pressure_high   free device memory < ``min_free_memory_gb``, or the GPU's temperature >=      pause
                       ``max_device_temperature_celsius`` (when Tolaria measured it)
cpu_pressure_high      host CPU use >= ``max_cpu_percent``; 100, the default, turns the rule off     downgrade
=====================  ============================================================================  ==========

**Blueprint risk: measured first.** With a :class:`esper_core.safety.SafetySheetSource` (the run's artifact store,
which asks Urabrask), a growth proposal's blueprint is judged by its safety data sheet at the target slot: the
measured risk score, and QUARANTINE handling as quarantine. Only where there is no sheet does the catalog's declared
``risk`` decide. Either way the command says which (``DecisionMetadata.blueprint_risk_source``, ``blueprint_risk``)
and so does the detail of a rule that fires on it. A catalog's ``quarantine_only`` is always honoured: measuring can
make a blueprint stricter, never looser than its author asked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    CommandType,
    HandlingClass,
    SystemStatePacket,
    lifecycle,
)
from esper_core.protocols import SlotShape
from esper_core.safety import SafetySheetSource
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
class BlueprintRisk:
    """The risk a growth proposal's blueprint is judged by: measured (a sheet) or declared (the catalog's word)."""

    value: float
    source: str  # "measured" or "declared"
    quarantined: bool
    hazards: tuple[str, ...] = ()

    def describe(self, blueprint_id: str) -> str:
        measured = f"; hazards {', '.join(self.hazards)}" if self.hazards else ""
        return f"{blueprint_id} {self.source} risk {self.value:.2f}{measured}"


@attrs.frozen
class Review:
    """The command after review, every rule that fired, and the events to publish."""

    command: AdaptationCommand
    fired: list[Firing]
    events: list[Event]
    conservative: bool


class RiskEngine:
    def __init__(self, options: RiskOptions | None = None, *, sheets: SafetySheetSource | None = None) -> None:
        self.options = options or RiskOptions()
        #: Where measured blueprint risk comes from (None: declared risk only).
        self.sheets = sheets
        #: Blueprints measured QUARANTINE at a slot of this run: the controller stops offering them to its policy.
        self.quarantined: set[str] = set()
        #: Milliseconds the last review spent getting sheets (rating on first use included): not the policy's time,
        #: so the controller leaves it out of the decision's latency budget.
        self.last_rating_ms = 0.0
        self.conservative = False
        self.calm = 0
        self.last_decision_over_budget = False
        self.fired_total: dict[str, int] = {}
        #: The run's isolation violations so far (counters only grow), to see which ones are new.
        self.violations_seen = 0

    def blueprint_risk(
        self, command: AdaptationCommand, state: SystemStatePacket, blueprint: BlueprintDescriptor
    ) -> BlueprintRisk:
        """The measured risk of ``blueprint`` at the command's target slot when a sheet exists, else the declared."""
        target = next((seed for seed in state.seeds if seed.slot_id == command.target_slot_id), None)
        sheet = None
        if self.sheets is not None and target is not None and target.slot_shape:
            started = time.perf_counter()
            sheet = self.sheets.safety_sheet(blueprint.blueprint_id, SlotShape.of(target))
            self.last_rating_ms += (time.perf_counter() - started) * 1000.0
        if sheet is None:
            return BlueprintRisk(float(blueprint.risk), "declared", quarantined=False)
        quarantined = sheet.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE
        if quarantined:
            self.quarantined.add(blueprint.blueprint_id)
        return BlueprintRisk(float(sheet.risk_score), "measured", quarantined, tuple(sorted(sheet.hazards)))

    def _rules(
        self, command: AdaptationCommand, state: SystemStatePacket, blueprint: BlueprintRisk | None, blueprint_id: str
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
            if blueprint.quarantined or blueprint.value >= o.blueprint_risk_pause:
                fire("bp_quarantine", PAUSE, blueprint.describe(blueprint_id))
            elif blueprint.value >= o.blueprint_risk_downgrade:
                fire("blueprint_risk", DOWNGRADE, blueprint.describe(blueprint_id))
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
        pressure = []
        known_memory = state.HasField("hardware") and hardware.total_memory_gb > 0
        if known_memory and hardware.available_memory_gb < o.min_free_memory_gb:
            pressure.append(f"{hardware.available_memory_gb:.2f} GB free")
        hot, limit = hardware.temperature_celsius, o.max_device_temperature_celsius
        if hardware.HasField("temperature_celsius") and hot >= limit:
            pressure.append(f"GPU at {hot:.0f} °C (>= {limit:g} °C)")
        if pressure:
            fire("device_pressure_high", PAUSE, "; ".join(pressure))
        cpu_rule_on = o.max_cpu_percent < 100.0  # 100 turns it off (see RiskOptions)
        busy = hardware.HasField("cpu_utilization_percent") and hardware.cpu_utilization_percent >= o.max_cpu_percent
        if cpu_rule_on and busy:
            fire("cpu_pressure_high", DOWNGRADE, f"CPU at {hardware.cpu_utilization_percent:.0f}%")
        return fired

    def review(
        self, proposal: AdaptationCommand, state: SystemStatePacket, blueprints: Mapping[str, BlueprintDescriptor]
    ) -> Review:
        self.last_rating_ms = 0.0
        growth = proposal.command_type == CommandType.COMMAND_SEED and proposal.seed_operation.operation in GROWTH
        blueprint_id = proposal.seed_operation.blueprint_id
        descriptor = blueprints.get(blueprint_id) if growth else None
        risk = None
        if descriptor is not None:
            risk = self.blueprint_risk(proposal, state, descriptor)
            if descriptor.quarantine_only:  # the author's word can only make it stricter
                risk = attrs.evolve(risk, quarantined=True, hazards=(*risk.hazards, "quarantine-only"))
        fired = self._rules(proposal, state, risk, blueprint_id)
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
        if risk is not None:
            command.decision.blueprint_risk_source = risk.source
            command.decision.blueprint_risk = risk.value
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
            "quarantined": sorted(self.quarantined),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.conservative = bool(state.get("conservative", False))
        self.calm = int(state.get("calm", 0))
        self.fired_total = dict(state.get("fired_total", {}))
        self.last_decision_over_budget = bool(state.get("last_decision_over_budget", False))
        self.violations_seen = int(state.get("violations_seen", 0))
        self.quarantined = set(state.get("quarantined", ()))
