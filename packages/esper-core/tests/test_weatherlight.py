"""Weatherlight: restart with backoff, health telemetry, bounded shutdown, preflight, and services over Redis."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from esper_core import hookimpl
from esper_core.errors import EsperError
from esper_core.leyline import FieldReport, HealthStatus, MessagePriority, TelemetryPacket
from esper_core.oona import BusMessage, MemoryBackend, Oona, OonaOptions, StreamNames
from esper_core.oona.redis_backend import RedisBackend
from esper_core.plugins import BuildContext, Registry, ServiceSpec
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.telemetry import ERROR
from esper_core.testing.servers import RedisServer, free_port, require_module, wait_until
from esper_core.weatherlight import (
    DEGRADED,
    OPERATIONAL,
    PreflightError,
    Weatherlight,
    WeatherlightOptions,
    backoff_delay,
    build_weatherlight,
    preflight,
)

SECRET = "weatherlight-test-secret-0123456789"
QUICK = WeatherlightOptions(backoff_initial_s=0.01, backoff_max_s=0.05, backoff_jitter=0.0, shutdown_timeout_s=5.0)


def wait_for(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Poll ``condition`` until it holds (a generous deadline fails only a test that would otherwise hang)."""
    wait_until(condition, what=what)


class Flaky:
    """Crashes on its first ``crashes`` runs (counted across rebuilds), then works until stopped."""

    name = "flaky"

    def __init__(self, runs: list[int], crashes: int) -> None:
        self.runs = runs
        self.crashes = crashes

    def run(self, stop: threading.Event) -> None:
        self.runs.append(1)
        if len(self.runs) <= self.crashes:
            raise RuntimeError(f"crash {len(self.runs)}")
        stop.wait()


class Idle:
    name = "idle"

    def run(self, stop: threading.Event) -> None:
        stop.wait()


@pytest.fixture
def supervisor_thread() -> Iterator[Callable[[Weatherlight], threading.Event]]:
    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(supervisor: Weatherlight) -> threading.Event:
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
        thread.start()
        running.append((thread, stop))
        return stop

    yield start
    for thread, stop in running:
        stop.set()
        thread.join(10)


# -- backoff ---------------------------------------------------------------------------------------------------
def test_backoff_doubles_from_one_second_to_the_cap_with_at_most_25_percent_jitter() -> None:
    options = WeatherlightOptions()
    rng = random.Random(7)
    for crashes, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0), (10_000, 30.0)]:
        for _ in range(50):
            assert base <= backoff_delay(crashes, options, rng) <= base * 1.25
    assert backoff_delay(1, WeatherlightOptions(backoff_jitter=0.0), rng) == 1.0


# -- supervision -----------------------------------------------------------------------------------------------
def test_a_crashed_service_is_rebuilt_and_restarted_with_backoff(
    supervisor_thread: Callable[[Weatherlight], threading.Event],
) -> None:
    runs: list[int] = []
    builds: list[Flaky] = []

    def build() -> Flaky:
        builds.append(Flaky(runs, crashes=2))
        return builds[-1]

    supervisor = Weatherlight({"flaky": build, "idle": Idle}, options=QUICK)
    stop = supervisor_thread(supervisor)
    wait_for(lambda: len(runs) == 3 and supervisor.statuses()["flaky"].state == "running")
    status = supervisor.statuses()["flaky"]
    assert status.restart_count == 2
    assert status.last_error == "RuntimeError: crash 2" and status.last_error_at is not None
    assert len(builds) == 3  # a fresh service object per start
    assert supervisor.health().system_mode == OPERATIONAL
    stop.set()
    wait_for(lambda: all(s.state == "stopped" for s in supervisor.statuses().values()))


