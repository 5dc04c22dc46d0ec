"""Service-level objectives with error budgets and burn rates.

An SLO counts events, each good or bad: a decision answered within its latency objective, a decision point whose
hook stayed under its share of the epoch, a Weatherlight report that found a service running. Over its window
(30 days by default) the SLO may have ``1 - target`` of its events bad: that is its error budget. The burn rate over
a shorter window is the bad share there divided by the budget share: 1 spends the budget exactly over the window,
14.4 over an hour spends 2 % of a 30-day budget (the usual fast-burn page).

Events are kept as (time, good) pairs, trimmed to the window and bounded in number, so memory stays flat however
long Nissa runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

__all__ = ["Objective", "SloTracker"]

#: The burn-rate windows reported, by name.
BURN_WINDOWS: Mapping[str, float] = {"1h": 3600.0, "6h": 6 * 3600.0, "3d": 3 * 86400.0}


@attrs.frozen
class Objective:
    name: str
    description: str
    #: The share of events that must be good, e.g. 0.99.
    target: float
    window_s: float = 30 * 86400.0


class SloTracker:
    def __init__(
        self,
        objectives: Iterable[Objective],
        *,
        clock: Callable[[], float] = time.time,
        max_events: int = 200_000,
    ) -> None:
        self.objectives = {objective.name: objective for objective in objectives}
        self.clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, deque[tuple[float, bool]]] = {
            name: deque(maxlen=max_events) for name in self.objectives
        }
        self.totals: dict[str, dict[str, int]] = {name: {"good": 0, "bad": 0} for name in self.objectives}

    def record(self, name: str, good: bool, at: float | None = None) -> None:
        now = self.clock() if at is None else at
        with self._lock:
            events = self._events[name]
            events.append((now, good))
            self.totals[name]["good" if good else "bad"] += 1
            floor = now - self.objectives[name].window_s
            while events and events[0][0] < floor:
                events.popleft()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per SLO: target, events and bad events in the window, error budget left (a share; negative once
        overspent), and the burn rate over each of :data:`BURN_WINDOWS`."""
        now = self.clock()
        result: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name, objective in self.objectives.items():
                events = [(t, good) for t, good in self._events[name] if t >= now - objective.window_s]
                budget = 1.0 - objective.target
                bad = sum(not good for _, good in events)
                allowed = budget * len(events)
                burn: dict[str, float] = {}
                for label, seconds in BURN_WINDOWS.items():
                    recent = [good for t, good in events if t >= now - seconds]
                    share = (sum(not good for good in recent) / len(recent)) if recent else 0.0
                    burn[label] = share / budget if budget > 0 else 0.0
                result[name] = {
                    "description": objective.description,
                    "target": objective.target,
                    "window_s": objective.window_s,
                    "events": len(events),
                    "bad": bad,
                    "error_budget_remaining": 1.0 - (bad / allowed) if allowed > 0 else (1.0 if bad == 0 else 0.0),
                    "burn_rate": burn,
                }
        return result
