"""Telemetry packets as Elasticsearch documents: which index each lands in, under which id, with which fields.

One packet gives one *telemetry* document (its metrics, level, priority and health) and one document per event,
in an index chosen by the event's name: ``decision`` -> *decisions*, ``seed_transition`` -> *lifecycle*,
``field_report`` -> *field-reports*, any other name -> *events*. Every document carries the run id, the source
subsystem, the epoch, the global step, ``@timestamp`` (the packet's timestamp), the packet id and ``seq`` (0 for the
telemetry document, then the event's place in the packet), so that a run reads back in order.

Why the ids and index names are fixed by the packet: a document sent again (a retried bulk, a packet relayed twice,
a decision point a resumed run emits again) must overwrite itself, never add a copy. The id is the *identity* the
sink gives a run's packet (where in the run it stands: see :class:`~esper_nissa.elastic.sink.ElasticsearchSink`), or
the packet id for a packet of no run (``<id>:<event_id>`` for an event); the index is dated by the packet's own
timestamp (``<prefix>-<kind>-YYYY.MM.DD``, UTC); and the sink writes with the bulk ``index`` operation and an
explicit ``_id``.

Documents are serialized once, when the packet is emitted, into the two lines a bulk request carries; the buffer
holds those bytes until the server has them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from esper_core.leyline import TelemetryPacket

TELEMETRY = "telemetry"
EVENTS = "events"
DECISIONS = "decisions"
LIFECYCLE = "lifecycle"
FIELD_REPORTS = "field-reports"
#: Every kind of document, in the order a summary lists them.
KINDS = (TELEMETRY, DECISIONS, LIFECYCLE, FIELD_REPORTS, EVENTS)
#: Events whose name has an index of its own; every other event goes to ``events``.
EVENT_KINDS: Mapping[str, str] = {"decision": DECISIONS, "seed_transition": LIFECYCLE, "field_report": FIELD_REPORTS}

__all__ = [
    "DECISIONS",
    "EVENTS",
    "EVENT_KINDS",
    "FIELD_REPORTS",
    "KINDS",
    "LIFECYCLE",
    "TELEMETRY",
    "Document",
    "documents_of",
    "event_kind",
    "index_name",
    "index_pattern",
]


@attrs.frozen
class Document:
    """One document ready for a bulk request: ``lines`` is its action line and its source line (NDJSON)."""

    kind: str
    index: str
    id: str
    lines: bytes

    def source(self) -> dict[str, Any]:
        """The document's fields, parsed back from the source line (for tests and debugging)."""
        _, _, source = self.lines.rstrip(b"\n").partition(b"\n")
        parsed: dict[str, Any] = json.loads(source)
        return parsed


def event_kind(name: str) -> str:
    """The kind of document (and so the index) an event named ``name`` becomes."""
    return EVENT_KINDS.get(name, EVENTS)


def index_name(prefix: str, kind: str, day: str) -> str:
    """``<prefix>-<kind>-<day>``, ``day`` as ``YYYY.MM.DD``."""
    return f"{prefix}-{kind}-{day}"


def index_pattern(prefix: str, kind: str) -> str:
    """The wildcard matching every daily index of ``kind``."""
    return f"{prefix}-{kind}-*"


def _short_names(enum_items: Sequence[tuple[str, int]], prefix: str) -> dict[int, str]:
    return {value: name.removeprefix(prefix) for name, value in enum_items}


@attrs.frozen
class _Names:
    """Enum values by their short names (``TELEMETRY_LEVEL_WARNING`` -> ``WARNING``)."""

    level: dict[int, str]
    priority: dict[int, str]
    health: dict[int, str]


@functools.cache
def _enum_names() -> _Names:
    """Looked up once, on first use (the Leyline enums load with the contracts)."""
    from esper_core.leyline import HealthStatus, MessagePriority, TelemetryLevel

    return _Names(
        level=_short_names(TelemetryLevel.items(), "TELEMETRY_LEVEL_"),
        priority=_short_names(MessagePriority.items(), "MESSAGE_PRIORITY_"),
        health=_short_names(HealthStatus.items(), "HEALTH_STATUS_"),
    )


