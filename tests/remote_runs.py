"""Helpers of the tests that run training against ``esper serve tamiyo`` on a real Redis (on pytest's pythonpath):
the shared secret, a bus of the test's own, starting and waiting for the service, and remote runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from esper_core.oona import StreamNames
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import wait_until
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.trainer import Summary, Trainer

from tolaria_runs import BASE

SECRET = "remote-tamiyo-test-secret-0123456789"


def bus_settings(url: str) -> list[str]:
    """The bus of one test: the shared Redis, streams of its own (the server lives for the whole session)."""
    streams = StreamNames.prefixed(f"t{uuid.uuid4().hex[:8]}")
    return [f"oona.backend={url}", "oona.claim_idle_ms=500", *streams.as_overrides()]


def start_service(
    bus: Sequence[str], settings: Sequence[str], log: Path, name: str = "tamiyo"
) -> subprocess.Popen[bytes]:
    """``esper serve NAME`` in a process of its own, on the test's bus, with the test's secret."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env[SECRET_ENV_VAR] = SECRET
    arguments = [item for setting in (*bus, *settings) for item in ("--set", setting)]
    command = [sys.executable, "-m", "esper_core.cli.main", "serve", name, *arguments]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_for_service(url: str, bus: Sequence[str], after_ns: int, timeout_s: float = 60.0) -> None:
    """Block until a service process is up and reading: a Weatherlight health packet newer than ``after_ns`` is on
    the bus, and the service's consumer group exists on ``decisions`` (made when the service is built: from then
    on, a state packet waits for it on the stream)."""
    from esper_core.leyline import TelemetryPacket
    from esper_core.oona import Oona, OonaOptions
    from esper_core.oona.redis_backend import RedisBackend
    from esper_core.signing import SigningKey

    streams = StreamNames(telemetry=stream_of(bus, "telemetry"), decisions=stream_of(bus, "decisions"))
    watcher = Oona(RedisBackend(url), signing_key=SigningKey.from_secret(SECRET), options=OonaOptions(streams=streams),
                   group=f"watch-{uuid.uuid4().hex[:8]}", consumer="watch")  # fmt: skip
    watcher.subscribe([streams.telemetry], from_start=True)  # a packet sent before the watch began counts too

    def healthy() -> bool:
        for message in watcher.poll([streams.telemetry], count=100, block_ms=200):
            payload = message.payload
            fresh = message.envelope.created_at.ToNanoseconds() > after_ns
            if isinstance(payload, TelemetryPacket) and payload.source_subsystem == "weatherlight" and fresh:
                return True
        return False

    def reading() -> bool:
        try:
            watcher.backend.pending_count(streams.decisions, "tamiyo")
        except LookupError:
            return False
        return True

    try:
        wait_until(healthy, what="a health packet from the Tamiyo service", timeout_s=timeout_s)
        wait_until(reading, what="the Tamiyo service's group on the decisions stream", timeout_s=timeout_s)
    finally:
        watcher.destroy_group([streams.telemetry])
        watcher.close()


def stream_of(bus: Sequence[str], name: str) -> str:
    return next(item.split("=", 1)[1] for item in bus if item.startswith(f"oona.streams.{name}="))


def remote_run(tmp_path: Path, bus: Sequence[str], *overrides: str) -> Trainer:
    registry = Registry.create(env={})
    config = registry.load_config(
        env={},
        overrides=[*BASE, *bus, "tolaria.controller=remote", f"run.runs_dir={tmp_path / 'runs'}", "run.name=remote",
                   "tolaria.decision_timeout_s=2", "run.synthetic.samples=2048",
                   "kasmina.min_contribution=-1", *overrides],
    )  # fmt: skip
    return Trainer(start_run(registry, config))


def fit(trainer: Trainer) -> Summary:
    try:
        return trainer.fit()
    finally:
        trainer.close()


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """SIGTERM each process still running (by pid), SIGKILL one that does not stop within ``timeout_s``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
