"""Simic end to end, every step a real process: collect a few synthetic episodes -> train -> evaluate -> publish to
the policy store and Oona (a real Redis on 127.0.0.1) -> a running ``esper serve tamiyo`` with the learned policy
swaps to the published version without a restart, and its decisions change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_core.signing import SECRET_ENV_VAR
from esper_core.storage.policy_store import PolicyStore
from esper_core.testing.servers import RedisServer
from esper_core.tolaria.record import read_record

from remote_runs import SECRET, bus_settings, fit, remote_run, start_service, wait_for_service
from simic_runs import GROUND

pytestmark = pytest.mark.slow

#: The service builds a run's controller (its policy and catalog) on the run's first decision: on a loaded machine
#: that can take longer than the remote runs' usual 2 s timeout, and a timed-out decision is the run's own no-op.
PATIENT = ("tolaria.decision_timeout_s=30",)
#: The served runs are hosts like the training ground's (a learner that cloned the heuristic grows where it did).
GROUND_LIKE = ("run.synthetic.widths=[4, 4]", "run.synthetic.samples=512", "run.synthetic.slots=[]")


def simic(workspace: Path, *arguments: str, settings: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env[SECRET_ENV_VAR] = SECRET
    every = [*GROUND, f"simic.workspace={workspace}", *settings]
    command = [sys.executable, "-m", "esper_core.cli.main", "simic", *arguments]
    command += [item for setting in every for item in ("--set", setting)]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=600)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def decisions(trainer: Any) -> list[dict[str, Any]]:
    return [entry for entry in read_record(trainer.run.run_dir) if entry["kind"] == "decision"]


def test_collect_train_evaluate_publish_and_a_running_service_swaps(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    workspace = tmp_path / "simic"
    bus = bus_settings(redis_server.url)
    log = tmp_path / "service.log"
    service = start_service(bus, ["tamiyo.policy=learned", f"tamiyo.service.data_dir={tmp_path / 'tamiyo'}",
                                  "weatherlight.health_interval_s=0.5"], log)  # fmt: skip
    try:
        wait_for_service(redis_server.url, bus, 0)
        before = remote_run(tmp_path / "before", bus, "run.epochs=6", "run.name=before", *PATIENT, *GROUND_LIKE)
        fit(before)
        untrained = decisions(before)
        assert {d["operation"] for d in untrained} == {"noop"}  # untrained, the learned policy waits
        assert all(d["policy_version"].startswith("untrained-") for d in untrained)

        assert "collected 6 episodes" in ok(simic(workspace, "collect", "--episodes", "6"))
        trained = ok(simic(workspace, "train", "--version", "v1",
                          settings=("simic.train.iterations=0", "simic.train.clone_epochs=150")))  # fmt: skip
        assert "candidate v1: 6 episodes" in trained
        candidate = workspace / "candidates" / "v1"
        curves = json.loads((candidate / "curves.json").read_text())
        # Cloning only: the heuristic grows in the run below, so a policy that learned its decisions grows there too
        # (PPO's own learning is tested in packages/esper-simic/tests: test_ppo, test_trainer, the conformance suite).
        assert len(curves) == 150 and curves[-1]["agreement"] > 0.9
        # A loose tolerance: this test is about the plumbing; the experiment (docs/results.md) is about the numbers.
        evaluated = ok(simic(workspace, "evaluate", str(candidate),
                             settings=("simic.evaluate.runs=2", "simic.evaluate.tolerance=1.0")))  # fmt: skip
        assert "passed" in evaluated and "heuristic" in evaluated
        verdict = json.loads((candidate / "evaluation.json").read_text())
        assert verdict["passed"] and verdict["arms"]["candidate"]["runs"] == 2

        published = ok(simic(workspace, "publish", str(candidate), settings=tuple(bus)))
        assert "published v1" in published and "on the bus's policy stream" in published
        store = PolicyStore(workspace / "policies")
        live = store.live()
        assert live is not None and live.version == "v1"
        assert store.metadata("v1")["evaluation"]["passed"]

        after = remote_run(tmp_path / "after", bus, "run.epochs=10", "run.name=after", *PATIENT, *GROUND_LIKE)
        fit(after)
        swapped = decisions(after)
        assert all(d["policy_version"] == "v1" for d in swapped), "the running service adopted v1"
        assert service.poll() is None, "without a restart"
        assert {d["operation"] for d in swapped} != {"noop"}, "and it decides differently: it grows"
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_simic_commands_say_what_is_missing(tmp_path: Path) -> None:
    workspace = tmp_path / "simic"
    result = simic(workspace, "train")
    assert result.returncode == 2 and "has no usable episode: collect first" in result.stderr
    result = simic(workspace, "publish", str(workspace / "nothing"))
    assert result.returncode == 2 and "holds no candidate" in result.stderr
    result = simic(workspace, "rollback")
    assert result.returncode == 2 and "no version before None" in result.stderr
    result = simic(workspace, "collect", "--behaviour", "learned")
    assert result.returncode == 2 and "nothing is published" in result.stderr
    result = simic(workspace, "collect", "--from", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "skipped:" in result.stdout and "no run record here" in result.stdout
    result = simic(workspace, "collect", "--behaviour", "learned", "--update", str(tmp_path))
    assert result.returncode == 2 and "no policy update there" in result.stderr
    (tmp_path / "junk.update").write_bytes(b"\xff\x00junk")
    result = simic(workspace, "train", "--initial", str(tmp_path / "junk.update"))
    assert result.returncode == 2 and "junk.update is not a readable policy update" in result.stderr
