"""The one telemetry-packet builder and the one priority rule, shared by every subsystem.

Metric names are dotted, ``<subsystem>.<area>.<name>`` (``kasmina.seeds.active``). Event names come from a small
vocabulary per subsystem (``gate_failure``, ``command_rejected``). Build packets at decision points, never per
batch.

The priority rule (the prototype had three; this is the only one):

- CRITICAL if the packet or any event is CRITICAL;
- HIGH if the packet or any event is ERROR, or an event is WARNING with an *operational* name
  (:data:`OPERATIONAL_EVENTS`: timeouts, latency budgets, loss spikes, isolation violations, quarantined
  blueprints, device pressure) — the conditions an operator must see now;
- NORMAL otherwise.

An explicit ``priority`` passed by the caller wins. HIGH and CRITICAL packets travel on the emergency stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TypeAlias

import attrs

from esper_core.leyline import (
    HealthStatus,
    MessagePriority,
    MetricPoint,
    SystemHealth,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryPacket,
)

Level: TypeAlias = TelemetryLevel.ValueType
Priority: TypeAlias = MessagePriority.ValueType

INFO = TelemetryLevel.TELEMETRY_LEVEL_INFO
WARNING = TelemetryLevel.TELEMETRY_LEVEL_WARNING
ERROR = TelemetryLevel.TELEMETRY_LEVEL_ERROR
CRITICAL = TelemetryLevel.TELEMETRY_LEVEL_CRITICAL

#: WARNING events whose names make a packet HIGH priority.
OPERATIONAL_EVENTS = frozenset(
    {
        "timeout_inference",
        "timeout_urza",
        "timeout_kasmina",
        "step_latency_high",
        "hook_budget",
        "loss_spike",
        "isolation_violation",
        "policy_risk_critical",
        "bp_quarantine",
        "device_pressure_high",
        "cpu_pressure_high",
        "rollback",
        "conservative_mode_entered",
    }
)


@attrs.frozen
class Metric:
    name: str
    value: float
    unit: str = ""
    attributes: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Event:
    name: str
    description: str = ""
    level: Level = INFO
    attributes: Mapping[str, str] = attrs.field(factory=dict)


MetricLike = Metric | tuple[str, float] | tuple[str, float, str]


def priority_for(level: Level, events: Iterable[TelemetryEvent | Event]) -> Priority:
    """The routing priority of a packet with ``level`` and ``events`` (see the module docstring)."""
    levels = [level]
    operational_warning = False
    for event in events:
        levels.append(event.level)
        if event.level == WARNING and event.name in OPERATIONAL_EVENTS:
            operational_warning = True
    if CRITICAL in levels:
        return MessagePriority.MESSAGE_PRIORITY_CRITICAL
    if ERROR in levels or operational_warning:
        return MessagePriority.MESSAGE_PRIORITY_HIGH
    return MessagePriority.MESSAGE_PRIORITY_NORMAL


def _metric_point(metric: MetricLike) -> MetricPoint:
    if isinstance(metric, Metric):
        return MetricPoint(
            name=metric.name, value=float(metric.value), unit=metric.unit, attributes=dict(metric.attributes)
        )
    if len(metric) == 3:
        name, value, unit = metric
        return MetricPoint(name=name, value=float(value), unit=unit)
    name, value = metric
    return MetricPoint(name=name, value=float(value))


def build_telemetry_packet(
    *,
    source: str,
    metrics: Iterable[MetricLike] = (),
    events: Iterable[Event] = (),
    level: Level | None = None,
    health: HealthStatus.ValueType = HealthStatus.HEALTH_STATUS_HEALTHY,
    health_summary: str = "",
    indicators: Mapping[str, str] | None = None,
    priority: Priority | None = None,
    packet_id: str = "",
    training_run_id: str = "",
    epoch: int = 0,
    global_step: int = 0,
    timestamp_ns: int | None = None,
) -> TelemetryPacket:
    """Build a ``TelemetryPacket``.

    :param source: the emitting subsystem (``"kasmina"``).
    :param metrics: :class:`Metric` objects or ``(name, value[, unit])`` tuples.
    :param events: :class:`Event` objects; event ids ``evt-1``, ``evt-2``... are assigned in order.
    :param level: the packet level; by default the highest event level, or INFO.
    :param priority: overrides the priority rule.
    :param packet_id: by default ``<source>-<epoch>-<global_step>-<nanoseconds>``.
    """
    events = list(events)
    if level is None:
        level = max((event.level for event in events), default=INFO)
    now_ns = time.time_ns() if timestamp_ns is None else timestamp_ns
    packet = TelemetryPacket(
        packet_id=packet_id or f"{source}-{epoch}-{global_step}-{now_ns}",
        source_subsystem=source,
        level=level,
        training_run_id=training_run_id,
        epoch=epoch,
        global_step=global_step,
        metrics=[_metric_point(metric) for metric in metrics],
        events=[
            TelemetryEvent(
                event_id=f"evt-{index}",
                name=event.name,
                description=event.description,
                level=event.level,
                attributes=dict(event.attributes),
            )
            for index, event in enumerate(events, start=1)
        ],
        system_health=SystemHealth(status=health, summary=health_summary, indicators=dict(indicators or {})),
    )
    packet.timestamp.FromNanoseconds(now_ns)
    packet.priority = priority if priority is not None else priority_for(level, events)
    return packet
