"""Field reports: one per seed-affecting decision, judged after its observation window from measured deltas,
appended to a crash-safe log and never written twice."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from esper_core.leyline import (
    CommandResult,
    CommandStatus,
    FieldReportOutcome,
    SeedLifecycleEvent,
    SeedOperation,
    lifecycle,
)
from esper_core.signing import CommandSigner, SigningKey
from esper_core.testing.processes import Child
from esper_tamiyo.commands import seed_command
from esper_tamiyo.options import TamiyoOptions
from esper_tamiyo.reports import FieldReports

from tamiyo_scenarios import packet, slot

OUTCOME = FieldReportOutcome
SIGNER = CommandSigner(SigningKey.generate())
APPLIED = CommandResult(status=CommandStatus.COMMAND_STATUS_APPLIED)


def germinated(reports: FieldReports, epoch: int = 3, loss: float = 0.5) -> str:
    command = SIGNER.sign(
        seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "plateau", policy="heuristic", blueprint_id="BP101")
    )
    result = CommandResult(
        status=CommandStatus.COMMAND_STATUS_APPLIED,
        transitions=[SeedLifecycleEvent(slot_id="a", seed_id="a#1", to_stage=lifecycle.GERMINATED)],
    )
    assert reports.opened(packet(epoch, loss, [slot("a")]), command, result) == []
    return command.command_id


def close(reports: FieldReports, loss: float, **seed_fields: object) -> list[object]:
    written: list[object] = []
    for epoch in range(4, 4 + reports.options.observation_window):
        written += reports.advance(
            packet(
                epoch,
                loss,
                [
                    slot(
                        "a",
                        seed_fields.get("stage", lifecycle.TRAINING),
                        **{k: v for k, v in seed_fields.items() if k != "stage"},
                    )
                ],
            )
        )  # type: ignore[arg-type]
    return written


def test_a_helpful_seed_is_a_success_judged_on_its_contribution(tmp_path: Path) -> None:
    reports = FieldReports(TamiyoOptions(observation_window=3), tmp_path / "reports.log", "run")
    command_id = germinated(reports)
    assert close(reports, 0.49, contribution=0.02, parameter_count=640)[-1:] != []
    (report,) = reports.all_reports()
    assert report.report_id == f"fr-{command_id}" and report.outcome == OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS
    assert (report.slot_id, report.seed_id, report.blueprint_id) == ("a", "a#1", "BP101")
    assert report.delta.contribution == 0.02 and report.delta.epochs_observed == 3
    assert round(report.delta.val_loss_delta, 6) == -0.01 and report.delta.val_loss_before == 0.5
    assert report.decision_state.current_epoch == 3 and report.command.command_id == command_id
    assert report.policy_name == "heuristic" and "plateau" in report.notes


def test_outcomes_follow_the_measurements(tmp_path: Path) -> None:
    cases = [
        ({"contribution": -0.02}, 0.5, OUTCOME.FIELD_REPORT_OUTCOME_REGRESSION),
        ({"contribution": 0.0}, 0.5, OUTCOME.FIELD_REPORT_OUTCOME_NEUTRAL),
        ({}, 0.45, OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS),  # no contribution yet: validation loss fell 10%
        ({}, 0.6, OUTCOME.FIELD_REPORT_OUTCOME_REGRESSION),
        ({"stage": lifecycle.EMBARGOED}, 0.4, OUTCOME.FIELD_REPORT_OUTCOME_ABORTED),  # culled in the window
    ]
    for fields, loss, expected in cases:
        reports = FieldReports(TamiyoOptions(observation_window=2))
        germinated(reports)
        written = close(reports, loss, **fields)
        assert [r.outcome for r in written] == [expected], fields  # type: ignore[attr-defined]


def test_a_window_closes_early_when_the_seed_is_fossilized() -> None:
    reports = FieldReports(TamiyoOptions(observation_window=5))
    germinated(reports)
    written = reports.advance(packet(4, 0.48, [slot("a", lifecycle.FOSSILIZED, contribution=0.01)]))
    assert [r.outcome for r in written] == [OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS]
    assert written[0].delta.final_stage == lifecycle.FOSSILIZED and written[0].delta.epochs_observed == 1


def test_a_refused_command_is_reported_aborted_at_once() -> None:
    reports = FieldReports(TamiyoOptions())
    command = SIGNER.sign(seed_command(SeedOperation.SEED_OP_START_TRAINING, "a", "go", policy="heuristic"))
    refused = CommandResult(status=CommandStatus.COMMAND_STATUS_REJECTED_GATE, detail="G1/finite_output")
    (report,) = reports.opened(packet(5, 0.5, [slot("a", lifecycle.GERMINATED)]), command, refused)
    assert report.outcome == OUTCOME.FIELD_REPORT_OUTCOME_ABORTED
    assert report.follow_up_actions[0].rationale == "G1/finite_output"
    assert reports.open == {}


def test_a_cull_that_does_not_hurt_is_a_success() -> None:
    reports = FieldReports(TamiyoOptions(observation_window=1))
    command = SIGNER.sign(seed_command(SeedOperation.SEED_OP_CULL, "a", "it hurts", policy="heuristic"))
    reports.opened(packet(5, 0.5, [slot("a", lifecycle.BLENDING, contribution=-0.03)]), command, APPLIED)
    (report,) = reports.advance(packet(6, 0.49, [slot("a", lifecycle.EMBARGOED)]))
    assert report.outcome == OUTCOME.FIELD_REPORT_OUTCOME_SUCCESS


def test_a_restored_window_does_not_log_its_report_twice(tmp_path: Path) -> None:
    log = tmp_path / "reports.log"
    reports = FieldReports(TamiyoOptions(observation_window=1), log)
    germinated(reports)
    checkpoint = reports.state_dict()  # taken before the window closed
    assert len(reports.advance(packet(4, 0.49, [slot("a", contribution=0.02)]))) == 1
    reports.close()
    resumed = FieldReports(TamiyoOptions(observation_window=1), log)
    resumed.load_state_dict(checkpoint)
    (again,) = resumed.advance(packet(4, 0.49, [slot("a", contribution=0.02)]))  # announced again...
    assert [r.report_id for r in resumed.all_reports()] == [again.report_id]  # ...but logged once


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from esper_core.leyline import CommandResult, CommandStatus, SeedOperation, lifecycle
from esper_core.signing import CommandSigner, SigningKey
from esper_tamiyo.commands import seed_command
from esper_tamiyo.options import TamiyoOptions
from esper_tamiyo.reports import FieldReports
from tamiyo_scenarios import packet, slot
reports = FieldReports(TamiyoOptions(observation_window=1), {log!r})
signer = CommandSigner(SigningKey.generate())
for epoch in range(100000):
    command = signer.sign(seed_command(SeedOperation.SEED_OP_CULL, "a", "x", policy="p"))
    reports.opened(packet(epoch, 0.5, [slot("a", lifecycle.TRAINING)]), command,
                   CommandResult(status=CommandStatus.COMMAND_STATUS_APPLIED))
    for report in reports.advance(packet(epoch + 1, 0.5, [slot("a")])):
        print(report.report_id, flush=True)
"""


def test_reports_written_before_a_crash_are_all_there_after_it(tmp_path: Path) -> None:
    """The writer prints each report id once ``advance`` has returned it (so once it is logged); after a SIGKILL at
    any moment, every id it printed is in the log, and so is every id of the runs killed before (each run reopens
    the log the last one was killed writing). The kills come after 1, 50 and 200 reports of each run."""
    log = tmp_path / "reports.log"
    tests = str(Path(__file__).parent)
    announced: set[str] = set()
    for reports_before_kill in (1, 50, 200):
        with Child([sys.executable, "-c", WRITER.format(tests=tests, log=str(log))]) as writer:
            for _ in range(reports_before_kill):
                writer.next_line()
            assert writer.kill() == -signal.SIGKILL, "the writer stopped on its own"
        assert len(writer.lines) >= reports_before_kill
        announced |= set(writer.lines)
        recovered = {report.report_id for report in FieldReports(TamiyoOptions(), log).all_reports()}
        assert announced <= recovered
