"""The alert engine: rules evaluated at heartbeats, with for-durations, de-duplication and resolution.

An alert is one rule on one series (its labels: a run and a slot, a stream, a service). It is *pending* while the
rule's condition holds for fewer heartbeats than ``for_samples`` (or less time than ``for_seconds``), *firing* once it
has held long enough (announced once: a firing alert is not announced again while it keeps firing), and *resolved* at
the first heartbeat where the condition no longer holds (announced once). A series that disappears (a run Nissa
forgot) resolves its alerts too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import attrs

from esper_nissa.alerts.rules import AlertRule, check_rules
from esper_nissa.prometheus.series import SeriesStore

__all__ = ["Alert", "AlertEngine", "AlertTransition"]

LabelKey = tuple[tuple[str, str], ...]


@attrs.define
class Alert:
    rule: AlertRule
    labels: dict[str, str]
    value: float = 0.0
    held: int = 0
    since: float = 0.0
    firing: bool = False
    fired_at: float = 0.0

    @property
    def summary(self) -> str:
        try:
            return self.rule.summary.format(value=self.value, **self.labels)
        except (KeyError, ValueError, IndexError):
            return self.rule.summary

    def as_dict(self) -> dict[str, object]:
        return {
            "alert": self.rule.name,
            "severity": self.rule.severity,
            "labels": dict(self.labels),
            "value": self.value,
            "summary": self.summary,
            "firing_since": self.fired_at,
            "metric": self.rule.family,
            "emergency": self.rule.emergency,
        }


@attrs.frozen
class AlertTransition:
    """An alert that started firing (``state == "firing"``) or resolved."""

    alert: Alert
    state: str
    at: float


class AlertEngine:
    """Evaluates rules over a :class:`SeriesStore` and remembers which alerts fire."""

    def __init__(
        self,
        series: SeriesStore,
        rules: Iterable[AlertRule],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = tuple(rules)
        check_rules(self.rules)
        self.series = series
        self.clock = clock
        self._lock = threading.Lock()
        self._alerts: dict[tuple[str, LabelKey], Alert] = {}
        #: The counter values at the previous heartbeat, per rule and series (for ``delta`` rules).
        self._previous: dict[tuple[str, LabelKey], float] = {}
        self.history: list[AlertTransition] = []

    def heartbeat(self, *, run: str = "") -> list[AlertTransition]:
        """Evaluate the rules on one run's series (``run``), or on the services' (``run=""``: the series of no run,
        and the rules of families without a run label); return what changed."""
        now = self.clock()
        changes: list[AlertTransition] = []
        with self._lock:
            for rule in self.rules:
                if rule.scope != "run" and run:
                    continue
                match = {**rule.match, "run": run} if rule.scope == "run" else dict(rule.match)
                present: set[LabelKey] = set()
                for labels, value in self.series.items(rule.family, **match):
                    key = tuple(sorted(labels.items()))
                    present.add(key)
                    changes += self._evaluate(rule, labels, key, value, now)
                for (name, key), alert in list(self._alerts.items()):
                    if name == rule.name and key not in present and _matches(key, match):
                        changes += self._resolve(alert, key, now)
            self.history.extend(changes)
            del self.history[:-1000]
        for change in changes:
            self.series.set(
                "esper_alerts_firing",
                1.0 if change.state == "firing" else 0.0,
                alert=change.alert.rule.name,
                severity=change.alert.rule.severity,
                run=change.alert.labels.get("run", ""),
                slot=change.alert.labels.get("slot", ""),
            )
            self.series.inc("esper_alert_transitions_total", alert=change.alert.rule.name, state=change.state)
        return changes

    def _evaluate(
        self, rule: AlertRule, labels: dict[str, str], key: LabelKey, value: float, now: float
    ) -> list[AlertTransition]:
        identity = (rule.name, key)
        if rule.delta:
            previous = self._previous.get(identity)
            self._previous[identity] = value
            # A series seen for the first time counts whole: a violation at a run's first decision point is one.
            value = value if previous is None else value - previous
        alert = self._alerts.get(identity)
        if not rule.holds(value):
            return self._resolve(alert, key, now) if alert is not None else []
        if alert is None:
            alert = self._alerts[identity] = Alert(rule, labels, since=now)
        alert.value = value
        alert.held += 1
        if alert.firing or alert.held < rule.for_samples or now - alert.since < rule.for_seconds:
            return []
        alert.firing, alert.fired_at = True, now
        return [AlertTransition(alert, "firing", now)]

    def _resolve(self, alert: Alert | None, key: LabelKey, now: float) -> list[AlertTransition]:
        if alert is None:
            return []
        del self._alerts[(alert.rule.name, key)]
        return [AlertTransition(alert, "resolved", now)] if alert.firing else []

    def firing(self) -> list[Alert]:
        """The alerts firing now."""
        with self._lock:
            return [alert for alert in self._alerts.values() if alert.firing]


def _matches(key: LabelKey, match: dict[str, str]) -> bool:
    labels = dict(key)
    return all(labels.get(k) == v for k, v in match.items())
