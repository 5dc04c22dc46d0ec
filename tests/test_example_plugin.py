"""The example plugin (examples/esper-example-plugin) as a third party ships it, with no change to any Esper package:
built and installed for real into a directory of its own, found through its entry point, selected by a run
configuration and trained with; and its own tests, run against the installed distribution as its CI would."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from esper_core.leyline import FieldReport
from esper_core.storage import read_records
from esper_core.tolaria.record import read_record

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "esper-example-plugin"
EPOCHS = 7
#: Small and deterministic (see tolaria_runs.BASE): no rule that measures wall-clock time can fire. With 29 steps an
#: epoch and a 20-step ramp, a seed germinated after the 2-epoch warm-up is FOSSILIZED at the 7th decision point.
SETTINGS = [
    f"run.epochs={EPOCHS}",
    "run.threads=1",
    "run.batch_size=128",
    "run.synthetic.samples=4096",
    "run.synthetic.widths=[32, 32]",
    "kasmina.blend_steps=20",
    "kasmina.max_step_overhead=1e9",
    "kasmina.max_seed_parameter_fraction=5",
    "tamiyo.decision_budget_ms=1e9",
    "tamiyo.risk.hook_budget_ms=1e9",
    "tolaria.decision_timeout_s=120",
    "tolaria.apply_timeout_s=120",
    "nissa.report.automatic=false",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution, built by hatchling from its sources and installed into a directory of its own."""
    target = tmp_path_factory.mktemp("example-plugin") / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet"]
    completed = subprocess.run(
        [*command, "--target", str(target), str(EXAMPLE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return target


def environment(site: Path) -> dict[str, str]:
    """This environment with the installed plugin on the path, and no ESPER_* setting that could change which
    plugins load or how a run is configured."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    return {**kept, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def run(site: Path, *arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, *arguments],
        env=environment(site),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, f"{arguments} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_esper_finds_the_installed_distribution_and_its_three_components(site: Path) -> None:
    located = run(site, "-c", "import esper_example_plugin; print(esper_example_plugin.__file__)")
    assert Path(located.stdout.strip()).is_relative_to(site)  # the installed copy, not the sources
    listed = json.loads(run(site, "-m", "esper_core.cli.main", "plugins", "--json").stdout)
    rows = [row for row in listed if row["distribution"] == "esper-example-plugin"]
    assert len(rows) == 1, listed
    row = rows[0]
    assert (row["name"], row["version"], row["target"]) == ("example", "0.1.0", "esper_example_plugin.plugin")
    assert row["hooks"] == ["esper_nissa_telemetry_sinks", "esper_tamiyo_policies", "esper_urza_blueprint_catalogs"]
    provides = ["blueprint catalog:example", "policy:example-greedy", "telemetry sink:example-csv"]
    assert sorted(row["provides"]) == provides


def test_a_run_configured_with_the_plugin_grows_its_blueprint_under_its_policy(site: Path, tmp_path: Path) -> None:
    overrides = [f"--set={item}" for item in (*SETTINGS, f"run.runs_dir={tmp_path / 'runs'}", "run.name=grow")]
    run(site, "-m", "esper_core.cli.main", "run", str(EXAMPLE / "example.toml"), "--quiet", *overrides, cwd=tmp_path)
    run_dir = tmp_path / "runs" / "grow"
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["tamiyo"]["policy"] == "example-greedy" and config["urza"]["catalogs"] == ["example"]
    assert config["nissa"]["sinks"] == ["jsonl", "example-csv"]

    record = read_record(run_dir)
    decisions = [entry for entry in record if entry["kind"] == "decision"]
    transitions = [entry for entry in record if entry["kind"] == "transition"]
    finished = [entry for entry in record if entry["kind"] == "run_finished"]
    story = "\n".join(f"{e['epoch']} {e['operation']} {e['status']}: {e['rationale']}" for e in decisions)
    assert len(decisions) == EPOCHS and len(finished) == 1, story

    # The plugin's policy decided: its rationales, and the policy name in the signed commands Tamiyo reported on.
    assert decisions[0]["rationale"] == "warming up (1/2 epochs)", story
    germination = decisions[1]
    slot = germination["slot"]
    assert [germination[key] for key in ("operation", "blueprint", "status")] == ["germinate", "EX001", "APPLIED"]
    assert germination["rationale"].startswith(f"germinate EX001 in {slot}, the most sensitive free slot"), story
    reports = [FieldReport.FromString(raw) for raw in read_records(run_dir / "tamiyo" / "field_reports.log")]
    assert reports, "Tamiyo judged none of the policy's decisions"
    assert {(r.policy_name, r.command.decision.policy_name, r.blueprint_id) for r in reports} == {
        ("example-greedy", "example-greedy", "EX001")
    }

    # A seed of the plugin's blueprint went through the whole lifecycle, each step on the policy's command.
    seed = [e for e in transitions if e["blueprint"] == "EX001" and e["slot"] == slot]
    stages = [e["target"] for e in seed]
    assert stages == ["GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"], story
    operations = [e["operation"] for e in decisions if e["status"] == "APPLIED"]
    assert operations == ["germinate", "start_training", "start_grafting", "stabilize", "evaluate", "fossilize"], story
    assert finished[0]["fossilized"] == 1 and finished[0]["parameters"] > finished[0]["host_parameters"]

    # The plugin's sink wrote one row per metric of the run, beside Nissa's jsonl file.
    assert (run_dir / "telemetry.jsonl").stat().st_size > 0
    with (run_dir / "telemetry.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["timestamp", "epoch", "global_step", "source", "metric", "value", "unit"]
    assert {row["source"] for row in rows} >= {"tolaria", "tamiyo"}
    losses = {int(row["epoch"]): float(row["value"]) for row in rows if row["metric"] == "tolaria.validation.loss"}
    recorded = {entry["epoch"]: entry["val_loss"] for entry in record if entry["kind"] == "epoch"}
    assert losses == pytest.approx(recorded)


def test_the_plugins_own_tests_pass_against_the_installed_distribution(site: Path, tmp_path: Path) -> None:
    """Its conformance and component tests, run by pytest under the example's own configuration (its pyproject),
    importing the installed package; pytest's and hypothesis's caches stay out of the source tree."""
    completed = run(site, "-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert " passed" in completed.stdout and "failed" not in completed.stdout, completed.stdout