def test_a_service_backing_off_makes_the_system_degraded_and_its_crash_an_urgent_event() -> None:
    bus = Oona(MemoryBackend(), signing_key=SigningKey.generate(), group="ops", consumer="ops-1")
    bus.subscribe([bus.streams.emergency])  # before the health packet is published: a new group starts at the end

    class Broken:
        name = "broken"

        def run(self, stop: threading.Event) -> None:
            raise ConnectionError("database unreachable")

    supervisor = Weatherlight(
        {"broken": Broken, "idle": Idle}, options=WeatherlightOptions(backoff_initial_s=30.0), bus=bus
    )
    supervisor.start()
    try:
        wait_for(lambda: supervisor.statuses()["broken"].state == "backing_off")
        status = supervisor.statuses()["broken"]
        assert 30.0 <= status.backoff_s <= 37.5
        packet = supervisor.publish_health()
        assert packet is not None
        health = packet.system_health
        assert health.indicators["system_mode"] == DEGRADED
        assert health.indicators["workers_running"] == "1" and health.indicators["workers_backing_off"] == "1"
        assert health.status == HealthStatus.HEALTH_STATUS_DEGRADED and health.summary == "backoff: broken"
        (event,) = packet.events
        assert event.name == "worker_crashed" and event.level == ERROR and event.attributes["worker"] == "broken"
        assert packet.priority == MessagePriority.MESSAGE_PRIORITY_HIGH
        (message,) = bus.poll([bus.streams.emergency])  # HIGH priority: the emergency stream
        assert isinstance(message.payload, TelemetryPacket) and message.payload.source_subsystem == "weatherlight"
        metrics = {(m.name, m.attributes.get("worker", "")): m.value for m in packet.metrics}
        assert metrics[("weatherlight.worker.backing_off", "broken")] == 1.0
        assert metrics[("weatherlight.worker.restarts", "broken")] == 1.0
        assert metrics[("weatherlight.workers.running", "")] == 1.0
        assert ("oona.published", "") in metrics
        assert not supervisor.publish_health().events  # type: ignore[union-attr]  # each crash is reported once
    finally:
        assert supervisor.shutdown() == []  # the backoff wait ends as soon as the stop event is set


def test_health_is_published_on_the_telemetry_stream_every_interval(
    supervisor_thread: Callable[[Weatherlight], threading.Event],
) -> None:
    key = SigningKey.generate()
    backend = MemoryBackend()
    bus = Oona(backend, signing_key=key, group="weatherlight", consumer="w")
    observer = Oona(backend, signing_key=key, group="observer", consumer="o")
    observer.subscribe([observer.streams.telemetry])
    supervisor = Weatherlight({"idle": Idle}, options=WeatherlightOptions(health_interval_s=0.05), bus=bus)
    supervisor_thread(supervisor)
    packets: list[TelemetryPacket] = []

    def collect() -> bool:
        packets.extend(m.payload for m in observer.poll([observer.streams.telemetry]))  # type: ignore[misc]
        return len(packets) >= 3

    wait_for(collect)
    assert {packet.source_subsystem for packet in packets} == {"weatherlight"}
    assert packets[-1].system_health.indicators["system_mode"] == OPERATIONAL
    assert packets[-1].system_health.status == HealthStatus.HEALTH_STATUS_HEALTHY


def test_a_service_that_returns_on_its_own_is_not_restarted() -> None:
    class Quitter:
        name = "quitter"

        def run(self, stop: threading.Event) -> None:
            return None

    builds: list[Quitter] = []

    def build() -> Quitter:
        builds.append(Quitter())
        return builds[-1]

    supervisor = Weatherlight({"quitter": build, "idle": Idle}, options=QUICK)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.statuses()["quitter"].state == "finished")
        # Its worker thread ends, while the supervisor runs on: nothing is left that could restart it.
        wait_for(
            lambda: not any(thread.name == "weatherlight-quitter" for thread in threading.enumerate()),
            "the quitter's worker thread ended",
        )
        assert not supervisor.stop_event.is_set()
        assert len(builds) == 1 and supervisor.statuses()["quitter"].restart_count == 0
        assert supervisor.health().system_mode == DEGRADED
        assert [event.name for event in supervisor.health_packet().events] == ["worker_finished"]
    finally:
        supervisor.shutdown()