def _labels(attributes: Mapping[str, str]) -> dict[str, str]:
    """A string map as document fields. A dot in a key would make Elasticsearch read it as a path into an object
    (``a.b`` beside ``a`` is a mapping conflict that rejects the document), and an empty or blank key is refused:
    dots become ``_``, and a key left blank becomes ``_`` (two keys that become the same keep the later value)."""
    labels = {}
    for key, value in attributes.items():
        field = key.replace(".", "_")
        labels[field if field.strip() else "_"] = value
    return labels


def _number(value: float) -> tuple[float | None, str | None]:
    """A double field cannot hold NaN or an infinity: those are stored as null plus their name."""
    if math.isfinite(value):
        return value, None
    return None, "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _timestamp(seconds: int, nanos: int) -> tuple[str, str]:
    """The RFC 3339 timestamp (nanoseconds kept) and the UTC day ``YYYY.MM.DD`` of the index."""
    moment = time.gmtime(seconds)
    return (
        f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}T{moment.tm_hour:02d}:{moment.tm_min:02d}:"
        f"{moment.tm_sec:02d}.{nanos:09d}Z",
        f"{moment.tm_year:04d}.{moment.tm_mon:02d}.{moment.tm_mday:02d}",
    )


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _lines(index: str, document_id: str, source: dict[str, Any]) -> bytes:
    action = {"index": {"_index": index, "_id": document_id}}
    return (_dumps(action) + "\n" + _dumps(source) + "\n").encode("utf-8")


def documents_of(
    packet: TelemetryPacket, prefix: str, *, now_ns: int | None = None, identity: str | None = None
) -> list[Document]:
    """The telemetry document of ``packet`` and one document per event, in that order.

    A packet without a timestamp (the builder always sets one) is stamped with ``now_ns`` (default: now) once, here;
    the documents keep that stamp through every retry. A packet without an id gets a digest of its content as id, so
    that relaying it twice still gives one document.
    """
    names = _enum_names()
    if packet.HasField("timestamp") and (packet.timestamp.seconds or packet.timestamp.nanos):
        seconds, nanos = packet.timestamp.seconds, packet.timestamp.nanos
    else:
        stamp = time.time_ns() if now_ns is None else now_ns
        seconds, nanos = divmod(stamp, 1_000_000_000)
    timestamp, day = _timestamp(seconds, nanos)
    packet_id = packet.packet_id or "sha1-" + hashlib.sha1(packet.SerializeToString(deterministic=True)).hexdigest()
    common = {
        "@timestamp": timestamp,
        "run_id": packet.training_run_id,
        "source": packet.source_subsystem,
        "epoch": packet.epoch,
        "global_step": packet.global_step,
        "packet_id": packet_id,
    }

    metrics = []
    for metric in packet.metrics:
        value, special = _number(metric.value)
        entry: dict[str, Any] = {"name": metric.name, "value": value, "unit": metric.unit}
        if special is not None:
            entry["special"] = special
        if metric.attributes:
            entry["attributes"] = _labels(metric.attributes)
        metrics.append(entry)
    health = packet.system_health
    telemetry = {
        **common,
        "kind": TELEMETRY,
        "seq": 0,
        "level": names.level.get(packet.level, str(packet.level)),
        "priority": names.priority.get(packet.priority, str(packet.priority)),
        "health": {
            "status": names.health.get(health.status, str(health.status)),
            "summary": health.summary,
            "indicators": _labels(health.indicators),
        },
        "event_count": len(packet.events),
        "metrics": metrics,
    }
    index = index_name(prefix, TELEMETRY, day)
    base_id = identity or packet_id
    documents = [Document(TELEMETRY, index, base_id, _lines(index, base_id, telemetry))]

    for seq, event in enumerate(packet.events, start=1):
        kind = event_kind(event.name)
        event_id = event.event_id or f"evt-{seq}"
        document_id = f"{base_id}:{event_id}"
        source: dict[str, Any] = {
            **common,
            "kind": kind,
            "seq": seq,
            "event_id": event_id,
            "event": event.name,
            "level": names.level.get(event.level, str(event.level)),
            "description": event.description,
            "attributes": _labels(event.attributes),
        }
        if kind == FIELD_REPORTS:
            contribution = _float(event.attributes.get("contribution", ""))
            if contribution is not None:
                source["contribution"] = contribution
        index = index_name(prefix, kind, day)
        documents.append(Document(kind, index, document_id, _lines(index, document_id, source)))
    return documents


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
