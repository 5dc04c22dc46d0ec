"""Field reports: the judged outcome of every seed-affecting decision, the experience Simic learns from.

Each seed command gets exactly one report. A command Kasmina refused (security, legality, a failed gate) is
reported ABORTED at once. An applied one opens an *observation window*; the window closes after
``observation_window`` decision points, or sooner when the seed is fossilized or culled, and the report is judged
from measured deltas:

- the seed was culled before the window closed (and the command was not the cull): ABORTED;
- a CULL command: SUCCESS if validation loss did not rise beyond ``regression_margin``, else REGRESSION;
- the seed's counterfactual contribution is known: SUCCESS at or above ``success_contribution``, REGRESSION at or
  below its negative, else NEUTRAL;
- otherwise the relative change of validation loss: SUCCESS at or below ``-success_margin``, REGRESSION at or above
  ``regression_margin``, else NEUTRAL.

A report holds the whole decision (the state packet and the signed command) so it is a self-contained experience.
Reports are appended to a crash-safe log (the core append-only log) with deterministic ids (``fr-<command id>``), so a
resumed run that closes a window again announces the report again but does not write it twice; every report
written before a crash is there after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandStatus,
    CommandType,
    FieldReport,
    FieldReportDelta,
    FieldReportOutcome,
    MitigationAction,
    SeedLifecycleStage,
    SeedState,
    SystemStatePacket,
    lifecycle,
)
from esper_core.storage import AppendOnlyLog, read_records
from esper_tamiyo.options import TamiyoOptions

OUTCOME = FieldReportOutcome
GONE = lifecycle.CLEARING | {lifecycle.DORMANT}


@attrs.define
class Window:
    command: AdaptationCommand
    state: SystemStatePacket
    seed_id: str
    blueprint_id: str
    detail: str
    seen: int = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "command": self.command.SerializeToString(),
            "state": self.state.SerializeToString(),
            "seed_id": self.seed_id,
            "blueprint_id": self.blueprint_id,
            "detail": self.detail,
            "seen": self.seen,
        }

    @classmethod
    def from_state(cls, saved: Mapping[str, Any]) -> Window:
        return cls(
            AdaptationCommand.FromString(saved["command"]),
            SystemStatePacket.FromString(saved["state"]),
            saved["seed_id"],
            saved["blueprint_id"],
            saved["detail"],
            int(saved["seen"]),
        )


def _slot(state: SystemStatePacket, slot_id: str) -> SeedState | None:
    return next((seed for seed in state.seeds if seed.slot_id == slot_id), None)


class FieldReports:
    def __init__(self, options: TamiyoOptions, log_path: Path | None = None, training_run_id: str = "") -> None:
        self.options = options
        self.training_run_id = training_run_id
        self.log_path = log_path
        self.log = AppendOnlyLog(log_path) if log_path is not None else None
        self.written: set[str] = (
            {FieldReport.FromString(record).report_id for record in read_records(log_path)} if log_path else set()
        )
        self.open: dict[str, Window] = {}

    # -- opening ----------------------------------------------------------------------------------------------
    def opened(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> list[FieldReport]:
        """Note what happened to a command; a refused seed command is reported (ABORTED) at once."""
        if command.command_type != CommandType.COMMAND_SEED:
            return []
        slot = _slot(state, command.target_slot_id)
        seed_id = slot.seed_id if slot is not None else ""
        for transition in result.transitions:
            if transition.seed_id:
                seed_id = transition.seed_id
        blueprint = command.seed_operation.blueprint_id or (slot.blueprint_id if slot is not None else "")
        window = Window(command, state, seed_id, blueprint, result.detail)
        if result.status != CommandStatus.COMMAND_STATUS_APPLIED:
            return self._written([self._report(window, state, OUTCOME.FIELD_REPORT_OUTCOME_ABORTED)])
        self.open[command.command_id] = window
        return []

    # -- closing ----------------------------------------------------------------------------------------------
    def advance(self, state: SystemStatePacket) -> list[FieldReport]:
        """Count one more decision point for every open window; return the reports of windows that closed."""
        closed = []
        for command_id, window in list(self.open.items()):
            window.seen += 1
            slot = _slot(state, window.command.target_slot_id)
            alive = slot is not None and slot.seed_id == window.seed_id and slot.stage not in GONE
            final = slot is not None and slot.stage == lifecycle.FOSSILIZED and alive
            if window.seen >= self.options.observation_window or not alive or final:
                closed.append(self._report(window, state, self._judge(window, state, alive)))
                del self.open[command_id]
        return self._written(closed)

    def _judge(self, window: Window, state: SystemStatePacket, alive: bool) -> FieldReportOutcome.ValueType:
        o = self.options
        before, after = window.state.metrics, state.metrics
        relative = None
        if before.HasField("val_loss") and after.HasField("val_loss") and before.val_loss > 0:
            relative = (after.val_loss - before.val_loss) / before.val_loss
        if window.command.seed_operation.operation in lifecycle.REMOVALS:
            if relative is not None and relative >= o.regression_margin:
                return OUTCOME.FIELD_REPORT_OUTCOME_REGRESSION
            return OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS
        if not alive:
            return OUTCOME.FIELD_REPORT_OUTCOME_ABORTED
        slot = _slot(state, window.command.target_slot_id)
        if slot is not None and slot.HasField("contribution"):
            if slot.contribution >= o.success_contribution:
                return OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS
            if slot.contribution <= -o.success_contribution:
                return OUTCOME.FIELD_REPORT_OUTCOME_REGRESSION
            return OUTCOME.FIELD_REPORT_OUTCOME_NEUTRAL
        if relative is not None and relative <= -o.success_margin:
            return OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS
        if relative is not None and relative >= o.regression_margin:
            return OUTCOME.FIELD_REPORT_OUTCOME_REGRESSION
        return OUTCOME.FIELD_REPORT_OUTCOME_NEUTRAL

    def _report(self, window: Window, state: SystemStatePacket, outcome: FieldReportOutcome.ValueType) -> FieldReport:
        before, after = window.state.metrics, state.metrics
        slot = _slot(state, window.command.target_slot_id)
        delta = FieldReportDelta(
            parameters_added=int(after.parameter_count) - int(before.parameter_count),
            final_stage=slot.stage if slot is not None else SeedLifecycleStage.SEED_STAGE_UNKNOWN,
            epochs_observed=window.seen,
        )
        for name in ("val_loss", "val_accuracy"):
            if before.HasField(name):
                setattr(delta, f"{name}_before", getattr(before, name))
            if after.HasField(name):
                setattr(delta, f"{name}_after", getattr(after, name))
            if before.HasField(name) and after.HasField(name):
                setattr(delta, f"{name}_delta", getattr(after, name) - getattr(before, name))
        if before.HasField("train_loss") and after.HasField("train_loss"):
            delta.train_loss_delta = after.train_loss - before.train_loss
        if slot is not None and slot.HasField("contribution") and slot.seed_id == window.seed_id:
            delta.contribution = slot.contribution
        decision = window.command.decision
        report = FieldReport(
            version=1,
            report_id=f"fr-{window.command.command_id}",
            command_id=window.command.command_id,
            training_run_id=self.training_run_id or window.command.training_run_id,
            slot_id=window.command.target_slot_id,
            seed_id=window.seed_id,
            blueprint_id=window.blueprint_id,
            outcome=outcome,
            delta=delta,
            observation_window_epochs=window.seen,
            policy_name=decision.policy_name,
            policy_version=decision.policy_version,
            notes="; ".join(part for part in (decision.rationale, window.detail) if part),
            decision_state=window.state,
            command=window.command,
            decision_epoch=window.command.decision_epoch,
        )
        if outcome == OUTCOME.FIELD_REPORT_OUTCOME_ABORTED and window.detail:
            report.follow_up_actions.append(MitigationAction(action_type="seed_removed", rationale=window.detail))
        report.issued_at.GetCurrentTime()
        return report

    def _written(self, reports: list[FieldReport]) -> list[FieldReport]:
        """Append the reports not yet in the log, and return all of them: a run resumed from a checkpoint closes
        the same windows again and announces the same reports, but the log holds each one once."""
        for report in reports:
            if report.report_id not in self.written:
                if self.log is not None:
                    self.log.append(report.SerializeToString())
                self.written.add(report.report_id)
        return reports

    def all_reports(self) -> list[FieldReport]:
        """Every report in the log, in order (empty without a log)."""
        if self.log_path is None:
            return []
        return [FieldReport.FromString(record) for record in read_records(self.log_path)]

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"open": {command_id: window.to_state() for command_id, window in self.open.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.open = {command_id: Window.from_state(saved) for command_id, saved in state.get("open", {}).items()}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
