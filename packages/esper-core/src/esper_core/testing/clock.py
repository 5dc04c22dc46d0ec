"""A settable clock for tests of anything time-dependent (freshness windows, breaker timeouts, embargoes)."""

from __future__ import annotations


class FakeClock:
    """Callable like ``time.time``/``time.monotonic``; moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
