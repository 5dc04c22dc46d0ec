"""Nissa's ingest: telemetry packets into Prometheus series, alerts and SLOs, in one object.

The ``prometheus`` sink holds one for its run; ``esper serve nissa`` holds one for every trainer and service on the
bus. Both call :meth:`Nissa.observe` with each telemetry packet and nothing else, so a run's metrics and alerts are
the same whichever way they are collected.

Alert transitions go to the configured routes and, when Nissa has a bus, onto it: a telemetry packet from source
``nissa`` with an ``alert_firing`` or ``alert_resolved`` event (a critical alert's packet travels on the emergency
stream), and, for a rule with an emergency level, an ``EmergencySignal`` that Tolaria's emergency ladder answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import CollectorRegistry

from esper_core.leyline import EmergencyLevel, EmergencySignal
from esper_core.telemetry import CRITICAL, ERROR, INFO, WARNING, Event, build_telemetry_packet
from esper_nissa.alerts.engine import AlertEngine, AlertTransition
from esper_nissa.alerts.routes import build_routes
from esper_nissa.alerts.rules import DEFAULT_RULES, AlertRule
from esper_nissa.options import AlertOptions, PrometheusOptions, SloOptions
from esper_nissa.prometheus.exporter import PrometheusExporter
from esper_nissa.prometheus.http import MetricsServer
from esper_nissa.slo import BURN_WINDOWS, Objective, SloTracker

if TYPE_CHECKING:
    from esper_core.leyline import TelemetryPacket

logger = logging.getLogger(__name__)

__all__ = ["Nissa", "configured_rules"]

#: Publishes a message on the bus: (message, priority).
Publisher = Callable[[Any, int], object]


def configured_rules(options: AlertOptions, rules: tuple[AlertRule, ...] = DEFAULT_RULES) -> tuple[AlertRule, ...]:
    """The default rules less ``disabled``, with ``thresholds`` applied; an unknown rule name is a clear error."""
    import attrs

    from esper_core.errors import ConfigError

    names = {rule.name for rule in rules}
    named_by = (("disabled", options.disabled), ("thresholds", list(options.thresholds)))
    for key, named in (*named_by, ("emergencies", list(options.emergencies))):
        unknown = [name for name in named if name not in names]
        if unknown:
            raise ConfigError(
                f"nissa.alerts.{key} names the alert rule {unknown[0]!r}, which does not exist; the rules are "
                f"{', '.join(sorted(names))}"
            )
    return tuple(
        attrs.evolve(
            rule,
            threshold=options.thresholds.get(rule.name, rule.threshold),
            emergency=options.emergencies.get(rule.name, rule.emergency),
        )
        for rule in rules
        if rule.name not in options.disabled
    )


def objectives(options: SloOptions) -> list[Objective]:
    window = options.window_days * 86400.0
    return [
        Objective(
            "decision_latency",
            f"decisions answered within {options.decision_latency_ms:g} ms",
            options.decision_latency_target,
            window,
        ),
        Objective(
            "step_overhead",
            f"decision points whose hook took at most {options.step_overhead_ratio:.0%} of the epoch's training",
            options.step_overhead_target,
            window,
        ),
        Objective(
            "service_availability",
            "Weatherlight reports finding a service running",
            options.availability_target,
            window,
        ),
    ]


class Nissa:
    """Series, alerts and SLOs fed by telemetry packets (see the module)."""

    def __init__(
        self,
        *,
        prometheus: PrometheusOptions | None = None,
        alerts: AlertOptions | None = None,
        slo: SloOptions | None = None,
        publish: Publisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prometheus_options = prometheus or PrometheusOptions()
        self.alert_options = alerts or AlertOptions()
        self.slo_options = slo or SloOptions()
        self.exporter = PrometheusExporter(max_runs=self.prometheus_options.max_runs)
        self.series = self.exporter.series
        self.alerts = (
            AlertEngine(self.series, configured_rules(self.alert_options), clock=clock)
            if self.alert_options.enabled
            else None
        )
        self.routes = build_routes(self.alert_options.routes, self.alert_options.webhook_url) if self.alerts else []
        self.slo = SloTracker(objectives(self.slo_options), clock=clock)
        self.publish = publish
        self.started = clock()
        self.clock = clock
        self.server: MetricsServer | None = None
        self.packets = 0
        #: The registry a scrape reads (the SLO series are brought up to date at each scrape).
        self.registry: CollectorRegistry = _RefreshingRegistry(self)

    # -- ingest -----------------------------------------------------------------------------------------------
    def observe(self, packet: TelemetryPacket) -> list[AlertTransition]:
        """Fold one telemetry packet in; evaluate the alerts if it is a heartbeat; return the alert transitions."""
        self.packets += 1
        self.series.inc("esper_nissa_ingested_total", kind="telemetry")
        if packet.source_subsystem == "nissa":
            return []  # Nissa's own alert packets, read back from the bus: already counted where they were made
        self.exporter.observe(packet)
        values = {point.name: point.value for point in packet.metrics if not point.attributes}
        changes: list[AlertTransition] = []
        if packet.source_subsystem == "tolaria" and "tolaria.epoch.seconds" in values:
            self._step_overhead(values)
            if self.alerts is not None:
                changes = self.alerts.heartbeat(run=packet.training_run_id)
        elif packet.source_subsystem == "weatherlight":
            for point in packet.metrics:
                if point.name == "weatherlight.worker.running":
                    self.slo.record("service_availability", point.value >= 1.0)
            if self.alerts is not None:
                changes = self.alerts.heartbeat(run="")
        if "tamiyo.decision.latency_ms" in values:
            self.slo.record(
                "decision_latency", values["tamiyo.decision.latency_ms"] <= self.slo_options.decision_latency_ms
            )
        self._announce(changes)
        return changes

    def note(self, kind: str) -> None:
        """Count a message of another kind (a field report, a state packet) that ``esper serve nissa`` drained."""
        self.series.inc("esper_nissa_ingested_total", kind=kind)

    def _step_overhead(self, values: dict[str, float]) -> None:
        epoch_s, hook_ms = values["tolaria.epoch.seconds"], values.get("tolaria.epoch_hook.latency_ms")
        if hook_ms is None or epoch_s <= 0:
            return
        self.slo.record("step_overhead", hook_ms / 1000.0 / epoch_s <= self.slo_options.step_overhead_ratio)

    def _announce(self, changes: list[AlertTransition]) -> None:
        for change in changes:
            for route in self.routes:
                route.send(change)
        if not changes or self.publish is None:
            return
        for change in changes:
            alert = change.alert
            firing = change.state == "firing"
            level = {"critical": CRITICAL, "warning": WARNING}.get(alert.rule.severity, INFO) if firing else INFO
            event = Event(
                f"alert_{change.state}",
                alert.summary,
                ERROR if level == CRITICAL else level,
                {
                    "alert": alert.rule.name,
                    "severity": alert.rule.severity,
                    "value": f"{alert.value:g}",
                    **alert.labels,
                },
            )
            packet = build_telemetry_packet(
                source="nissa", events=[event], training_run_id=alert.labels.get("run", ""), level=level
            )
            self._send(packet, packet.priority)
            if firing and alert.rule.emergency and self.alert_options.raise_emergencies:
                signal = EmergencySignal(
                    version=1,
                    level=EmergencyLevel.Value(f"EMERGENCY_LEVEL_{alert.rule.emergency}"),
                    reason=f"alert {alert.rule.name}: {alert.summary}",
                    origin="nissa",
                    training_run_id=alert.labels.get("run", ""),
                    monotonic_ms=int(time.monotonic() * 1000),
                    attributes={"alert": alert.rule.name, **alert.labels},
                )
                signal.triggered_at.GetCurrentTime()
                self._send(signal, 3)  # MESSAGE_PRIORITY_CRITICAL: the emergency stream

    def _send(self, message: Any, priority: int) -> None:
        assert self.publish is not None
        try:
            self.publish(message, priority)
        except Exception as error:  # noqa: BLE001 - the routes have the alert; a bus failure must not reach training
            logger.warning("esper-nissa: could not publish an alert on the bus: %s: %s", type(error).__name__, error)

    # -- reading ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What ``/metrics/summary`` answers: SLOs with budgets and burn rates, firing alerts, what was ingested."""
        slos = self.slo.summary()
        for name, row in slos.items():
            self.series.set("esper_slo_error_budget_remaining_ratio", row["error_budget_remaining"], slo=name)
            for window in BURN_WINDOWS:
                self.series.set("esper_slo_burn_rate", row["burn_rate"][window], slo=name, window=window)
            for result in ("good", "bad"):
                self.series.set("esper_slo_events_total", float(self.slo.totals[name][result]), slo=name, result=result)
        return {
            "uptime_s": self.clock() - self.started,
            "packets": self.packets,
            "series": self.series.series_count(),
            "alerts": [alert.as_dict() for alert in self.alerts.firing()] if self.alerts else [],
            "slo": slos,
        }

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "packets": self.packets, "uptime_s": round(self.clock() - self.started, 3)}

    # -- serving ----------------------------------------------------------------------------------------------
    def serve(self, host: str, port: int, *, setting: str = "nissa.prometheus.address") -> MetricsServer:
        """Serve ``/metrics``, ``/healthz`` and ``/metrics/summary`` on ``host:port`` (0: a free port)."""
        self.server = MetricsServer(
            self.registry, host=host, port=port, summary=self.summary, health=self.health, setting=setting
        )
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for route in self.routes:
            route.close()


class _RefreshingRegistry(CollectorRegistry):
    """The ingest's registry, with the SLO series brought up to date at each scrape."""

    def __init__(self, nissa: Nissa) -> None:
        super().__init__(auto_describe=False)
        self.nissa = nissa
        self.register(nissa.exporter)

    def collect(self) -> Any:
        self.nissa.summary()
        return super().collect()
