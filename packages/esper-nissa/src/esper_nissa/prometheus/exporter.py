"""Telemetry packets into Prometheus series: which packet metric or event feeds which family, and how.

A packet metric is known by its exact name (``tamiyo.decision.latency_ms``) or by a prefix (``oona.queue_depth.``);
names this module does not know are counted (``esper_telemetry_packets_total``) and otherwise ignored, as the
telemetry contract asks of every sink. Units become base units here: milliseconds to seconds, GiB to bytes, percent to
ratios. Running totals (Esper's counts travel as totals since the run started) feed counters by what they added.

Tolaria's decision-point packet holds a full snapshot of the slots (``tolaria.seed.*``): the seed series of that run
are replaced by it, so a culled seed's alpha disappears instead of lingering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from esper_core.leyline import TelemetryLevel, value_name
from esper_nissa.prometheus.series import SeriesStore

if TYPE_CHECKING:
    from prometheus_client.core import Metric as PrometheusFamily

    from esper_core.leyline import MetricPoint, TelemetryEvent, TelemetryPacket

GIB = float(2**30)
#: The families replaced by each decision-point snapshot of the slots.
SEED_SNAPSHOT = (
    "esper_seed_alpha",
    "esper_seed_parameters",
    "esper_seed_contribution",
    "esper_seed_contribution_stderr",
)

Handler = Callable[["PrometheusExporter", "Packet", "MetricPoint"], None]


class Packet:
    """What every handler needs of the packet it reads: the run, the emitter, and a few values of its metrics."""

    __slots__ = ("global_step", "run", "source", "values")

    def __init__(self, packet: TelemetryPacket) -> None:
        self.run = packet.training_run_id
        self.source = packet.source_subsystem
        self.global_step = int(packet.global_step)
        self.values = {point.name: point.value for point in packet.metrics if not point.attributes}


def _gauge(family: str, scale: float = 1.0, **fixed: str) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        exporter.series.set(family, point.value * scale, run=packet.run, source=packet.source, **fixed)

    return handle


def _total(family: str, **fixed: str) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        exporter.series.total(family, point.value, run=packet.run, source=packet.source, **fixed)

    return handle


def _histogram(family: str, scale: float = 1.0) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        exporter.series.observe(family, point.value * scale, run=packet.run, **dict(point.attributes))

    return handle


def _device_gauge(family: str, scale: float = 1.0) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        device = point.attributes.get("device", "")
        exporter.series.set(family, point.value * scale, run=packet.run, device=device)

    return handle


def _worker(family: str, cumulative: bool = False) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        service = point.attributes.get("worker", "")
        if cumulative:
            exporter.series.total(family, point.value, service=service)
        else:
            exporter.series.set(family, point.value, service=service)

    return handle


def _gauge_without_labels(family: str) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        exporter.series.set(family, point.value)

    return handle


def _epoch_seconds(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
    exporter.epoch_seconds(packet, point.value)


def _hook_ms(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
    seconds = point.value / 1000.0
    exporter.series.observe("esper_decision_hook_duration_seconds", seconds, run=packet.run)
    epoch_seconds = packet.values.get("tolaria.epoch.seconds", 0.0)
    if epoch_seconds > 0:
        exporter.series.set("esper_decision_overhead_ratio", seconds / epoch_seconds, run=packet.run)


def _seed_metric(family: str) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        labels = point.attributes
        exporter.series.set(family, point.value, run=packet.run, slot=labels["slot"], blueprint=labels["blueprint"])

    return handle


def _isolation(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
    exporter.series.total(
        "esper_seed_isolation_violations_total", point.value, run=packet.run, slot=point.attributes.get("slot", "")
    )


def _stage(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
    exporter.seed_stage(packet, point.attributes.get("slot", ""), point.attributes.get("stage", ""))


def _urza_fetches(source: str) -> Handler:
    def handle(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
        exporter.series.total("esper_urza_fetches_total", point.value, run=packet.run, source=source)

    return handle


#: Packet metrics by exact name.
METRICS: dict[str, Handler] = {
    "tolaria.training.loss": _gauge("esper_train_loss"),
    "tolaria.training.accuracy": _gauge("esper_train_accuracy_ratio"),
    "tolaria.validation.loss": _gauge("esper_validation_loss"),
    "tolaria.validation.accuracy": _gauge("esper_validation_accuracy_ratio"),
    "tolaria.parameters": _gauge("esper_parameters"),
    "tolaria.compute.total_flops": _gauge("esper_counted_flops"),
    "tolaria.epoch.seconds": _epoch_seconds,
    "tolaria.epoch_hook.latency_ms": _hook_ms,
    "tolaria.rollbacks": _total("esper_rollbacks_total"),
    "tolaria.conservative_mode": _gauge("esper_conservative_mode", subsystem="tolaria"),
    "tolaria.seed.stage": _stage,
    "tolaria.seed.alpha": _seed_metric("esper_seed_alpha"),
    "tolaria.seed.parameters": _seed_metric("esper_seed_parameters"),
    "tolaria.seed.contribution": _seed_metric("esper_seed_contribution"),
    "tolaria.seed.contribution_stderr": _seed_metric("esper_seed_contribution_stderr"),
    "tolaria.slot.isolation_violations": _isolation,
    "tolaria.hardware.cpu_utilization_percent": _gauge("esper_cpu_utilization_ratio", 0.01),
    "tolaria.hardware.memory_available_gb": _device_gauge("esper_memory_available_bytes", GIB),
    "tolaria.hardware.memory_total_gb": _device_gauge("esper_memory_total_bytes", GIB),
    "tolaria.hardware.process_resident_gb": _gauge("esper_process_resident_bytes", GIB),
    "tolaria.hardware.gpu_present": _device_gauge("esper_gpu_present"),
    "tolaria.hardware.gpu_utilization_percent": _device_gauge("esper_gpu_utilization_ratio", 0.01),
    "tolaria.hardware.gpu_temperature_celsius": _device_gauge("esper_gpu_temperature_celsius"),
    "tamiyo.decision.latency_ms": _histogram("esper_decision_latency_seconds", 0.001),
    "tamiyo.decisions.over_budget": _total("esper_decisions_over_budget_total"),
    "tamiyo.conservative_mode": _gauge("esper_conservative_mode", subsystem="tamiyo"),
    "tamiyo.field_reports.open": _gauge("esper_field_reports_open"),
    "oona.published": _total("esper_oona_published_total"),
    "oona.delivered": _total("esper_oona_consumed_total"),
    "oona.retried": _total("esper_oona_retries_total"),
    "oona.dead_lettered": _total("esper_oona_dead_letters_total"),
    "oona.dropped_backpressure": _total("esper_oona_backpressure_drops_total"),
    "oona.dropped_bad_signature": _total("esper_oona_rejected_total", reason="bad_signature"),
    "oona.dropped_malformed": _total("esper_oona_rejected_total", reason="malformed"),
    "urza.fetch.latency_ms": _histogram("esper_urza_fetch_latency_seconds", 0.001),
    "urza.fetch.memory_total": _urza_fetches("memory"),
    "urza.fetch.disk_total": _urza_fetches("disk"),
    "urza.fetch.built_total": _urza_fetches("built"),
    "urza.fetch.over_budget_total": _total("esper_urza_fetches_over_budget_total"),
    "urza.cache.size": _gauge("esper_urza_cache_entries"),
    "urza.cache.evictions_total": _total("esper_urza_cache_evictions_total"),
    "urza.build.failures_total": _total("esper_urza_build_failures_total"),
    "urza.integrity.failures_total": _total("esper_urza_integrity_failures_total"),
    "weatherlight.worker.running": _worker("esper_service_up"),
    "weatherlight.worker.backing_off": _worker("esper_service_backing_off"),
    "weatherlight.worker.restarts": _worker("esper_service_restarts_total", cumulative=True),
    "weatherlight.operational": _gauge_without_labels("esper_weatherlight_operational"),
    "weatherlight.uptime_s": _gauge_without_labels("esper_weatherlight_uptime_seconds"),
}


def _stream_length(exporter: PrometheusExporter, packet: Packet, point: MetricPoint) -> None:
    stream = point.name.removeprefix("oona.queue_depth.")
    exporter.series.set("esper_oona_stream_length", point.value, run=packet.run, source=packet.source, stream=stream)


#: Packet metrics by prefix (the rest of the name is a label).
PREFIXES: dict[str, Handler] = {"oona.queue_depth.": _stream_length}


class PrometheusExporter:
    """Reads telemetry packets into a :class:`SeriesStore`; a prometheus-client ``Collector``.

    ``max_runs`` bounds the runs whose series are kept (the least recently heard-from run is forgotten first), so a
    Nissa that serves many trainers for weeks does not grow without end.
    """

    def __init__(self, *, max_runs: int = 50, series: SeriesStore | None = None) -> None:
        self.series: SeriesStore = series if series is not None else SeriesStore()
        self.max_runs = max_runs
        self._runs: dict[str, None] = {}  # insertion order = least recently heard-from first
        self._last_step: dict[str, int] = {}
        self._stages: dict[tuple[str, str], set[str]] = {}
        self._stage_counts: dict[str, dict[str, int]] = {}

    # -- packets ----------------------------------------------------------------------------------------------
    def observe(self, packet: TelemetryPacket) -> None:
        """Fold one packet into the series."""
        view = Packet(packet)
        if view.run:
            self._touch(view.run)
        series = self.series
        series.inc("esper_telemetry_packets_total", run=view.run, source=view.source)
        series.set(
            "esper_last_packet_timestamp_seconds",
            packet.timestamp.ToNanoseconds() / 1e9,
            run=view.run,
            source=view.source,
        )
        if view.source == "tolaria" and any(point.name == "tolaria.seed.stage" for point in packet.metrics):
            self._begin_snapshot(view.run)
        if view.source == "tolaria" and packet.global_step:
            series.set("esper_epoch", float(packet.epoch), run=view.run)
            series.set("esper_global_step", float(packet.global_step), run=view.run)
        for point in packet.metrics:
            handler = METRICS.get(point.name)
            if handler is None:
                handler = next((h for prefix, h in PREFIXES.items() if point.name.startswith(prefix)), None)
            if handler is not None:
                handler(self, view, point)
        self._end_snapshot(view.run)
        if view.source == "tolaria":
            self._last_step[view.run] = int(packet.global_step)
        for event in packet.events:
            self._event(view, event)

    def _event(self, packet: Packet, event: TelemetryEvent) -> None:
        series, run, attributes = self.series, packet.run, event.attributes
        level = value_name(TelemetryLevel, event.level, "TELEMETRY_LEVEL_").lower()
        series.inc("esper_telemetry_events_total", run=run, source=packet.source, event=event.name, level=level)
        name = event.name
        if name == "decision":
            risk = attributes.get("risk_reason") or "none"
            series.inc("esper_decisions_total", run=run, operation=attributes.get("operation", ""), risk=risk)
        elif name == "seed_transition":
            stage, blueprint = attributes.get("stage", ""), attributes.get("blueprint", "")
            series.inc("esper_seed_transitions_total", run=run, stage=stage)
            if stage == "GERMINATED":
                series.inc("esper_germinations_total", run=run, blueprint=blueprint)
            elif stage == "FOSSILIZED":
                series.inc("esper_fossilizations_total", run=run, blueprint=blueprint)
            elif stage == "CULLED":
                cause, gate = attributes.get("cause") or "unknown", attributes.get("gate") or "none"
                series.inc("esper_culls_total", run=run, blueprint=blueprint, cause=cause, gate=gate)
        elif name == "gate_failure":
            series.inc(
                "esper_gate_failures_total", run=run, gate=attributes.get("gate", ""), check=attributes.get("check", "")
            )
        elif name == "field_report":
            series.inc("esper_field_reports_total", run=run, outcome=attributes.get("outcome", ""))
        elif name == "conservative_mode_entered":
            series.inc("esper_conservative_mode_entries_total", run=run, subsystem=packet.source)
        elif name == "policy_error":
            series.inc("esper_policy_errors_total", run=run)
        elif packet.source == "tamiyo" and "action" in attributes and "held" in attributes:
            series.inc("esper_risk_rule_firings_total", run=run, rule=name, action=attributes["action"])

    # -- what needs more than one metric ---------------------------------------------------------------------
    def epoch_seconds(self, packet: Packet, seconds: float) -> None:
        """Epoch time, and the steps since the run's previous decision point (for step time and throughput)."""
        series, run = self.series, packet.run
        series.observe("esper_epoch_duration_seconds", seconds, run=run)
        previous = self._last_step.get(run)
        if previous is None or packet.global_step <= previous:
            return  # the run's first decision point here, or one after a rollback: no interval to divide
        steps = packet.global_step - previous
        series.inc("esper_training_steps_total", float(steps), run=run)
        series.inc("esper_training_seconds_total", seconds, run=run)
        series.observe("esper_step_duration_seconds", seconds / steps, run=run)

    def seed_stage(self, packet: Packet, slot: str, stage: str) -> None:
        """The slot's stage as a state set: 1 for the current stage, 0 for those it was in before."""
        seen = self._stages.setdefault((packet.run, slot), set())
        for earlier in seen - {stage}:
            self.series.set("esper_seed_stage", 0.0, run=packet.run, slot=slot, stage=earlier)
        seen.add(stage)
        self.series.set("esper_seed_stage", 1.0, run=packet.run, slot=slot, stage=stage)
        counts = self._stage_counts.setdefault(packet.run, {})
        counts[stage] = counts.get(stage, 0) + 1

    def _begin_snapshot(self, run: str) -> None:
        self.series.remove(SEED_SNAPSHOT, run=run)
        counts = self._stage_counts.setdefault(run, {})
        for stage in counts:
            counts[stage] = 0

    def _end_snapshot(self, run: str) -> None:
        for stage, count in self._stage_counts.get(run, {}).items():
            self.series.set("esper_seeds", float(count), run=run, stage=stage)

    # -- bounded memory ---------------------------------------------------------------------------------------
    def _touch(self, run: str) -> None:
        self._runs.pop(run, None)
        self._runs[run] = None
        while len(self._runs) > self.max_runs:
            oldest = next(iter(self._runs))
            self.forget_run(oldest)
        self.series.set("esper_nissa_runs_tracked", float(len(self._runs)))

    def forget_run(self, run: str) -> None:
        """Drop every series of ``run``."""
        self._runs.pop(run, None)
        self._last_step.pop(run, None)
        self._stage_counts.pop(run, None)
        for key in [key for key in self._stages if key[0] == run]:
            del self._stages[key]
        self.series.forget_run(run)
        self.series.set("esper_nissa_runs_tracked", float(len(self._runs)))

    def collect(self) -> Iterator[PrometheusFamily]:
        return self.series.collect()