def test_shutdown_is_bounded_and_names_a_service_that_ignores_the_stop_event() -> None:
    release = threading.Event()
    running = threading.Event()

    class Stubborn:
        name = "stubborn"

        def run(self, stop: threading.Event) -> None:
            running.set()
            release.wait(60)

    supervisor = Weatherlight({"stubborn": Stubborn}, options=WeatherlightOptions(shutdown_timeout_s=0.2))
    stop = threading.Event()

    def stop_once_running() -> None:  # asked to stop only once the service is in its run()
        running.wait(60)
        stop.set()

    stopper = threading.Thread(target=stop_once_running, daemon=True)
    stopper.start()
    try:
        with pytest.raises(EsperError, match=r"stubborn did not stop within 0\.2 s"):
            supervisor.run(stop)
        assert supervisor.statuses()["stubborn"].state == "running"
    finally:
        release.set()
        stop.set()


def test_a_service_is_closed_after_each_run() -> None:
    closed: list[str] = []

    class Closing:
        name = "closing"

        def run(self, stop: threading.Event) -> None:
            stop.wait()

        def close(self) -> None:
            closed.append("closed")

    supervisor = Weatherlight({"closing": Closing}, options=QUICK)
    supervisor.start()
    wait_for(lambda: supervisor.statuses()["closing"].state == "running")
    assert supervisor.shutdown() == []
    assert closed == ["closed"]


# -- preflight ---------------------------------------------------------------------------------------------------
def _services_plugin(**spec_options: Any) -> object:
    class Plugin:
        @hookimpl
        def esper_weatherlight_services(self) -> list[ServiceSpec]:
            return [
                ServiceSpec(name="idle", factory=lambda context: Idle()),
                ServiceSpec(name="picky", factory=lambda context: Idle(), **spec_options),
            ]

    return Plugin()


def test_preflight_reports_every_problem_at_once(register_plugin: Any, esper_registry: Registry) -> None:
    require_module("redis", "pip install 'esper-core[redis]'")
    register_plugin(
        _services_plugin(
            requires=("json", "no_such_module_for_esper", "no_such_package.sub"),
            preflight=lambda context: ["the model directory /nonexistent is missing"],
        )
    )
    config = esper_registry.load_config(
        env={}, overrides=[f"oona.backend=redis://:pw@127.0.0.1:{free_port()}/0", "oona.redis.retries=0"]
    )
    with pytest.raises(PreflightError) as caught:
        preflight(esper_registry, config, ["idle", "picky", "tamiyo-typo"], env={})
    problems = caught.value.problems
    assert len(problems) == 6, problems
    message = str(caught.value)
    assert "preflight found 6 problems; nothing was started" in message
    assert "service 'tamiyo-typo': no installed plugin provides a service named 'tamiyo-typo'" in message
    assert f"secret: {SECRET_ENV_VAR} is not set" in message
    assert "bus (oona.backend = 'redis://:***@127.0.0.1:" in message and "unavailable" in message
    assert "'no_such_module_for_esper', which is not installed" in message
    assert "'no_such_package.sub', which is not installed" in message
    assert "service 'picky': the model directory /nonexistent is missing" in message
    assert ":pw@" not in message


def test_a_failing_service_check_is_reported_not_raised(register_plugin: Any, esper_registry: Registry) -> None:
    def explode(context: BuildContext) -> list[str]:
        raise OSError("disk on fire")

    register_plugin(_services_plugin(preflight=explode))
    config = esper_registry.load_config(env={})
    with pytest.raises(PreflightError, match="its preflight check raised OSError: disk on fire"):
        preflight(esper_registry, config, ["picky"], env={SECRET_ENV_VAR: SECRET})


def test_preflight_passes_with_a_reachable_redis_and_a_secret(
    register_plugin: Any, esper_registry: Registry, redis_server: RedisServer
) -> None:
    require_module("redis", "pip install 'esper-core[redis]'")
    register_plugin(_services_plugin(requires=("json",), preflight=lambda context: []))
    config = esper_registry.load_config(env={}, overrides=[f"oona.backend={redis_server.url}"])
    prepared = preflight(esper_registry, config, ["idle", "picky"], env={SECRET_ENV_VAR: SECRET})
    try:
        assert [spec.name for spec in prepared.specs] == ["idle", "picky"]
        assert prepared.signing_key == SigningKey.from_secret(SECRET)
        assert prepared.backend_url == redis_server.url
    finally:
        prepared.backend.close()


