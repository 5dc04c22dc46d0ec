"""The one circuit breaker every subsystem uses (the prototype had three; this unifies their semantics).

CLOSED: calls pass; ``failure_threshold`` consecutive failures open the breaker (a success resets the count).
OPEN: calls are denied until ``open_timeout_s`` has passed; a failure reported while open extends the window.
HALF_OPEN: the first ``allow()`` after the timeout moves here; calls pass as probes, ``success_threshold``
successes close the breaker and any failure opens it again.
``force()`` pins a state from outside (a ``CommandCircuitBreaker`` command, an operator).

Every state change is kept as a :class:`BreakerTransition` so the owner can publish it as telemetry at its next
decision point; the breaker itself never does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias, TypeVar

import attrs

from esper_core.errors import EsperError
from esper_core.leyline import CircuitBreakerState

T = TypeVar("T")
State: TypeAlias = CircuitBreakerState.ValueType

CLOSED = CircuitBreakerState.CIRCUIT_STATE_CLOSED
OPEN = CircuitBreakerState.CIRCUIT_STATE_OPEN
HALF_OPEN = CircuitBreakerState.CIRCUIT_STATE_HALF_OPEN


class CircuitOpenError(EsperError):
    """Raised by :meth:`CircuitBreaker.call` when the breaker denies the call."""


@attrs.frozen
class BreakerTransition:
    breaker: str
    from_state: State
    to_state: State
    reason: str
    at: float


@attrs.frozen
class BreakerSnapshot:
    name: str
    state: State
    consecutive_failures: int
    half_open_successes: int
    opens_total: int
    denied_total: int
    failures_total: int


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        success_threshold: int = 1,
        open_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or success_threshold < 1:
            raise ValueError("breaker thresholds must be at least 1")
        if open_timeout_s < 0:
            raise ValueError("a breaker's open timeout cannot be negative")
        self.name = name
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.open_timeout_s = open_timeout_s
        self._clock = clock
        self._state: State = CLOSED
        self._forced = False
        self._consecutive_failures = 0
        self._half_open_successes = 0
        self._opened_at = 0.0
        self._opens_total = 0
        self._denied_total = 0
        self._failures_total = 0
        self._transitions: list[BreakerTransition] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state == OPEN

    def allow(self) -> bool:
        """Whether a call may proceed now (moving OPEN to HALF_OPEN once the timeout has passed)."""
        if self._state == OPEN and not self._forced and self._clock() - self._opened_at >= self.open_timeout_s:
            self._move(HALF_OPEN, "open timeout elapsed")
        if self._state == OPEN:
            self._denied_total += 1
            return False
        return True

    def record_success(self) -> None:
        if self._forced:
            return
        if self._state == HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self.success_threshold:
                self._move(CLOSED, f"{self._half_open_successes} successful probe(s)")
        elif self._state == CLOSED:
            self._consecutive_failures = 0

    def record_failure(self, reason: str = "failure") -> None:
        self._failures_total += 1
        if self._forced:
            return
        if self._state == HALF_OPEN:
            self._move(OPEN, f"probe failed: {reason}")
        elif self._state == OPEN:
            self._opened_at = self._clock()
        else:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.failure_threshold:
                self._move(OPEN, f"{self._consecutive_failures} consecutive failures, last: {reason}")

    def force(self, state: State, reason: str) -> None:
        """Pin the breaker in ``state`` until :meth:`release`; failures and successes are counted but ignored."""
        self._forced = True
        if state != self._state:
            self._move(state, f"forced: {reason}")

    def release(self, reason: str = "released") -> None:
        """End a forced state; the breaker continues from the state it was forced into."""
        self._forced = False
        if self._state == OPEN:
            self._opened_at = self._clock()

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` through the breaker, recording its success or failure."""
        if not self.allow():
            raise CircuitOpenError(f"circuit breaker {self.name!r} is open; retry after {self.open_timeout_s} s")
        try:
            result = function()
        except Exception as error:
            self.record_failure(f"{type(error).__name__}: {error}")
            raise
        self.record_success()
        return result

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=self.name,
            state=self._state,
            consecutive_failures=self._consecutive_failures,
            half_open_successes=self._half_open_successes,
            opens_total=self._opens_total,
            denied_total=self._denied_total,
            failures_total=self._failures_total,
        )

    def drain_transitions(self) -> list[BreakerTransition]:
        """The state changes since the last call, oldest first."""
        transitions, self._transitions = self._transitions, []
        return transitions

    def _move(self, state: State, reason: str) -> None:
        previous = self._state
        self._state = state
        now = self._clock()
        if state == OPEN:
            self._opened_at = now
            self._opens_total += 1
        self._consecutive_failures = 0
        self._half_open_successes = 0
        self._transitions.append(BreakerTransition(self.name, previous, state, reason, now))
