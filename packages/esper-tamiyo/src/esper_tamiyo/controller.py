"""Tamiyo, the controller: state packet in, one signed command out, and the judged outcome of every decision.

``decide(state)``: apply any policy update waiting on the bus or newly live in the followed policy store (between
decisions, so a swap is atomic), ask the policy, pass the proposal through the risk engine, fill the decision
metadata, sign (a fresh command id as nonce, the issue time), and publish a telemetry packet. A policy that raises
yields a signed no-op with the reason (and the ``tamiyo.policy_error`` annotation, which the record keeps); the
exception itself, traceback and all, is kept for Tolaria (``drain_plugin_failures``), which writes it down and
counts it (esper_core.plugin_failures). A decision slower than its budget is reported and makes the next one
conservative.

Blueprints the run quarantined (their build raised; the state packet lists them, see
esper_core.leyline.annotations) are neither offered to the policy nor proposed: a policy that proposes one anyway
gets a no-op in its place.

The policy decides on a copy of the packet whose slots list what Urabrask measured about the offered blueprints
(``SeedState.measured_blueprints``, from the sheets already known: :mod:`esper_tamiyo.measured`, never rated there).
The command says what was filled (``tamiyo.measured_blueprints``), so the recorded packet and command give back the
packet the policy saw (``esper_core.leyline.annotations.as_decided``).

``observe(state, command, result)``: open, advance and close field-report windows; return the reports written now
(they are also appended to the crash-safe log and published on the bus).

Tolaria calls ``decide`` under its own timeout; a decision that does not come back in time becomes a safe no-op on
Tolaria's side.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintTier,
    CommandResult,
    CommandType,
    FieldReport,
    PolicyUpdate,
    SeedOperation,
    SystemStatePacket,
    lifecycle,
)
from esper_core.leyline.annotations import (
    EMERGENCY,
    MEASURED_BLUEPRINTS,
    OFFERED_BLUEPRINTS,
    POLICY_ERROR,
    emergency_text,
    policy_error_text,
    quarantined_blueprints,
)
from esper_core.plugin_failures import Blame, PluginFailure, failure_of
from esper_core.protocols import TamiyoPolicy
from esper_core.signing import CommandSigner
from esper_core.storage.policy_store import PolicyStore, PolicyStoreError, StoreWatcher
from esper_core.telemetry import ERROR, INFO, WARNING, Event, Metric, build_telemetry_packet
from esper_tamiyo.commands import noop
from esper_tamiyo.measured import MeasuredSheets
from esper_tamiyo.options import TamiyoOptions
from esper_tamiyo.reports import FieldReports
from esper_tamiyo.risk import RiskEngine

logger = logging.getLogger(__name__)


def offered_blueprints(
    descriptors: Sequence[BlueprintDescriptor], allowed_tiers: Sequence[str]
) -> list[BlueprintDescriptor]:
    """The blueprints a run may germinate: allowed tiers only; quarantine-only ones only if HIGH_RISK is allowed."""
    offered = []
    for descriptor in descriptors:
        tier = BlueprintTier.Name(descriptor.tier).removeprefix("BLUEPRINT_TIER_")
        if tier in allowed_tiers and (not descriptor.quarantine_only or "HIGH_RISK" in allowed_tiers):
            offered.append(descriptor)
    return offered


class TamiyoController:
    def __init__(
        self,
        *,
        policy: TamiyoPolicy,
        blueprints: Sequence[BlueprintDescriptor],
        signer: CommandSigner,
        options: TamiyoOptions | None = None,
        risk: RiskEngine | None = None,
        reports: FieldReports | None = None,
        bus: Any = None,
        training_run_id: str = "",
    ) -> None:
        self.options = options or TamiyoOptions()
        self.policy = policy
        self.blueprints = list(blueprints)
        self.by_id = {descriptor.blueprint_id: descriptor for descriptor in self.blueprints}
        self._offered_ids = json.dumps(sorted(self.by_id), separators=(",", ":"))
        self._offered_without: frozenset[str] = frozenset()
        self.signer = signer
        self.risk = risk or RiskEngine()
        #: The sheets the policy sees; it wraps the risk engine's source, to show what the engine rates from the
        #: next decision point on.
        sheets = self.risk.sheets
        self.measured = sheets if isinstance(sheets, MeasuredSheets) else MeasuredSheets(sheets)
        if sheets is not None:
            self.risk.sheets = self.measured
        self.reports = reports or FieldReports(self.options, training_run_id=training_run_id)
        self.bus = bus
        self.training_run_id = training_run_id
        self.last_latency_ms = 0.0
        self.decisions = 0
        self.over_budget = 0
        self._lock = threading.Lock()
        self._pending_events: list[Event] = []
        #: Policy failures not yet handed to Tolaria. A deque: ``decide`` may still be running on Tolaria's worker
        #: thread (a late decision) while the loop drains it.
        self._failures: deque[PluginFailure] = deque()
        #: Whether someone collects them (has called drain_plugin_failures).
        self._failures_claimed = False
        if self.bus is not None:
            self.bus.subscribe([self.bus.streams.policy])
        self.store_watcher = StoreWatcher(PolicyStore(self.options.policy_store)) if self.options.policy_store else None

    # -- decisions --------------------------------------------------------------------------------------------
    def offered(self, also_quarantined: Iterable[str] = ()) -> list[BlueprintDescriptor]:
        """The blueprints offered to the policy: all of the run's, less those the risk engine measured to be
        quarantined at one of this run's slots (a policy is never offered a blueprint known to be dangerous), and
        less ``also_quarantined`` (those the run quarantined because building them raised: the state packet's)."""
        quarantined = frozenset(self.risk.quarantined) | frozenset(also_quarantined)
        offered = [descriptor for descriptor in self.blueprints if descriptor.blueprint_id not in quarantined]
        if quarantined != self._offered_without:
            self._offered_without = quarantined
            self._offered_ids = json.dumps(sorted(d.blueprint_id for d in offered), separators=(",", ":"))
        return offered

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        with self._lock:
            start = time.perf_counter()
            self._consume_policy_updates()
            self._follow_policy_store()
            failure = ""
            quarantined = quarantined_blueprints(state)
            offered = self.offered(quarantined)
            seen = self.measured.fill(state, offered)
            try:
                proposal = self.policy.decide(seen, offered)
            except Exception as error:  # noqa: BLE001 - a failing policy must not stop training
                failure = policy_error_text(self.policy.name, error)
                proposal = noop(f"the {failure}; waiting instead", self.policy.name)
                self._pending_events.append(Event("policy_error", failure, ERROR))
                # Logged as an error where it is the only account of it (esper serve tamiyo); where a run writes it
                # down (it drains the failures: Tolaria prints one line per policy and exception type), quietly.
                level = logging.DEBUG if self._failures_claimed else logging.ERROR
                logger.log(level, "tamiyo: %s (a safe no-op was decided instead)", failure)
                # Blamed on the policy, unless something it called (a guarded catalog) raised it.
                blamed = Blame("policy", self.policy.name, "decide", module=type(self.policy).__module__)
                caught = failure_of(error, blamed)
                if caught is not None:
                    self._failures.append(caught)
            proposal = self._held_back(proposal, quarantined)
            if not proposal.decision.policy_name:
                proposal.decision.policy_name = self.policy.name
            review = self.risk.review(proposal, state, self.by_id)
            command = review.command
            command.version = 1
            command.issued_by = "tamiyo"
            command.training_run_id = state.training_run_id or self.training_run_id
            command.decision_epoch = state.current_epoch
            command.decision_step = state.global_step
            command.annotations[OFFERED_BLUEPRINTS] = self._offered_ids
            if self.measured.last_annotation:
                command.annotations[MEASURED_BLUEPRINTS] = self.measured.last_annotation
            if failure:
                command.annotations[POLICY_ERROR] = failure
            entered = next((e for e in review.events if e.name == "conservative_mode_entered"), None)
            if entered is not None:  # the risk engine raises it on the ladder; Tolaria carries it out
                command.annotations[EMERGENCY] = emergency_text(
                    "NOTICE", f"risk engine paused growth: {entered.description}"
                )
            if not command.decision.policy_version:
                command.decision.policy_version = str(getattr(self.policy, "version", "1"))
            latency = (time.perf_counter() - start) * 1000.0
            command.decision.decision_latency_ms = latency
            self.signer.sign(command)
            self.last_latency_ms = latency
            self.decisions += 1
            # Rating a blueprint on first use, and reading a stored sheet the first time, are one-time costs of the
            # run, not the policy's: they do not count.
            one_time = self.risk.last_rating_ms + self.measured.last_reading_ms
            over = latency - one_time > self.options.decision_budget_ms
            self.risk.last_decision_over_budget = over
            events = [*self._pending_events, *review.events]
            self._pending_events = []
            if over:
                self.over_budget += 1
                events.append(
                    Event(
                        "decision_over_budget",
                        f"{latency:.1f} ms > {self.options.decision_budget_ms} ms",
                        WARNING,
                        {"latency_ms": f"{latency:.3f}"},
                    )
                )
            events.append(
                Event(
                    "decision",
                    command.decision.rationale,
                    INFO,
                    {
                        "operation": lifecycle.command_name(command),
                        "slot": command.target_slot_id,
                        "risk_reason": command.decision.risk_reason,
                    },
                )
            )
            self._publish_telemetry(state, events)
            return command

    def _held_back(self, proposal: AdaptationCommand, quarantined: set[str]) -> AdaptationCommand:
        """A no-op in place of a germination of a quarantined blueprint (a policy that does not pick from what it is
        offered, like the fixed schedule, can propose one)."""
        operation = proposal.seed_operation
        if (
            proposal.command_type != CommandType.COMMAND_SEED
            or operation.operation != SeedOperation.SEED_OP_GERMINATE
            or operation.blueprint_id not in quarantined
        ):
            return proposal
        return noop(
            f"blueprint {operation.blueprint_id} is quarantined for this run (building it raised); waiting instead",
            proposal.decision.policy_name or self.policy.name,
        )

    def drain_plugin_failures(self) -> list[PluginFailure]:
        """The policy's exceptions since the last call, oldest first (esper_core.plugin_failures.PluginFailureSource):
        Tolaria writes them down and counts them. From the first call on, the controller logs a policy's exception
        at DEBUG level only (the caller reports it)."""
        self._failures_claimed = True
        drained = []
        while self._failures:
            drained.append(self._failures.popleft())
        return drained

    def _publish_telemetry(self, state: SystemStatePacket, events: list[Event]) -> None:
        if self.bus is None:
            return
        packet = build_telemetry_packet(
            source="tamiyo",
            metrics=[
                Metric("tamiyo.decision.latency_ms", self.last_latency_ms, "ms"),
                Metric("tamiyo.decisions.total", float(self.decisions)),
                Metric("tamiyo.decisions.over_budget", float(self.over_budget)),
                Metric("tamiyo.conservative_mode", float(self.risk.conservative)),
                Metric("tamiyo.field_reports.open", float(len(self.reports.open))),
            ],
            events=events,
            training_run_id=self.training_run_id,
            epoch=state.current_epoch,
            global_step=state.global_step,
        )
        self.bus.publish(packet, priority=packet.priority)

    # -- outcomes ---------------------------------------------------------------------------------------------
    def observe(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> list[FieldReport]:
        with self._lock:
            written = self.reports.advance(state) + self.reports.opened(state, command, result)
            if self.bus is not None:
                for report in written:
                    self.bus.publish(report)
            return written

    # -- policy updates ---------------------------------------------------------------------------------------
    def apply_policy_update(self, update: PolicyUpdate, *, allow_rollback: bool = False) -> tuple[bool, str]:
        """Hand an update to the policy; it is refused (with the reason) if the policy cannot take updates."""
        load = getattr(self.policy, "load_update", None)
        if load is None:
            verdict: tuple[bool, str] = (False, f"policy {self.policy.name!r} does not take weight updates")
        else:
            outcome = load(update, allow_rollback=True) if allow_rollback else load(update)
            verdict = (bool(outcome.accepted), f"{getattr(outcome, 'reason', '')}: {getattr(outcome, 'detail', '')}")
        name = "policy_update_applied" if verdict[0] else "policy_update_rejected"
        self._pending_events.append(
            Event(name, verdict[1], INFO if verdict[0] else WARNING, {"policy_id": update.policy_id})
        )
        return verdict

    def _consume_policy_updates(self) -> None:
        if self.bus is None:
            return
        for message in self.bus.poll([self.bus.streams.policy], count=8, block_ms=0):
            if isinstance(message.payload, PolicyUpdate):
                self.apply_policy_update(message.payload)
            self.bus.ack(message)

    def _follow_policy_store(self) -> None:
        """Load the store's live version when it changed (a rollback may go back in issue time: the store says so)."""
        if self.store_watcher is None:
            return
        store = self.store_watcher.store
        try:
            live = self.store_watcher.changed()
            if live is None:
                return
            update = store.read(live.version)
        except PolicyStoreError as error:
            self._pending_events.append(Event("policy_store_unreadable", str(error), WARNING))
            return
        self.apply_policy_update(update, allow_rollback=live.rolled_back)

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        policy_state = getattr(self.policy, "state_dict", None)
        return {
            "policy": policy_state() if callable(policy_state) else {},
            "risk": self.risk.state_dict(),
            "measured": self.measured.state_dict(),
            "reports": self.reports.state_dict(),
            "decisions": self.decisions,
            "over_budget": self.over_budget,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load = getattr(self.policy, "load_state_dict", None)
        if callable(load) and state.get("policy"):
            load(state["policy"])
        self.risk.load_state_dict(state.get("risk", {}))
        self.measured.load_state_dict(state.get("measured", {}))
        self.reports.load_state_dict(state.get("reports", {}))
        self.decisions = int(state.get("decisions", 0))
        self.over_budget = int(state.get("over_budget", 0))

    def close(self) -> None:
        self.reports.close()
