"""Growth on torch.distributed (issue #16, docs/distributed.md): real two-process gloo runs on this CPU, started by
torchrun on 127.0.0.1. Both ranks go through the same lifecycle and end with bit-identical weights; the result
matches one process training on the same global batch, within the tolerance stated below; a rollback on two ranks
keeps them identical; a rank killed mid-epoch stops the other, and the run resumed on two ranks ends exactly where
the uninterrupted one did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.cli.main import main
from esper_core.leyline import lifecycle
from esper_core.testing.processes import Child
from esper_core.tolaria.record import read_record

from tolaria_runs import BASE, final_weights, schedule, stable

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
#: Every distributed run here: the synthetic task on one thread per process, on the CPU.
DISTRIBUTED = [*BASE, "run.device=cpu", "tolaria.gradient_micro_batches=0"]
#: One process and two, on the same global batches, differ only in how the mean gradient's sum is rounded
#: (two half-batch means averaged, against one mean): after 6 epochs of 29 steps the weights differ by at most
#: this much (absolute), and the validation loss by this relative amount.
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5

#: Runs ``esper`` with the arguments after ``--``; at exit each rank saves its final weights (seeds included), the
#: seed states after every decision point, and its summary, to OUT/rank-R.pt. With HOLD = "EPOCH:STEP", rank 1
#: says so at that step and sleeps until it is killed. With ESPER_TEST_SABOTEUR, the saboteur plugin is installed.
HARNESS = """
import os, sys, time
import torch
from esper_core.cli.main import main
from esper_core.plugins import Registry
from esper_core.tolaria.trainer import Trainer

out, hold, arguments = sys.argv[1], sys.argv[2], sys.argv[4:]
rank = int(os.environ.get("RANK", "0"))
lifecycle = []
decision_point, fit, train_epoch, decide = Trainer.decision_point, Trainer.fit, Trainer.train_epoch, Trainer._decide

def recorded(self, epoch, stats, **keywords):
    result = decision_point(self, epoch, stats, **keywords)
    lifecycle.append([
        (s.slot_id, int(s.stage), s.seed_id, s.blueprint_id, s.alpha_steps, s.paused)
        for s in self.run.executor.export_seed_states()
    ])
    return result

def dumped(self):
    summary = fit(self)
    weights = {k: v for k, v in self.run.model.state_dict().items() if isinstance(v, torch.Tensor)}
    saved = {"weights": weights, "lifecycle": lifecycle, "val_loss": summary.val_loss, "rollbacks": summary.rollbacks}
    torch.save(saved, os.path.join(out, f"rank-{rank}.pt"))
    return summary

def held(self, epoch):
    hold_epoch, hold_step = map(int, hold.split(":"))
    if epoch == hold_epoch and rank == 1:
        def on_step(step, steps):
            if step == hold_step:
                with open(os.path.join(out, "rank-1.pid"), "w") as file:
                    file.write(str(os.getpid()))
                print("rank 1 holding", flush=True)
                time.sleep(3600)
        self.on_step = on_step
    return train_epoch(self, epoch)

def drawing(self, state):
    torch.rand(7)  # a policy that samples: the leader's RNG moves on, the followers' does not
    return decide(self, state)

Trainer.decision_point, Trainer.fit = recorded, dumped
if os.environ.get("ESPER_TEST_LEADER_DRAWS") and rank == 0:
    Trainer._decide = drawing
if hold:
    Trainer.train_epoch = held
if os.environ.get("ESPER_TEST_SABOTEUR"):
    from tolaria_runs import SaboteurPlugin
    create = Registry.create.__func__

    def with_saboteur(cls, *args, **keywords):
        registry = create(cls, *args, **keywords)
        registry.pm.register(SaboteurPlugin(), name="saboteur")
        registry.invalidate()
        return registry

    Registry.create = classmethod(with_saboteur)
