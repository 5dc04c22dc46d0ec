"""`esper run` end to end on real components (Kasmina, Tamiyo, Karn/Urza) and the synthetic task: a run that grows,
records everything and checkpoints; a run killed mid-epoch that resumes to exactly the weights and record of an
uninterrupted one; a seed that turns to NaN, rolled back and culled."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.cli.main import main
from esper_core.plugins import Registry
from esper_core.tasks.fashion_mnist import DataMissingError
from esper_core.testing.processes import Child
from esper_core.tolaria.assembly import RunError, start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Summary, Trainer

from tolaria_runs import BASE, SaboteurPlugin, final_weights, schedule, stable

pytestmark = pytest.mark.slow


def train(tmp_path: Path, *overrides: str, registry: Registry | None = None) -> tuple[Summary, Path]:
    registry = registry or Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*BASE, f"run.runs_dir={tmp_path}", *overrides])
    run = start_run(registry, config)
    trainer = Trainer(run)
    try:
        return trainer.fit(), run.run_dir
    finally:
        trainer.close()


def test_a_run_grows_records_everything_and_checkpoints(tmp_path: Path) -> None:
    summary, run_dir = train(tmp_path, "run.name=grow", "run.epochs=8", *schedule(2))
    record = read_record(run_dir)
    kinds = [entry["kind"] for entry in record]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("epoch") == 8 and kinds.count("decision") == 8
    targets = [entry["target"] for entry in record if entry["kind"] == "transition"]
    assert targets[:3] == ["GERMINATED", "TRAINING", "BLENDING"]
    assert any(entry["kind"] == "field_report" for entry in record)
    assert summary.parameters > summary.host_parameters or summary.culled > 0
    assert summary.test_accuracy is not None and summary.test_accuracy > 0.5  # 4 classes: chance is 0.25
    assert (run_dir / "config.toml").exists() and (run_dir / "tamiyo" / "field_reports.log").exists()
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("*.pt")) == ["epoch-0007.pt", "epoch-0008.pt"]
    reloaded = Registry.create(env={}).load_config(run_dir / "config.toml", env={})
    assert reloaded.to_toml() == (run_dir / "config.toml").read_text()
    # Compute, counted: every epoch's training is in the total; the seed made steps dearer once it trained.
    epochs = [entry for entry in record if entry["kind"] == "epoch"]
    assert sum(entry["training_flops"] for entry in epochs) == summary.training_flops
    parts = ("training_flops", "validation_flops", "measurement_flops")
    assert epochs[-1]["total_flops"] == sum(entry[part] for entry in epochs for part in parts)
    assert epochs[-1]["total_flops"] < summary.total_flops  # then the final validation and test passes
    assert epochs[3]["training_flops"] > epochs[0]["training_flops"]  # germinated at 2, TRAINING in epoch 4
    assert any(entry["measurement_flops"] > 0 for entry in epochs)  # its counterfactuals, while measured
    assert summary.total_flops == summary.training_flops + summary.validation_flops + summary.measurement_flops


def test_the_command_line_prints_progress_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = [f"--set={item}" for item in (*BASE, f"run.runs_dir={tmp_path}", "run.name=cli", "run.epochs=2")]
    assert main(["run", *arguments]) == 0
    out = capsys.readouterr().out
    assert "2/2 train" in out and "test accuracy" in out and str(tmp_path / "cli") in out
    assert main(["run", *arguments]) == 2  # the run directory exists: refused, with the way out
    assert "esper run --resume" in capsys.readouterr().err


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for key in (
        "run.epochs",
        "tolaria.decision_timeout_s",
        "kasmina.embargo_epochs",
        "tamiyo.heuristic.warmup_epochs",
        "run.fashion-mnist.data_dir",
        "urza.allowed_tiers",
    ):
        assert key in out, key


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        train(tmp_path, "run.task=fashion-mnist", f"run.fashion-mnist.data_dir={tmp_path / 'nowhere'}")
    assert list(tmp_path.iterdir()) == [], "a run that could not start leaves no directory behind"


KILLABLE = [*BASE, "run.synthetic.samples=40000", "run.epochs=7", *schedule(2, 3)]
#: Where the killed run stops: halfway through epoch 5 (313 steps of 128 samples), after checkpoint 4, with the two
#: seeds germinated at epochs 2 and 3 in flight.
HOLD_EPOCH, HOLD_STEP = 5, 157

#: ``esper run`` in a child that, at step HOLD_STEP of epoch HOLD_EPOCH, says so and waits to be killed (stdin is
#: never written; its end means the test is gone). The pause is a trainer step callback, so the run computes exactly
#: what an unpaused run computes up to that step.
_HELD_RUN = """
import os, sys
from esper_core.cli.main import main
from esper_core.tolaria.trainer import Trainer

arguments, hold_epoch, hold_step = {arguments!r}, {hold_epoch!r}, {hold_step!r}
train_epoch = Trainer.train_epoch

def held_train_epoch(self, epoch):
    if epoch == hold_epoch:
        chained = self.on_step

        def on_step(step, steps):
            if chained is not None:
                chained(step, steps)
            if step == hold_step:
                print("holding mid-epoch", flush=True)
                sys.stdin.read()
                os._exit(3)

        self.on_step = on_step
    return train_epoch(self, epoch)

