"""The Weatherlight supervisor: runs services in worker threads, restarts crashed ones, reports health.

Each service runs in its own thread through :meth:`Service.run(stop) <esper_core.protocols.Service.run>`. Every
(re)start builds a fresh service from its factory, so a crashed service never continues with half-updated state.

- **Crash** (the factory or ``run`` raises): the worker records the error, counts a restart, and waits
  ``min(cap, initial · 2^(n−1))`` plus up to ``jitter`` of that (n = consecutive crashes; a service that ran for
  ``backoff_reset_after_s`` starts from ``initial`` again) before building the service anew. The wait ends early
  when the supervisor stops.
- **Return** without being asked to stop: the service is finished; it is not restarted, and the system is degraded.
- **Health**: every ``health_interval_s`` a ``TelemetryPacket`` from source ``weatherlight`` goes on the bus, with
  ``weatherlight.*`` metrics (per worker: running, backing off, restarts, current backoff; labelled by worker),
  the bus's own ``oona.*`` counters and queue depths, and the indicators ``system_mode`` (``operational`` when every
  worker is running, else ``degraded``), ``workers_running``, ``workers_backing_off`` and ``workers_total``. A crash
  adds an ERROR event ``worker_crashed``, which makes the packet HIGH priority (the emergency stream).
- **Shutdown**: setting the stop event (``esper serve`` does it on SIGINT/SIGTERM) lets every service finish the
  message it is handling, acknowledge it and return; messages not yet acknowledged stay pending on the bus and are
  redelivered (claimed) later, so nothing is lost. :meth:`Weatherlight.run` waits up to ``shutdown_timeout_s``.

Weatherlight has no business logic of its own: what a service does is entirely the service's.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from esper_core.errors import EsperError
from esper_core.leyline import HealthStatus, TelemetryPacket
from esper_core.telemetry import ERROR, INFO, WARNING, Event, Metric, build_telemetry_packet
from esper_core.weatherlight.options import WeatherlightOptions

if TYPE_CHECKING:
    from esper_core.oona import Oona
    from esper_core.protocols import Service

logger = logging.getLogger("esper.weatherlight")

STARTING = "starting"
RUNNING = "running"
BACKING_OFF = "backing_off"
FINISHED = "finished"
STOPPED = "stopped"

OPERATIONAL = "operational"
DEGRADED = "degraded"

ServiceFactory = Callable[[], "Service"]


def backoff_delay(consecutive_crashes: int, options: WeatherlightOptions, rng: random.Random) -> float:
    """Seconds to wait before restarting a service that crashed ``consecutive_crashes`` times in a row (≥ 1)."""
    exponent = min(max(consecutive_crashes, 1) - 1, 62)
    base = min(options.backoff_max_s, options.backoff_initial_s * 2.0**exponent)
    return base * (1.0 + options.backoff_jitter * rng.random())


@attrs.frozen
class WorkerStatus:
    """One worker as the health summary sees it."""

    name: str
    state: str
    restart_count: int
    last_error: str
    #: Wall-clock time (``time.time()``) of the last crash, or None.
    last_error_at: float | None
    #: The wait before the pending restart (0 unless backing off).
    backoff_s: float

    @property
    def up(self) -> bool:
        return self.state in (STARTING, RUNNING)


@attrs.frozen
class HealthSummary:
    system_mode: str
    workers: tuple[WorkerStatus, ...]
    uptime_s: float

    @property
    def running(self) -> int:
        return sum(worker.up for worker in self.workers)

    @property
    def backing_off(self) -> int:
        return sum(worker.state == BACKING_OFF for worker in self.workers)


class _Worker:
    def __init__(self, name: str, factory: ServiceFactory, supervisor: Weatherlight) -> None:
        self.name = name
        self.factory = factory
        self.supervisor = supervisor
        self.state = STARTING
        self.restart_count = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.backoff_s = 0.0
        self.thread = threading.Thread(target=self._loop, name=f"weatherlight-{name}", daemon=True)

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            self.name, self.state, self.restart_count, self.last_error, self.last_error_at, self.backoff_s
        )

    def _loop(self) -> None:
        stop = self.supervisor.stop_event
        options = self.supervisor.options
        consecutive = 0
        while not stop.is_set():
            self.state = STARTING
            started = time.monotonic()
            service: Service | None = None
            try:
                service = self.factory()
                self.state = RUNNING
                service.run(stop)
            except Exception as error:
                _close(service, self.name)
                if time.monotonic() - started >= options.backoff_reset_after_s:
                    consecutive = 0
                consecutive += 1
                self.restart_count += 1
                self.last_error = f"{type(error).__name__}: {error}"
                self.last_error_at = time.time()
                self.backoff_s = backoff_delay(consecutive, options, self.supervisor.rng)
                logger.error(
                    "service %s crashed (%s); restart %d in %.2f s",
                    self.name,
                    self.last_error,
                    self.restart_count,
                    self.backoff_s,
                    exc_info=error,
                )
                self.supervisor.record_event(
                    Event(
                        "worker_crashed",
                        f"service {self.name} crashed: {self.last_error}",
                        ERROR,
                        {"worker": self.name, "restart_in_s": f"{self.backoff_s:.3f}"},
                    )
                )
                self.state = BACKING_OFF  # after the event, so a health packet showing the backoff also has its cause
                stop.wait(self.backoff_s)
                self.backoff_s = 0.0
                continue
            _close(service, self.name)
            if not stop.is_set():
                self.state = FINISHED
                logger.warning("service %s returned without being asked to stop; it is not restarted", self.name)
                self.supervisor.record_event(
                    Event("worker_finished", f"service {self.name} returned on its own", WARNING, {"worker": self.name})
                )
                return
        self.state = STOPPED


def _close(service: object, name: str) -> None:
    close = getattr(service, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("closing service %s failed", name)


class Weatherlight:
    """Supervises ``services`` (name → factory of a :class:`~esper_core.protocols.Service`).

    Itself a service: :meth:`run` works until ``stop`` is set, then shuts the workers down.

    :param bus: where health packets go (and what housekeeping trims); None runs without telemetry.
    """

    name = "weatherlight"

    def __init__(
        self,
        services: Mapping[str, ServiceFactory],
        *,
        options: WeatherlightOptions | None = None,
        bus: Oona | None = None,
        rng: random.Random | None = None,
        extra_metrics: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        if not services:
            raise EsperError("Weatherlight needs at least one service to supervise")
        self.options = options or WeatherlightOptions()
        self.bus = bus
        self.rng = rng or random.Random()
        self.stop_event = threading.Event()
        self._extra_metrics = extra_metrics
        self._workers = [_Worker(name, factory, self) for name, factory in services.items()]
        self._events: list[Event] = []
        self._events_lock = threading.Lock()
        self._started_at: float | None = None
        self.health_packets_published = 0
        self.health_publish_failures = 0

    # -- running ----------------------------------------------------------------------------------------------
    def start(self, stop: threading.Event | None = None) -> None:
        """Start every worker thread (``stop``, when given, becomes the event that stops them)."""
        if self._started_at is not None:
            raise EsperError("this Weatherlight was already started; create a new one")
        if stop is not None:
            self.stop_event = stop
        self._started_at = time.monotonic()
        for worker in self._workers:
            worker.thread.start()
        logger.info("weatherlight started %s", ", ".join(worker.name for worker in self._workers))

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set, publishing health and doing housekeeping; then shut down.

        Raises :class:`~esper_core.errors.EsperError` naming the services that did not return within
        ``shutdown_timeout_s`` (their unacknowledged messages stay pending on the bus for redelivery).
        """
        self.start(stop)
        options = self.options
        next_health = time.monotonic()
        next_housekeeping = next_health + options.housekeeping_interval_s
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_health:
                self.publish_health()
                next_health = now + options.health_interval_s
            if now >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = now + options.housekeeping_interval_s
            stop.wait(max(0.0, min(next_health, next_housekeeping) - time.monotonic()))
        stuck = self.shutdown()
        if stuck:
            raise EsperError(
                f"services {', '.join(stuck)} did not stop within {options.shutdown_timeout_s:g} s "
                "(weatherlight.shutdown_timeout_s); their unacknowledged messages stay pending and will be redelivered"
            )

    def shutdown(self, timeout_s: float | None = None) -> list[str]:
        """Set the stop event and wait (bounded) for every worker; return the names of those still running."""
        self.stop_event.set()
        deadline = time.monotonic() + (self.options.shutdown_timeout_s if timeout_s is None else timeout_s)
        for worker in self._workers:
            if worker.thread.is_alive() or worker.thread.ident is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [worker.name for worker in self._workers if worker.thread.is_alive()]
        logger.info("weatherlight stopped%s", f"; still running: {', '.join(stuck)}" if stuck else " cleanly")
        return stuck

    def _housekeeping(self) -> None:
        if self.bus is None:
            return
        try:
            self.bus.housekeeping()
        except EsperError as error:
            logger.warning("bus housekeeping failed: %s", error)

    # -- health -----------------------------------------------------------------------------------------------
    def record_event(self, event: Event) -> None:
        with self._events_lock:
            self._events.append(event)

    def health(self) -> HealthSummary:
        workers = tuple(worker.status() for worker in self._workers)
        mode = OPERATIONAL if all(worker.up for worker in workers) else DEGRADED
        uptime = 0.0 if self._started_at is None else time.monotonic() - self._started_at
        return HealthSummary(mode, workers, uptime)

    def health_packet(self, *, drain_events: bool = True) -> TelemetryPacket:
        summary = self.health()
        if drain_events:
            with self._events_lock:
                events, self._events = self._events, []
        else:
            with self._events_lock:
                events = list(self._events)
        metrics: list[Metric] = [
            Metric("weatherlight.uptime_s", summary.uptime_s, "s"),
            Metric("weatherlight.workers.total", float(len(summary.workers))),
            Metric("weatherlight.workers.running", float(summary.running)),
            Metric("weatherlight.workers.backing_off", float(summary.backing_off)),
            Metric("weatherlight.workers.restarts_total", float(sum(w.restart_count for w in summary.workers))),
            Metric("weatherlight.operational", float(summary.system_mode == OPERATIONAL)),
            Metric("weatherlight.health.publish_failures", float(self.health_publish_failures)),
        ]
        for worker in summary.workers:
            label = {"worker": worker.name}
            metrics += [
                Metric("weatherlight.worker.running", float(worker.up), attributes=label),
                Metric("weatherlight.worker.backing_off", float(worker.state == BACKING_OFF), attributes=label),
                Metric("weatherlight.worker.restarts", float(worker.restart_count), attributes=label),
                Metric("weatherlight.worker.backoff_s", worker.backoff_s, "s", attributes=label),
            ]
        metrics += [Metric(name, value) for name, value in self._bus_metrics().items()]
        crashed = [worker for worker in summary.workers if worker.state == BACKING_OFF]
        degraded = summary.system_mode == DEGRADED
        if degraded:
            down = [worker.name for worker in summary.workers if not worker.up]
            reason = "backoff" if crashed else "stopped"
            health_summary = f"{reason}: {', '.join(down)}"
        elif events:
            health_summary = "recent_error"
        else:
            health_summary = "steady"
        return build_telemetry_packet(
            source="weatherlight",
            metrics=metrics,
            events=events,
            level=max([WARNING if degraded else INFO, *(event.level for event in events)]),
            health=HealthStatus.HEALTH_STATUS_DEGRADED if degraded or events else HealthStatus.HEALTH_STATUS_HEALTHY,
            health_summary=health_summary,
            indicators={
                "system_mode": summary.system_mode,
                "workers_running": str(summary.running),
                "workers_backing_off": str(summary.backing_off),
                "workers_total": str(len(summary.workers)),
            },
        )

    def _bus_metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.bus is not None:
            try:
                values.update(self.bus.metrics())
                backend_metrics = getattr(self.bus.backend, "metrics", None)
                if callable(backend_metrics):
                    values.update(backend_metrics())
            except EsperError as error:
                logger.warning("bus metrics unavailable: %s", error)
        if self._extra_metrics is not None:
            values.update(self._extra_metrics())
        return values

    def publish_health(self) -> TelemetryPacket | None:
        """Build a health packet and publish it on the bus (the packet is returned; None when publishing failed)."""
        packet = self.health_packet(drain_events=False)
        if self.bus is None:
            with self._events_lock:
                self._events.clear()
            return packet
        try:
            self.bus.publish(packet, priority=packet.priority)
        except EsperError as error:
            self.health_publish_failures += 1
            logger.warning("could not publish the health packet (events kept for the next one): %s", error)
            return None
        with self._events_lock:
            del self._events[: len(packet.events)]
        self.health_packets_published += 1
        return packet

    def statuses(self) -> dict[str, WorkerStatus]:
        return {worker.name: worker.status() for worker in self._workers}
