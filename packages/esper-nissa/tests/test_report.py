"""The run report from synthetic run records: valid PNG plots, a summary with the right numbers, for a run that
grew (germination, fossilization, cull, rollback), a run without seeds, a single epoch and a killed run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_core.tolaria.record import RECORD_FILE, RunRecord
from esper_nissa.report import (
    REPORT_FILES,
    NotARunError,
    ReportError,
    history_from_entries,
    load_history,
    write_report,
)
from esper_nissa.report.plots import DPI, FIGSIZE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_pngs(report: Path) -> None:
    from matplotlib.image import imread

    for name in ("accuracy.png", "loss.png", "parameters.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        image = imread(report / name)
        assert image.shape == (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI), 4), name
        assert image[..., :3].std() > 0.01, f"{name} is blank"


def test_a_growing_run_gets_its_plots_and_its_numbers(growing_run: Path) -> None:
    report = write_report(growing_run)
    assert report == growing_run / "report"
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)  # no temporary files left behind
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert summary.startswith("# Run report: grow-1\n")
    assert "Task `synthetic`; 3 seed slots; finished after 6 epochs." in summary
    for row in (
        "| validation accuracy | 92.50 % |",
        "| test accuracy | 91.75 % |",
        "| test loss | 0.2100 |",
        "| parameters (host + seeds) | 10,500 (+500, +5.00 %) |",
        "| seeds fossilized | 1 |",
        "| seeds culled | 2 |",
        "| rollbacks | 1 |",
        "| wall time | 14.2 s |",
        "| compute (counted FLOPs) | 19.2 GFLOP (training 18, validation 0.9, counterfactuals 0.35) |",
        "| s0 | conv-residual | epoch 2 | FOSSILIZED (epoch 5) | +0.0425 | SUCCESS |   |",
        "| s1 | mlp-adapter | epoch 3 | CULLED (epoch 4) | n/a | ABORTED | G1 gradient health failed |",
        "| s2 | attention-lite | epoch 5 | CULLED (epoch 6) | n/a |   | rollback: the training loss spiked |",
        "| noop | 2 | 0 |",
        "| germinate | 2 | 2 |",
        "| fossilize | 1 | 1 |",
        "| 6 | 5 | the training loss spiked | s2 |",
        "| 6 | the controller timed out | yes |",
    ):
        assert row in summary, row
    assert "did not finish" not in summary
    for name in ("accuracy.png", "loss.png", "parameters.png"):
        assert f"]({name})" in summary


def test_every_lifecycle_event_is_marked_at_its_epoch(growing_run: Path) -> None:
    history = load_history(growing_run)
    marked = {(m.kind, m.epoch, m.slot) for m in history.markers}
    assert marked == {
        ("germinated", 2, "s0"),
        ("germinated", 3, "s1"),
        ("germinated", 5, "s2"),
        ("fossilized", 5, "s0"),
        ("culled", 4, "s1"),
        ("culled", 6, "s2"),
        ("rollback", 6, ""),
    }
    # The slot moved on after its seed was culled (EMBARGOED, RESETTING, DORMANT): the seed's fate stays CULLED.
    assert [seed.stage for seed in history.seeds] == ["FOSSILIZED", "CULLED", "CULLED"]
    assert [epoch.epoch for epoch in history.epochs] == [1, 2, 3, 4, 5, 6]


def test_a_rollback_explains_its_cull_whichever_entry_comes_first() -> None:
    cull = {"kind": "transition", "epoch": 4, "slot": "s0", "seed": "x", "source": "BLENDING", "target": "CULLED",
            "reason": "commanded"}  # fmt: skip
    rollback = {"kind": "rollback", "epoch": 4, "to_epoch": 3, "reason": "nan loss", "culled": ["s0"]}
    germinated = {"kind": "transition", "epoch": 1, "slot": "s0", "seed": "x", "blueprint": "b", "target": "GERMINATED"}
    for order in ([cull, rollback], [rollback, cull]):
        history = history_from_entries([germinated, *order])
        [seed] = history.seeds
        assert (seed.stage, seed.ended_at, seed.reason) == ("CULLED", 4, "rollback: nan loss")
        assert sorted((m.kind, m.epoch) for m in history.markers) == [("culled", 4), ("germinated", 1), ("rollback", 4)]


def test_a_run_without_seeds(seedless_run: Path) -> None:
    report = write_report(seedless_run)
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert "No seed was germinated." in summary
    assert "| noop | 4 | 0 |" in summary
    assert "| test accuracy | n/a |" in summary
    assert "| parameters (host + seeds) | 10,000 (+0, +0.00 %) |" in summary
    assert "| compute (counted FLOPs) | n/a |" in summary  # a record written before compute was counted
    assert "## Rollbacks" not in summary and "## Failures" not in summary
    assert load_history(seedless_run).markers == ()


def test_a_single_epoch(make_seedless_run: Callable[..., Path]) -> None:
    run_dir = make_seedless_run("single", epochs=1)
    report = write_report(run_dir)
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert "finished after 1 epochs" in summary
    assert "| best validation accuracy | 50.00 % (epoch 1) |" in summary


def test_a_killed_run_is_reported_from_what_its_record_holds(killed_run: Path) -> None:
    report = write_report(killed_run)
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert "**The run did not finish**: its record ends after epoch 6" in summary
    for row in (
        "| epochs recorded | 6 |",
        "| train loss (last epoch) | n/a |",  # null in the record: the loss was not finite
        "| validation accuracy (last epoch) | 92.50 % |",
        "| parameters (host + seeds, last epoch) | 10,500 (+500, +5.00 %) |",
        "| seeds fossilized | 1 |",
        "| seeds culled | 2 |",
        "| rollbacks | 1 |",
        "| training time (recorded epochs) | 12.0 s |",
        "| compute (counted FLOPs, recorded epochs) | 18.6 GFLOP |",  # the last epoch's running total
        "| noop | 2 | 0 |",  # counted from the decision entries
        "| start_grafting | 1 | 1 |",
    ):
        assert row in summary, row


def test_a_run_killed_before_its_first_epoch(tmp_path: Path) -> None:
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    record = RunRecord(run_dir / RECORD_FILE)
    record.append("run_started", run_id="early", task="synthetic", host_parameters=1234, slots=[])
    record.close()
    report = write_report(run_dir)
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert "its record ends before its first epoch" in summary
    assert "| host parameters | 1,234 |" in summary
    assert "No decision was recorded." in summary


def test_a_torn_record_tail_loses_only_the_last_entry(killed_run: Path) -> None:
    with (killed_run / RECORD_FILE).open("ab") as handle:
        handle.write(b"\xe5\x5e\x1a\x0b\x10")  # a kill in the middle of writing the next entry's header
    assert write_report(killed_run).is_dir()


def test_a_second_report_replaces_the_first(growing_run: Path, tmp_path: Path) -> None:
    first = (write_report(growing_run) / "summary.md").read_text()
    RunRecord(growing_run / RECORD_FILE).append("epoch", epoch=7, val_accuracy=0.99, parameters=10_500)
    second = (write_report(growing_run) / "summary.md").read_text()
    assert first != second and "| best validation accuracy | 99.00 % (epoch 7) |" in second
    elsewhere = write_report(growing_run, output=tmp_path / "copy")
    assert elsewhere == tmp_path / "copy" and (elsewhere / "summary.md").read_text() == second


def test_odd_values_do_not_break_the_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "odd"
    run_dir.mkdir()
    record = RunRecord(run_dir / RECORD_FILE)
    record.append("epoch", epoch=1, train_loss="nan?", val_loss=None, val_accuracy=True, parameters=None)
    record.append("transition", epoch=1, slot="s0", source="TRAINING", target="CULLED", reason="a | pipe")
    record.append("field_report", epoch=1, slot="s0", contribution=-0.5, outcome="REGRESSION")
    record.append("decision", epoch=1)
    record.append("rollback", epoch=2, culled=None)
    record.append("mystery", data=[1, 2])
    record.close()
    report = write_report(run_dir)
    assert_valid_pngs(report)
    summary = (report / "summary.md").read_text()
    assert "| s0 | ? | ? | CULLED (epoch 1) | -0.5000 | REGRESSION | a \\| pipe |" in summary
    assert "| unknown | 1 | 0 |" in summary


@pytest.mark.parametrize("make", ["missing", "file", "empty directory"])
def test_a_directory_that_is_not_a_run_is_refused_clearly(tmp_path: Path, make: str) -> None:
    target = tmp_path / "target"
    if make == "file":
        target.write_text("x")
    elif make == "empty directory":
        target.mkdir()
    with pytest.raises(NotARunError, match=r"record\.log|does not exist|not a directory"):
        write_report(target)
    assert not (tmp_path / "target" / "report").exists()


def test_the_record_written_by_the_synthetic_helper_reads_back(growing_run: Path) -> None:
    from esper_core.tolaria.record import read_record

    entries = read_record(growing_run)
    assert entries[0]["kind"] == "run_started" and entries[-1]["kind"] == "run_finished"
    assert json.dumps(entries)  # plain JSON all the way down


def test_an_unwritable_destination_is_a_clear_error(growing_run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(ReportError, match="cannot write the report into"):
        write_report(growing_run, output=blocker / "report")
