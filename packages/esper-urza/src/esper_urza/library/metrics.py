"""What the library reports: per-source fetch latency, fetches over their budget, counters and pending events.

Why: a fetch sits in Kasmina's germination path, so its latency is an operational budget, not a curiosity. Each
fetch is timed and filed under its source (``memory``, ``disk``, ``built``); one over its budget (``fetch_budget_ms``
for memory and disk, ``build_budget_ms`` for a build) is counted and becomes a ``timeout_urza`` WARNING event. The
other parts of the library file their events here too (evicted artifacts, refused builds, journal replays), so that
:meth:`LibraryMetrics.drain` hands Nissa one ``TelemetryPacket`` with everything since the last drain.

Latency samples are a sliding window (the last :data:`LATENCY_WINDOW` fetches of each source) and pending events a
bounded queue (the oldest dropped first), so a library nobody drains keeps a fixed amount of memory.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque

from esper_core.leyline import TelemetryPacket
from esper_core.protocols import SlotShape
from esper_core.stats import percentile
from esper_core.telemetry import WARNING, Event, Metric, build_telemetry_packet
from esper_urza.options import UrzaOptions

#: Where a fetch was served from: the in-process cache, an artifact file, or a build on a miss.
SOURCES = ("memory", "disk", "built")
#: Latency samples kept per source.
LATENCY_WINDOW = 2048
#: Events kept until the next drain.
MAX_PENDING_EVENTS = 512


class LibraryMetrics:
    """Counters, per-source fetch latency and pending events of one library."""

    def __init__(self, options: UrzaOptions, *, training_run_id: str = "") -> None:
        #: The run whose packets these are (``TelemetryPacket.training_run_id``), if the library serves one.
        self.training_run_id = training_run_id
        self.fetch_budget_ms = options.fetch_budget_ms
        self.build_budget_ms = options.build_budget_ms
        self._counters: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {source: deque(maxlen=LATENCY_WINDOW) for source in SOURCES}
        self._events: deque[Event] = deque(maxlen=MAX_PENDING_EVENTS)
        self._fetches_since_drain = 0
        #: Each fetch's (source, latency) since the last drain, sent one metric point each (``urza.fetch.latency_ms``
        #: with a ``source`` attribute) so that a sink can keep a histogram; bounded like the events.
        self._recent: deque[tuple[str, float]] = deque(maxlen=MAX_PENDING_EVENTS)

    def count(self, name: str) -> None:
        """Add one to a counter (``saves``, ``evictions``, ``integrity_failures``, ``build_failures``)."""
        self._counters[name] += 1

    def report(self, event: Event) -> None:
        """Queue an event for the next drain."""
        self._events.append(event)

    @property
    def has_events(self) -> bool:
        """Whether events wait for the next drain (what makes the library publish on its bus)."""
        return bool(self._events)

    def observe_fetch(self, source: str, latency_ms: float, blueprint_id: str, slot: SlotShape) -> None:
        """Record a fetch's latency under its source; over its budget, count it and queue ``timeout_urza``."""
        self._counters[f"fetch.{source}"] += 1
        self._latency[source].append(latency_ms)
        self._recent.append((source, latency_ms))
        self._fetches_since_drain += 1
        budget = self.build_budget_ms if source == "built" else self.fetch_budget_ms
        if latency_ms > budget:
            self._counters["over_budget"] += 1
            self._events.append(
                Event(
                    "timeout_urza",
                    f"fetch of {blueprint_id} at {slot.describe()} from {source} took {latency_ms:.2f} ms, "
                    f"over its {budget:g} ms budget",
                    WARNING,
                    {
                        "blueprint_id": blueprint_id,
                        "source": source,
                        "slot": slot.describe(),
                        "latency_ms": f"{latency_ms:.3f}",
                        "budget_ms": f"{budget:g}",
                    },
                )
            )

    def snapshot(self, *, cache_size: int, cache_evictions: int) -> dict[str, float]:
        """The metrics as a dict (``urza.fetch.*``, ``urza.cache.*``, ...); the cache's numbers come from the cache."""
        counters = self._counters
        snapshot: dict[str, float] = {
            "urza.fetch.total": float(sum(counters[f"fetch.{source}"] for source in SOURCES)),
            "urza.fetch.over_budget_total": float(counters["over_budget"]),
            "urza.cache.size": float(cache_size),
            "urza.cache.evictions_total": float(cache_evictions),
            "urza.integrity.failures_total": float(counters["integrity_failures"]),
            "urza.build.failures_total": float(counters["build_failures"]),
            "urza.saves_total": float(counters["saves"]),
        }
        for source in SOURCES:
            samples = list(self._latency[source])
            snapshot[f"urza.fetch.{source}_total"] = float(counters[f"fetch.{source}"])
            snapshot[f"urza.fetch.{source}.p50_ms"] = statistics.median(samples) if samples else 0.0
            snapshot[f"urza.fetch.{source}.p95_ms"] = percentile(samples, 0.95)
        return snapshot

    def drain(self, *, cache_size: int, cache_evictions: int) -> list[TelemetryPacket]:
        """One packet with the metrics and the pending events since the last drain, or none if nothing happened."""
        if not self._events and not self._fetches_since_drain:
            return []
        events = list(self._events)
        self._events.clear()
        self._fetches_since_drain = 0
        metrics = [
            Metric(name, value, "ms" if name.endswith("_ms") else "")
            for name, value in self.snapshot(cache_size=cache_size, cache_evictions=cache_evictions).items()
        ]
        metrics += [Metric("urza.fetch.latency_ms", ms, "ms", {"source": source}) for source, ms in self._recent]
        self._recent.clear()
        return [
            build_telemetry_packet(source="urza", metrics=metrics, events=events, training_run_id=self.training_run_id)
        ]
