"""Decisions across processes: a training run with ``tolaria.controller = "remote"`` and ``esper serve tamiyo`` on
a real Redis (started on 127.0.0.1 by the fixture). The service decides and the run applies its signed commands; a
service killed mid-run costs the run a few timed-out (no-op) decisions, never a command applied twice; a service
that crashes under Weatherlight is rebuilt and decisions resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.errors import EsperError
from esper_core.oona import StreamEntry, StreamNames
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import RedisServer, wait_until
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Summary, Trainer

from tolaria_runs import BASE, schedule

pytestmark = pytest.mark.slow

SECRET = "remote-tamiyo-test-secret-0123456789"


def bus_settings(url: str) -> list[str]:
    """The bus of one test: the shared Redis, streams of its own (the server lives for the whole session)."""
    streams = StreamNames.prefixed(f"t{uuid.uuid4().hex[:8]}")
    return [f"oona.backend={url}", "oona.claim_idle_ms=500", *streams.as_overrides()]


def service_settings(tmp_path: Path) -> list[str]:
    """What the service decides with: the fixed schedule germinating at epoch 2, then advancing every epoch."""
    return [*schedule(2), f"tamiyo.service.data_dir={tmp_path / 'tamiyo'}", "weatherlight.health_interval_s=0.5"]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    return SECRET


def start_service(bus: Sequence[str], settings: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env[SECRET_ENV_VAR] = SECRET
    arguments = [item for setting in (*bus, *settings) for item in ("--set", setting)]
    command = [sys.executable, "-m", "esper_core.cli.main", "serve", "tamiyo", *arguments]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def services() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


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


def applied(record: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in record if entry["kind"] == "decision" and entry["status"] == "APPLIED"]


def test_a_run_grows_on_the_decisions_of_a_service_in_another_process(
    tmp_path: Path, redis_server: RedisServer, secret: str, services: list[subprocess.Popen[bytes]]
) -> None:
    bus = bus_settings(redis_server.url)
    services.append(start_service(bus, service_settings(tmp_path), tmp_path / "service.log"))
    wait_for_service(redis_server.url, bus, 0)
    trainer = remote_run(tmp_path, bus, "run.epochs=9")
    summary = fit(trainer)
    record = read_record(trainer.run.run_dir)
    decisions = applied(record)
    assert [d["operation"] for d in decisions][:6] == [
        "germinate", "start_training", "start_grafting", "stabilize", "evaluate", "fossilize",
    ]  # fmt: skip
    assert all(d["policy"] == "fixed-schedule" for d in decisions)
    assert summary.fossilized == 1
    assert [entry for entry in record if entry["kind"] == "field_report"], "the service's field reports came back"
    assert (tmp_path / "tamiyo" / trainer.run.run_id / "tamiyo" / "field_reports.log").exists()


def test_the_remote_controller_refuses_to_start_without_the_shared_secret(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV_VAR, raising=False)
    with pytest.raises(EsperError, match=f"{SECRET_ENV_VAR} is not set"):  # any run on a shared bus needs it
        remote_run(tmp_path, bus_settings(redis_server.url))


def test_a_service_killed_mid_run_costs_timeouts_and_never_a_command_twice(
    tmp_path: Path, redis_server: RedisServer, secret: str, services: list[subprocess.Popen[bytes]]
) -> None:
    bus = bus_settings(redis_server.url)
    log = tmp_path / "service.log"
    services.append(start_service(bus, service_settings(tmp_path), log))
    wait_for_service(redis_server.url, bus, 0)
    trainer = remote_run(tmp_path, bus, "run.epochs=14")

    def on_epoch(epoch: int, *_: object) -> None:
        if epoch == 3:  # the service dies; the run's next state packet finds nobody
            services[0].send_signal(signal.SIGKILL)
            services[0].wait()
        if epoch == 5:  # a new one (what systemd or Kubernetes would do) claims what the dead one left pending
            started = time.time_ns()
            services.append(start_service(bus, service_settings(tmp_path), log))
            wait_for_service(redis_server.url, bus, started)

    trainer.on_epoch = on_epoch
    summary = fit(trainer)
    record = read_record(trainer.run.run_dir)
    failures = [entry for entry in record if entry["kind"] == "failure"]
    assert failures and all("controller" in entry["reason"] for entry in failures)
    decisions = applied(record)
    ids = [d["command_id"] for d in decisions]
    assert len(ids) == len(set(ids)), "a command was applied twice"
    after = [e for e in record if e["kind"] == "decision" and e["epoch"] > 5]
    assert all(e["policy"] == "fixed-schedule" for e in after), "the new service decided every later decision point"
    assert summary.epochs == 14 and summary.fossilized == 1, "the seed germinated before the kill still made it"


class FlakyReads:
    """A backend that fails one read with a connection error, as a Redis connection lost mid-read would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = threading.Event()

    def _lose_the_connection_once(self) -> None:
        if self.armed.is_set():
            self.armed.clear()
            raise ConnectionError("injected: connection lost")

    def read(self, *args: Any, **kwargs: Any) -> list[StreamEntry]:
        self._lose_the_connection_once()
        result: list[StreamEntry] = self.inner.read(*args, **kwargs)
        return result

    def request(self, *args: Any, **kwargs: Any) -> tuple[list[str], list[StreamEntry]]:
        self._lose_the_connection_once()
        result: tuple[list[str], list[StreamEntry]] = self.inner.request(*args, **kwargs)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_crashed_service_is_rebuilt_by_weatherlight_and_decisions_resume(
    tmp_path: Path, redis_server: RedisServer, secret: str
) -> None:
    from esper_core.weatherlight.assembly import build_weatherlight
    from esper_core.weatherlight.preflight import preflight

    bus = bus_settings(redis_server.url)
    registry = Registry.create(env={})
    settings = [*bus, *service_settings(tmp_path), "weatherlight.backoff_initial_s=0.2"]
    config = registry.load_config(env={}, overrides=settings)
    prepared = preflight(registry, config, ["tamiyo"])
    flaky = FlakyReads(prepared.backend)
    weatherlight = build_weatherlight(registry, config, attrs.evolve(prepared, backend=flaky))
    stop = threading.Event()
    weatherlight.start(stop)
    try:
        trainer = remote_run(tmp_path, bus, "run.epochs=10")

        def on_epoch(epoch: int, *_: object) -> None:
            if epoch == 3:  # the service's next read loses its connection: it crashes, Weatherlight rebuilds it
                flaky.armed.set()
                wait_until(lambda: weatherlight.health().workers[0].restart_count > 0, what="the service rebuilt")

        trainer.on_epoch = on_epoch
        summary = fit(trainer)
    finally:
        weatherlight.shutdown(5)
    assert weatherlight.health().workers[0].restart_count == 1
    decisions = applied(read_record(trainer.run.run_dir))
    assert max(d["epoch"] for d in decisions) >= 8 and summary.fossilized == 1