sys.exit(main(arguments))
"""


def torchrun(script: Path, *arguments: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", str(script), *arguments,
    ]  # fmt: skip


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def harness(tmp_path: Path) -> Path:
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    return script


def esper_arguments(runs: Path, *overrides: str) -> list[str]:
    items = (*DISTRIBUTED, f"run.runs_dir={runs}", "run.name=run", *overrides)
    return ["run", "--quiet", "--rank-timeout=120", *(f"--set={item}" for item in items)]


def run_harness(tmp_path: Path, name: str, overrides: list[str], *, nproc: int, **extra: str) -> dict[int, Any]:
    """One run through the harness (under torchrun when ``nproc`` > 1); each rank's dump."""
    out = tmp_path / name
    out.mkdir()
    arguments = [str(out), "", "--", *esper_arguments(out / "runs", *overrides)]
    script = harness(tmp_path)
    command = torchrun(script, *arguments, nproc=nproc) if nproc > 1 else [sys.executable, str(script), *arguments]
    finished = subprocess.run(
        command, check=False, env=environment(**extra), capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return {rank: torch.load(out / f"rank-{rank}.pt", weights_only=False) for rank in range(nproc)}


def test_two_ranks_grow_identically_and_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """The leader's controller draws from the torch RNG at every decision, as a sampling policy does (followers do
    not decide): the ranks' RNGs part ways, and their seeds and weights still agree."""
    overrides = ["run.epochs=6", *schedule(1, 2)]
    two = run_harness(tmp_path, "two", overrides, nproc=2, ESPER_TEST_LEADER_DRAWS="1")
    leader, follower = two[0], two[1]
    # The same seeds, stages and alphas after every decision point, and the same weights, bit for bit.
    assert leader["lifecycle"] == follower["lifecycle"]
    stages = {stage for point in leader["lifecycle"] for (_, stage, *_) in point}
    assert len(stages) >= 3, "the seeds must have gone through several stages for this to mean anything"
    assert leader["weights"].keys() == follower["weights"].keys()
    assert any(key.startswith("esper_slots.") and "seed" in key for key in leader["weights"])
    for key, value in leader["weights"].items():
        assert torch.equal(value, follower["weights"][key]), key
    # One process on the same global batches: the same lifecycle, the same weights within the stated tolerance.
    one = run_harness(tmp_path, "one", overrides, nproc=1, ESPER_TEST_LEADER_DRAWS="1")[0]
    assert one["lifecycle"] == leader["lifecycle"]
    largest = max(
        float((value.double() - one["weights"][key].double()).abs().max())
        for key, value in leader["weights"].items()
        if value.is_floating_point()
    )
    assert largest <= WEIGHT_TOLERANCE
    assert leader["val_loss"] == pytest.approx(one["val_loss"], rel=LOSS_TOLERANCE)


def test_a_rollback_on_two_ranks_culls_on_both_and_keeps_them_identical(tmp_path: Path) -> None:
    """A seed that turns to NaN mid-blending does so on both ranks; the summed loss is NaN on both, the leader rolls
    back and culls, and the follower takes the leader's restored state."""
    overrides = ["run.epochs=6", 'urza.catalogs=["saboteur"]', *schedule(1, blueprint="BP990")]
    two = run_harness(tmp_path, "rollback", overrides, nproc=2, ESPER_TEST_SABOTEUR="1")
    leader, follower = two[0], two[1]
    assert leader["rollbacks"] == follower["rollbacks"] == 1
    assert leader["lifecycle"] == follower["lifecycle"]
    for key, value in leader["weights"].items():
        assert torch.equal(value, follower["weights"][key]), key
    record = read_record(tmp_path / "rollback" / "runs" / "run")
    (rollback,) = [entry for entry in record if entry["kind"] == "rollback"]
    assert rollback["culled"] == ["layers.0"]
    assert [entry["epoch"] for entry in record if entry["kind"] == "epoch"] == [1, 2, 3, 4, 5, 6]


KILLABLE = ["run.synthetic.samples=40000", "run.epochs=5", *schedule(1, 2)]
#: Where rank 1 is killed: halfway through epoch 4 (313 global steps of 128), after checkpoint 3, seeds in flight.
HOLD = "4:157"


def test_a_killed_rank_stops_the_other_and_the_run_resumes_exactly_on_two_ranks(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole"
    assert main([*esper_arguments(whole, *KILLABLE), "--nproc", "2"]) == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    arguments = [str(killed), HOLD, "--", *esper_arguments(killed, *KILLABLE)]
    with Child(torchrun(harness(tmp_path), *arguments), env=environment()) as launcher:
        launcher.wait_for("rank 1 holding", deadline_s=600)
        os.kill(int((killed / "rank-1.pid").read_text()), signal.SIGKILL)
        started = time.monotonic()
        status = launcher.process.wait(timeout=120)
        stopped_after = time.monotonic() - started
    assert status != 0, "the launcher must report the lost rank"
    assert stopped_after < 60, f"the other rank took {stopped_after:.0f} s to stop"
    told = capfd.readouterr().err
    # Rank 0 either sees the exchange fail, or is stopped by torchrun first: one line says which, and how to resume.
    assert "rank 0: another process of the run" in told or "rank 0: torchrun stopped this process" in told
    assert f"the last checkpoint is resumable: esper run --resume {killed / 'run'} --nproc 2" in told
    run_dir = killed / "run"
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints[-1] == "epoch-0003.pt", f"the kill must land in epoch 4, after checkpoint 3: {checkpoints}"
    assert main(["run", "--quiet", "--resume", str(run_dir), "--nproc", "2"]) == 0
    expected, resumed = final_weights(whole / "run"), final_weights(run_dir)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert stable(read_record(run_dir)) == stable(read_record(whole / "run"))


def test_accumulation_bf16_clipping_and_a_schedule_keep_two_ranks_identical(tmp_path: Path) -> None:
    """The loop's features on two ranks: micro-batches skip the gradient exchange but the last (no_sync), bf16
    autocast, clipping after the exchange, and a warm-up + cosine schedule that includes the seed's group."""
    overrides = [
        "run.epochs=4", *schedule(1), "tolaria.accumulation_steps=3", "tolaria.precision=bf16",
        "tolaria.gradient_clip=0.5", "tolaria.lr_schedule=cosine", "tolaria.lr_warmup_steps=10",
    ]  # fmt: skip
    two = run_harness(tmp_path, "features", overrides, nproc=2)
    leader, follower = two[0], two[1]
    assert leader["lifecycle"] == follower["lifecycle"]
    assert any(stage != lifecycle.DORMANT for point in leader["lifecycle"] for (_, stage, *_) in point)
    for key, value in leader["weights"].items():
        assert torch.equal(value, follower["weights"][key]), key
