"""The values behind every exported family, kept by Nissa itself and turned into Prometheus families at scrape time.

Why not prometheus-client's ``Gauge``/``Counter`` objects: Esper's telemetry carries counts as running totals (a
resumed run's ``tolaria.rollbacks`` continues from its checkpoint), a seed's series must disappear when the seed does,
and a long-lived ``esper serve nissa`` must be able to forget a finished run's series. A store of plain dicts, with
one lock, does all three; :meth:`SeriesStore.collect` hands prometheus-client the families to render.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from esper_nissa.prometheus.families import BY_NAME, FAMILIES, Family

LabelValues = tuple[str, ...]


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, bounds: int) -> None:
        self.buckets = [0] * (bounds + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0


class SeriesStore:
    """Gauges, counters and histograms by family name and label values (in the family's label order)."""

    def __init__(self, families: Iterable[Family] = FAMILIES) -> None:
        self.families = {family.name: family for family in families}
        self._lock = threading.Lock()
        self._values: dict[str, dict[LabelValues, float]] = {name: {} for name in self.families}
        self._histograms: dict[str, dict[LabelValues, _Histogram]] = {name: {} for name in self.families}
        #: The last running total seen per counter series (to turn running totals into increments).
        self._totals: dict[tuple[str, LabelValues], float] = {}

    def _key(self, name: str, labels: Mapping[str, str]) -> LabelValues:
        family = self.families[name]
        return tuple(str(labels.get(label, "")) for label in family.labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        if not math.isfinite(value):
            return
        key = self._key(name, labels)
        with self._lock:
            self._values[name][key] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter (a series starts at 0 the first time it is named)."""
        if not math.isfinite(amount) or amount < 0:
            return
        key = self._key(name, labels)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def total(self, name: str, running_total: float, **labels: str) -> None:
        """Feed a counter from a running total: the first value counts whole, later ones by what they added. A total
        that went down (a rolled-back run, a restarted service) starts counting again from it, adding nothing."""
        if not math.isfinite(running_total):
            return
        key = self._key(name, labels)
        with self._lock:
            last = self._totals.get((name, key))
            self._totals[(name, key)] = running_total
            added = running_total if last is None else running_total - last
            series = self._values[name]
            series[key] = series.get(key, 0.0) + max(added, 0.0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One observation for a histogram."""
        if not math.isfinite(value):
            return
        family = self.families[name]
        key = self._key(name, labels)
        with self._lock:
            histogram = self._histograms[name].get(key)
            if histogram is None:
                histogram = self._histograms[name][key] = _Histogram(len(family.buckets))
            histogram.buckets[bisect.bisect_left(family.buckets, value)] += 1
            histogram.count += 1
            histogram.sum += value

    def value(self, name: str, **labels: str) -> float | None:
        """A gauge's or counter's current value (``None`` when the series does not exist)."""
        key = self._key(name, labels)
        with self._lock:
            return self._values[name].get(key)

    def items(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """Every series of a gauge or counter whose labels equal ``match``, as (labels, value)."""
        family = self.families[name]
        with self._lock:
            found = list(self._values[name].items())
        rows = [(dict(zip(family.labels, key, strict=True)), value) for key, value in found]
        return [(labels, value) for labels, value in rows if all(labels.get(k) == v for k, v in match.items())]

    def remove(self, names: Iterable[str], **match: str) -> int:
        """Remove the series of ``names`` whose labels equal ``match`` (all of them); return how many went."""
        removed = 0
        with self._lock:
            for name in names:
                family = self.families[name]
                positions = [(family.labels.index(label), value) for label, value in match.items()]
                for store in (self._values[name], self._histograms[name]):
                    for key in [k for k in store if all(k[i] == v for i, v in positions)]:
                        del store[key]
                        removed += 1
                for total_key in [k for k in self._totals if k[0] == name and all(k[1][i] == v for i, v in positions)]:
                    del self._totals[total_key]
        return removed

    def forget_run(self, run: str) -> int:
        """Remove every series of a run (a long-lived Nissa keeps only the runs it was told to keep)."""
        names = [name for name, family in self.families.items() if "run" in family.labels]
        return self.remove(names, run=run)

    def series_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._values.values()) + sum(len(v) for v in self._histograms.values())

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus-client renders them (``Collector`` protocol)."""
        with self._lock:
            snapshot = {name: dict(values) for name, values in self._values.items()}
            histograms = {
                name: {key: (list(h.buckets), h.sum) for key, h in values.items()}
                for name, values in self._histograms.items()
            }
        for name, family in self.families.items():
            labels = list(family.labels)
            if family.kind == "histogram":
                histogram_family = HistogramMetricFamily(name, family.help, labels=labels)
                for key, (counts, total) in histograms[name].items():
                    cumulative, running = [], 0
                    for bound, count in zip((*family.buckets, math.inf), counts, strict=True):
                        running += count
                        cumulative.append((_bound(bound), running))
                    histogram_family.add_metric(list(key), cumulative, total)
                yield histogram_family
            elif family.kind == "counter":
                counter = CounterMetricFamily(name.removesuffix("_total"), family.help, labels=labels)
                for key, value in snapshot[name].items():
                    counter.add_metric(list(key), value)
                yield counter
            else:
                gauge = GaugeMetricFamily(name, family.help, labels=labels)
                for key, value in snapshot[name].items():
                    gauge.add_metric(list(key), value)
                yield gauge


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


__all__ = ["BY_NAME", "SeriesStore"]
