"""The telemetry-packet builder and the single priority rule."""

from __future__ import annotations

import time

import pytest

from esper_core.leyline import (
    HealthStatus,
    MessagePriority,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryPacket,
)
from esper_core.telemetry import (
    CRITICAL,
    ERROR,
    INFO,
    OPERATIONAL_EVENTS,
    WARNING,
    Event,
    Metric,
    build_telemetry_packet,
    priority_for,
)

TS = 1_700_000_000_123_456_789


def full_packet() -> TelemetryPacket:
    return build_telemetry_packet(
        source="kasmina",
        metrics=[
            Metric("kasmina.seeds.active", 3, unit="count", attributes={"layer": "4"}),
            ("kasmina.step.latency", 12.5, "ms"),
            ("kasmina.memory.free", 7),
        ],
        events=[
            Event("gate_failure", "G2 failed", WARNING, {"slot": "enc.1"}),
            Event("seed_germinated", "seed 7 germinated"),
        ],
        health=HealthStatus.HEALTH_STATUS_DEGRADED,
        health_summary="one gate failing",
        indicators={"gpu": "ok", "queue": "long"},
        training_run_id="run-42",
        epoch=3,
        global_step=120,
        timestamp_ns=TS,
    )


def test_builder_fills_every_field():
    packet = full_packet()
    assert packet.source_subsystem == "kasmina"
    assert packet.training_run_id == "run-42"
    assert packet.epoch == 3
    assert packet.global_step == 120
    assert packet.timestamp.ToNanoseconds() == TS
    assert packet.packet_id == f"kasmina-3-120-{TS}"

    m0, m1, m2 = packet.metrics
    assert (m0.name, m0.value, m0.unit, dict(m0.attributes)) == ("kasmina.seeds.active", 3.0, "count", {"layer": "4"})
    assert (m1.name, m1.value, m1.unit) == ("kasmina.step.latency", 12.5, "ms")
    assert (m2.name, m2.value, m2.unit) == ("kasmina.memory.free", 7.0, "")

    e1, e2 = packet.events
    assert (e1.event_id, e1.name, e1.description, e1.level) == ("evt-1", "gate_failure", "G2 failed", WARNING)
    assert dict(e1.attributes) == {"slot": "enc.1"}
    assert (e2.event_id, e2.name, e2.description, e2.level) == ("evt-2", "seed_germinated", "seed 7 germinated", INFO)

    health = packet.system_health
    assert health.status == HealthStatus.HEALTH_STATUS_DEGRADED
    assert health.summary == "one gate failing"
    assert dict(health.indicators) == {"gpu": "ok", "queue": "long"}

    assert packet.level == WARNING
    assert packet.priority == MessagePriority.MESSAGE_PRIORITY_NORMAL


def test_minimal_packet_defaults():
    before = time.time_ns()
    packet = build_telemetry_packet(source="tamiyo")
    after = time.time_ns()
    assert before <= packet.timestamp.ToNanoseconds() <= after
    assert packet.packet_id.startswith("tamiyo-0-0-")
    assert packet.level == INFO
    assert packet.priority == MessagePriority.MESSAGE_PRIORITY_NORMAL
    assert packet.system_health.status == HealthStatus.HEALTH_STATUS_HEALTHY
    assert list(packet.metrics) == [] and list(packet.events) == []


def test_explicit_packet_id_is_kept():
    assert build_telemetry_packet(source="urza", packet_id="pkt-1").packet_id == "pkt-1"


def test_metrics_and_events_may_be_generators():
    packet = build_telemetry_packet(
        source="simic",
        metrics=((f"simic.m{i}", i) for i in range(3)),
        events=(Event(f"e{i}") for i in range(3)),
    )
    assert [m.name for m in packet.metrics] == ["simic.m0", "simic.m1", "simic.m2"]
    assert [e.event_id for e in packet.events] == ["evt-1", "evt-2", "evt-3"]


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ([INFO, WARNING, INFO], WARNING),
        ([ERROR, WARNING], ERROR),
        ([INFO, CRITICAL, ERROR], CRITICAL),
        ([INFO], INFO),
        ([], INFO),
    ],
)
def test_default_level_is_the_highest_event_level(levels, expected):
    packet = build_telemetry_packet(source="x", events=[Event(f"e{i}", level=lv) for i, lv in enumerate(levels)])
    assert packet.level == expected


