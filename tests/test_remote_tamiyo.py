"""Decisions across processes: a training run with ``tolaria.controller = "remote"`` and ``esper serve tamiyo`` on
a real Redis (started on 127.0.0.1 by the fixture). The service decides and the run applies its signed commands; a
service killed mid-run costs the run a few timed-out (no-op) decisions, never a command applied twice; a service
that crashes under Weatherlight is rebuilt and decisions resume."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.errors import EsperError
from esper_core.oona import StreamEntry
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import RedisServer, wait_until
from esper_core.tolaria.record import read_record

from remote_runs import SECRET, bus_settings, fit, remote_run, start_service, stop_all, wait_for_service
from tolaria_runs import schedule

pytestmark = pytest.mark.slow


def service_settings(tmp_path: Path) -> list[str]:
    """What the service decides with: the fixed schedule germinating at epoch 2, then advancing every epoch."""
    return [*schedule(2), f"tamiyo.service.data_dir={tmp_path / 'tamiyo'}", "weatherlight.health_interval_s=0.5"]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    return SECRET


@pytest.fixture
def services() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(started)


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


def test_a_hung_service_is_an_emergency_drill_the_run_survives(
    tmp_path: Path, redis_server: RedisServer, secret: str, services: list[subprocess.Popen[bytes]]
) -> None:
    """The service hangs (SIGSTOP: alive, reading nothing) for a few epochs: decisions time out, the run enters
    conservative mode and raises ELEVATED on its emergency ladder, and goes on once the service is back."""
    bus = bus_settings(redis_server.url)
    services.append(start_service(bus, service_settings(tmp_path), tmp_path / "service.log"))
    wait_for_service(redis_server.url, bus, 0)
    trainer = remote_run(tmp_path, bus, "run.epochs=9", "tolaria.decision_timeout_s=0.5",
                         "tolaria.failures_to_conservative=2")  # fmt: skip

    def on_epoch(epoch: int, *_: object) -> None:
        if epoch == 2:
            services[0].send_signal(signal.SIGSTOP)
        if epoch == 5:
            services[0].send_signal(signal.SIGCONT)

    trainer.on_epoch = on_epoch
    try:
        summary = fit(trainer)
    finally:
        services[0].send_signal(signal.SIGCONT)  # whatever happened, the fixture must be able to stop it
    record = read_record(trainer.run.run_dir)
    emergencies = [e for e in record if e["kind"] == "emergency"]
    assert emergencies and emergencies[0]["level"] == "ELEVATED" and emergencies[0]["origin"] == "tolaria"
    assert "failed decision points in a row" in emergencies[0]["reason"]
    assert 3 <= emergencies[0]["epoch"] <= 5 and summary.epochs == 9


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
