"""``esper report RUN_DIR`` and the report written when a run finishes, through the real plugin registry."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from esper_core.cli.main import main
from esper_core.plugins import Registry, RunInfo


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.create(env={})


def test_esper_report_prints_the_report_directory(growing_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(growing_run)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == str(growing_run / "report")
    assert (growing_run / "report" / "summary.md").exists()


def test_esper_report_writes_elsewhere_with_output(
    growing_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(growing_run), "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert (tmp_path / "out" / "loss.png").exists()


def test_esper_report_on_a_directory_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and "not a run directory" in err and "record.log" in err
    assert not (tmp_path / "report").exists()


def test_the_plugin_provides_the_sink_the_command_and_the_hook(registry: Registry) -> None:
    assert "jsonl" in [spec.name for spec in registry.telemetry_sinks()]
    assert "report" in [spec.name for spec in registry.cli_commands()]
    implementers = [impl.plugin_name for impl in registry.pm.hook.esper_tolaria_run_finished.get_hookimpls()]
    assert "nissa" in implementers


def test_a_finished_run_gets_its_report(registry: Registry, growing_run: Path) -> None:
    config = registry.load_config(env={})
    registry.run_finished(RunInfo(run_id="grow-1", run_dir=growing_run, config=config), {"test_accuracy": 0.9175})
    report = growing_run / "report"
    assert sorted(p.name for p in report.iterdir()) == ["accuracy.png", "loss.png", "parameters.png", "summary.md"]
    assert "| test accuracy | 91.75 % |" in (report / "summary.md").read_text()


def test_the_automatic_report_can_be_switched_off(registry: Registry, seedless_run: Path) -> None:
    config = registry.load_config(env={}, overrides=["nissa.report.automatic=false"])
    registry.run_finished(RunInfo(run_id="static-1", run_dir=seedless_run, config=config), {})
    assert not (seedless_run / "report").exists()


def test_a_failing_report_is_a_warning_not_a_crash(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = registry.load_config(env={})
    with caplog.at_level(logging.WARNING, logger="esper_nissa"):
        registry.run_finished(RunInfo(run_id="ghost", run_dir=tmp_path / "ghost", config=config), {})
    [warning] = [r for r in caplog.records if r.name.startswith("esper_nissa")]
    assert warning.levelno == logging.WARNING
    assert "no report for run ghost" in warning.getMessage() and "does not exist" in warning.getMessage()


def test_importing_the_plugin_imports_no_matplotlib() -> None:
    code = "import sys, esper_nissa.plugin; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