# -- services over Redis, assembled as `esper serve` does ----------------------------------------------------------
def test_services_on_redis_hand_over_in_flight_work_on_shutdown(
    register_plugin: Any,
    esper_registry: Registry,
    redis_server: RedisServer,
    supervisor_thread: Callable[[Weatherlight], threading.Event],
) -> None:
    """Each service gets its own bus client (group = its name) over one backend; at shutdown every message is
    acknowledged (handled) or still on the stream for the next consumer: none is lost or handled twice."""
    require_module("redis", "pip install 'esper-core[redis]'")
    handled: list[str] = []
    contexts: list[BuildContext] = []
    tenth = threading.Event()

    class Worker:
        name = "worker"

        def __init__(self, context: BuildContext) -> None:
            contexts.append(context)
            self.bus: Oona = context.bus

        def run(self, stop: threading.Event) -> None:
            def handle(message: BusMessage) -> None:
                handled.append(message.payload.report_id)  # type: ignore[attr-defined]
                if len(handled) == 10:  # the shutdown arrives in the middle of a batch
                    tenth.set()
                    stop.wait(60)

            while not stop.is_set():
                self.bus.consume([self.bus.streams.normal], handle, count=4, block_ms=100)

        def close(self) -> None:
            self.bus.close()  # must not close the backend other services share

    class Plugin:
        @hookimpl
        def esper_weatherlight_services(self) -> list[ServiceSpec]:
            return [ServiceSpec(name="worker", factory=Worker), ServiceSpec(name="idle", factory=lambda c: Idle())]

    register_plugin(Plugin())
    streams = StreamNames.prefixed(f"serve.{uuid.uuid4().hex[:10]}")
    config = esper_registry.load_config(
        env={},
        overrides=[f"oona.backend={redis_server.url}", *streams.as_overrides(), "weatherlight.health_interval_s=0.05"],
    )
    prepared = preflight(esper_registry, config, ["worker", "idle"], env={SECRET_ENV_VAR: SECRET})
    producer = Oona(prepared.backend, signing_key=prepared.signing_key, options=config.get(OonaOptions))
    # The service's group, made before the work is published (a group made later would start after it).
    producer.backend.ensure_group(streams.normal, "worker")
    total = 60
    producer.publish_many([FieldReport(report_id=str(i)) for i in range(total)])
    supervisor = build_weatherlight(esper_registry, config, prepared)
    stop = supervisor_thread(supervisor)
    wait_for(tenth.is_set, "the tenth message in hand")
    wait_for(lambda: prepared.backend.length(streams.telemetry) >= 1, "a health packet over Redis")
    stop.set()
    wait_for(lambda: all(s.state == "stopped" for s in supervisor.statuses().values()), "every worker stopped")
    try:
        assert contexts[0].bus.group == "worker" and contexts[0].bus.consumer.startswith("worker-")
        assert contexts[0].signing_key == prepared.signing_key
        # The batch in hand (8-11, read four at a time) was finished; nothing after it was taken.
        assert handled == [str(i) for i in range(12)]
        backend = prepared.backend
        assert backend.pending_count(streams.normal, "worker") == 0  # in-flight work was acknowledged
        successor = Oona(
            backend, signing_key=prepared.signing_key, options=config.get(OonaOptions), group="worker", consumer="next"
        )
        rest = [m.payload.report_id for m in successor.poll([streams.normal], count=total)]  # type: ignore[attr-defined]
        assert sorted(handled + rest, key=int) == [str(i) for i in range(total)]  # the rest waits for the next one
        assert isinstance(backend, RedisBackend)
        backend.ping()  # the shared backend is still open after the service closed its client
    finally:
        prepared.backend.close()