def test_explicit_level_is_kept_but_events_still_set_priority():
    packet = build_telemetry_packet(source="x", level=INFO, events=[Event("crash", level=ERROR)])
    assert packet.level == INFO
    assert packet.priority == MessagePriority.MESSAGE_PRIORITY_HIGH


# --- the priority rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "events", "expected"),
    [
        (CRITICAL, [], MessagePriority.MESSAGE_PRIORITY_CRITICAL),
        (INFO, [Event("oom", level=CRITICAL)], MessagePriority.MESSAGE_PRIORITY_CRITICAL),
        (ERROR, [Event("loss_spike", level=WARNING)], MessagePriority.MESSAGE_PRIORITY_HIGH),
        (ERROR, [], MessagePriority.MESSAGE_PRIORITY_HIGH),
        (INFO, [Event("x", level=INFO), Event("crash", level=ERROR)], MessagePriority.MESSAGE_PRIORITY_HIGH),
        (WARNING, [Event("loss_spike", level=WARNING)], MessagePriority.MESSAGE_PRIORITY_HIGH),
        (INFO, [Event("timeout_urza", level=WARNING)], MessagePriority.MESSAGE_PRIORITY_HIGH),
        (WARNING, [Event("gate_failure", level=WARNING)], MessagePriority.MESSAGE_PRIORITY_NORMAL),
        (WARNING, [], MessagePriority.MESSAGE_PRIORITY_NORMAL),
        (INFO, [Event("loss_spike", level=INFO)], MessagePriority.MESSAGE_PRIORITY_NORMAL),
        (INFO, [Event("seed_germinated")], MessagePriority.MESSAGE_PRIORITY_NORMAL),
        (INFO, [], MessagePriority.MESSAGE_PRIORITY_NORMAL),
    ],
    ids=[
        "critical-packet",
        "critical-event",
        "error-packet-beats-operational-warning",
        "error-packet",
        "error-event",
        "operational-warning",
        "operational-warning-in-info-packet",
        "other-warning",
        "warning-packet",
        "operational-name-at-info",
        "info-event",
        "info",
    ],
)
def test_priority_rule(level, events, expected):
    assert priority_for(level, events) == expected
    packet = build_telemetry_packet(source="x", level=level, events=events)
    assert packet.priority == expected


@pytest.mark.parametrize("name", sorted(OPERATIONAL_EVENTS))
def test_every_operational_warning_is_high(name):
    assert priority_for(INFO, [Event(name, level=WARNING)]) == MessagePriority.MESSAGE_PRIORITY_HIGH


def test_priority_rule_accepts_leyline_events():
    events = [TelemetryEvent(name="isolation_violation", level=TelemetryLevel.TELEMETRY_LEVEL_WARNING)]
    assert priority_for(INFO, events) == MessagePriority.MESSAGE_PRIORITY_HIGH


@pytest.mark.parametrize("priority", [MessagePriority.MESSAGE_PRIORITY_LOW, MessagePriority.MESSAGE_PRIORITY_CRITICAL])
def test_explicit_priority_wins(priority):
    packet = build_telemetry_packet(
        source="x",
        events=[Event("oom", level=CRITICAL) if priority == MessagePriority.MESSAGE_PRIORITY_LOW else Event("ok")],
        priority=priority,
    )
    assert packet.priority == priority


def test_packet_survives_the_wire():
    packet = full_packet()
    parsed = TelemetryPacket.FromString(packet.SerializeToString())
    assert parsed == packet
    assert parsed.SerializeToString(deterministic=True) == packet.SerializeToString(deterministic=True)
