"""Collection on several workers through Oona on a real Redis (127.0.0.1): ``esper serve simic-worker`` processes
train the ground runs ``esper simic collect --distributed`` asks for; a worker killed mid-run costs nothing but time:
another claims its run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from esper_core.oona.redis_backend import RedisBackend
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import RedisServer, wait_until
from esper_simic.replay import ReplayStore

from remote_runs import SECRET, bus_settings, stop_all, stream_of
from simic_runs import GROUND

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env[SECRET_ENV_VAR] = SECRET
    return env


def start_worker(bus: Sequence[str], runs: Path, log: Path) -> subprocess.Popen[bytes]:
    settings = [*bus, f"simic.worker.runs_dir={runs}", "weatherlight.health_interval_s=0.5"]
    command = [sys.executable, "-m", "esper_core.cli.main", "serve", "simic-worker"]
    command += [item for setting in settings for item in ("--set", setting)]
    return subprocess.Popen(command, env=environment(), stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(started)


def wait_for_workers(url: str, bus: Sequence[str]) -> None:
    """Until the workers' consumer group exists on the jobs stream (made when a worker is built)."""
    backend = RedisBackend(url)

    def ready() -> bool:
        try:
            backend.pending_count(stream_of(bus, "simic_jobs"), "simic-worker")
        except LookupError:
            return False
        return True

    try:
        wait_until(ready, what="the simic-worker group on the jobs stream", timeout_s=60)
    finally:
        backend.close()


def collect(workspace: Path, bus: Sequence[str], episodes: int) -> subprocess.CompletedProcess[str]:
    settings = [*GROUND, *bus, f"simic.workspace={workspace}"]
    command = [sys.executable, "-m", "esper_core.cli.main", "simic", "collect", "--distributed", "--episodes",
               str(episodes), "--timeout", "120"]  # fmt: skip
    command += [item for setting in settings for item in ("--set", setting)]
    return subprocess.run(command, env=environment(), capture_output=True, text=True, check=False, timeout=600)


def test_workers_share_the_runs_and_a_killed_one_is_replaced(
    tmp_path: Path, redis_server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    bus = [*bus_settings(redis_server.url), "oona.claim_idle_ms=1000"]
    log = tmp_path / "workers.log"
    workers += [start_worker(bus, tmp_path / f"worker-{n}", log) for n in range(2)]
    wait_for_workers(redis_server.url, bus)

    def kill_the_first_worker_mid_run() -> None:
        wait_until(lambda: any((tmp_path / "worker-0").glob("*/record.log")), what="worker 0 training", timeout_s=120)
        workers[0].send_signal(signal.SIGKILL)

    workspace = tmp_path / "simic"
    killer = threading.Thread(target=kill_the_first_worker_mid_run, daemon=True)
    killer.start()
    started = time.monotonic()
    result = collect(workspace, bus, 6)
    killer.join(timeout=5)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + log.read_text()[-3000:]
    assert "collected 6 episodes" in result.stdout and "0 failed" in result.stdout
    assert workers[0].poll() is not None, "the first worker was killed during the collection"
    with ReplayStore(workspace / "replay", _digest(workspace)) as store:
        episodes = store.episodes()
    assert sorted(e.episode_id for e in episodes) == [f"ground-0-{i:05d}" for i in range(6)]
    assert all(e.outcome["worker"].startswith("simic-worker-") and e.steps for e in episodes)
    assert time.monotonic() - started < 300


def _digest(workspace: Path) -> str:
    return str(json.loads((workspace / "replay" / "store.json").read_text())["schema_digest"])