Trainer.train_epoch = held_train_epoch
sys.exit(main(arguments))
"""


def test_a_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path) -> None:
    uninterrupted = tmp_path / "whole"
    _, whole_dir = train(uninterrupted, "run.synthetic.samples=40000", "run.epochs=7", *schedule(2, 3), "run.name=run")
    killed = tmp_path / "killed"
    arguments = ["run", "--quiet", *(f"--set={item}" for item in (*KILLABLE, f"run.runs_dir={killed}", "run.name=run"))]
    script = _HELD_RUN.format(arguments=arguments, hold_epoch=HOLD_EPOCH, hold_step=HOLD_STEP)
    run_dir = killed / "run"
    environment = {**os.environ, "ESPER_DISABLE_PLUGIN_AUTOLOAD": ""}
    with Child([sys.executable, "-c", script], env=environment) as process:
        process.wait_for("holding mid-epoch", deadline_s=600)
        assert process.kill() == -signal.SIGKILL
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints[-1] == "epoch-0004.pt", f"the kill must land in epoch 5, after checkpoint 4: {checkpoints}"
    assert main(["run", "--quiet", "--resume", str(run_dir)]) == 0
    expected, resumed = final_weights(whole_dir), final_weights(run_dir)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert stable(read_record(run_dir)) == stable(read_record(whole_dir))


def test_a_seed_that_turns_to_nan_is_rolled_back_and_culled(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    registry.pm.register(SaboteurPlugin(), name="saboteur")
    registry.invalidate()
    summary, run_dir = train(
        tmp_path,
        "run.name=nan",
        "run.epochs=6",
        'urza.catalogs=["saboteur"]',
        *schedule(1, blueprint="BP990"),
        registry=registry,
    )
    record = read_record(run_dir)
    (rollback,) = [entry for entry in record if entry["kind"] == "rollback"]
    assert rollback["epoch"] == 4 and rollback["to_epoch"] == 3
    assert rollback["culled"] == ["layers.0"] and rollback["responsible"] == "layers.0"
    assert "nan" in rollback["reason"].lower()
    culls = [e for e in record if e["kind"] == "transition" and e["target"] == "CULLED"]
    assert culls and culls[0]["reason"].startswith("commanded")
    assert summary.rollbacks == 1 and summary.epochs == 6
    assert all(torch.isfinite(value).all() for value in final_weights(run_dir).values() if value.is_floating_point())
    epochs = [entry for entry in record if entry["kind"] == "epoch"]
    assert [entry["epoch"] for entry in epochs] == [1, 2, 3, 4, 5, 6]
    assert all(entry["train_loss"] is not None and math.isfinite(entry["train_loss"]) for entry in epochs)
    # The epoch thrown away was trained all the same: its compute stays in the run's total.
    assert summary.training_flops > sum(entry["training_flops"] for entry in epochs)


def test_the_fast_rollback_from_memory_restores_exactly_what_the_disk_would(tmp_path: Path) -> None:
    """The same NaN seed rolled back from the in-memory snapshot and, with fast rollback off, from the checkpoint
    file: the runs continue identically, to the last weight and record entry."""
    runs = {}
    for tier, setting in (("memory", "tolaria.fast_rollback_max_mb=512"), ("disk", "tolaria.fast_rollback_max_mb=0")):
        registry = Registry.create(env={})
        registry.pm.register(SaboteurPlugin(), name="saboteur")
        registry.invalidate()
        _, runs[tier] = train(tmp_path, f"run.name={tier}", "run.epochs=6", 'urza.catalogs=["saboteur"]',
                              *schedule(1, blueprint="BP990"), setting, registry=registry)  # fmt: skip
    records = {tier: read_record(run_dir) for tier, run_dir in runs.items()}
    assert [e["tier"] for e in records["memory"] if e["kind"] == "rollback"] == ["memory"]
    assert [e["tier"] for e in records["disk"] if e["kind"] == "rollback"] == ["disk"]

    def without_tier(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in entry.items() if k not in ("tier", "run_id")} for entry in stable(entries)]

    assert without_tier(records["memory"]) == without_tier(records["disk"])
    fast, slow = final_weights(runs["memory"]), final_weights(runs["disk"])
    assert fast.keys() == slow.keys() and all(torch.equal(fast[key], slow[key]) for key in fast)


def test_a_loss_spike_is_a_divergence() -> None:
    trainer: Any = Trainer.__new__(Trainer)
    from esper_core.tolaria.trainer import EpochStats, History

    trainer.history = History(train_losses=[0.5])
    trainer.run = type("R", (), {"tolaria": type("T", (), {"loss_spike_factor": 3.0})()})()
    assert trainer._divergence(EpochStats(1.4, 0.5, 1.0, 10)) is None
    assert "spiked" in trainer._divergence(EpochStats(1.6, 0.5, 1.0, 10))
    assert "nan" in trainer._divergence(EpochStats(float("nan"), 0.5, 1.0, 10))


def test_a_run_that_keeps_diverging_stops_after_max_rollbacks(tmp_path: Path) -> None:
    """Every rollback re-saves the checkpoint it returned to, so the count survives the next restore."""
    registry = Registry.create(env={})
    registry.pm.register(SaboteurPlugin(), name="saboteur")
    registry.invalidate()
    with pytest.raises(RunError, match="already rolled back 2 times"):
        train(tmp_path, "run.name=diverging", "run.task=poisoned", "run.epochs=8", "tolaria.max_rollbacks=2",
              registry=registry)  # fmt: skip
    record = read_record(tmp_path / "diverging")
    assert [entry["epoch"] for entry in record if entry["kind"] == "rollback"] == [3, 3], "both stay in the record"
