"""Telemetry sinks that can never stop training: each sink behind a :class:`SinkChannel` with a thread of its own, a
breaker and a bounded queue.

Tolaria hands a sink its packets at decision points and lifecycle events, never inside a training step, and a channel
makes that hand-over cheap whatever the sink does: ``emit`` only queues the packet, and the channel's thread delivers
it. At the end of each relay Tolaria waits for the sinks to take what they were given, at most ``wait_ms``: a healthy
sink has by then (so in-process consumers, such as the alert rules of the ``prometheus`` sink, see a decision point
before the next one), and a sink that blocks costs the run at most that wait, is reported once as blocking, and gets
its packets later from its queue.

When a sink raises, its channel keeps the packet (and those that follow) in the queue and retries at the next
delivery, in order; the failure reaches the run on its own thread (which writes it down through the plugin-failure
ledger: one console line naming the sink and its distribution, the traceback in ``RUN/plugin-errors/``, a
``plugin_error`` entry, the counts). After ``failure_threshold`` failures in a row its breaker (the core
:class:`~esper_core.breaker.CircuitBreaker`) opens and the sink is not called at all for ``retry_after_s``; then one
delivery tries it again. Beyond ``max_queued`` packets the oldest are dropped and counted. Packets still queued when
the run stops are given ``wait_ms`` to go, then left.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from esper_core.breaker import CircuitBreaker
from esper_core.config import section
from esper_core.config.validators import at_least, not_negative

__all__ = ["SinkBlockedError", "SinkChannel", "SinkOptions"]


@section("nissa.delivery")
@attrs.frozen
class SinkOptions:
    """How telemetry reaches the sinks when one of them fails (docs/tolaria.md, "When a plugin fails")."""

    #: Packets kept for a failing sink; beyond this the oldest are dropped (counted).
    max_queued: int = attrs.field(default=1_000, validator=at_least(1))
    #: Failures in a row that open a sink's breaker: it is then not called at all for ``retry_after_s``.
    failure_threshold: int = attrs.field(default=3, validator=at_least(1))
    retry_after_s: float = attrs.field(default=30.0, validator=not_negative)
    #: How long a decision point waits for the sinks to take its packets (milliseconds); a sink slower than this is
    #: reported as blocking, once, and catches up from its queue.
    wait_ms: float = attrs.field(default=250.0, validator=not_negative)


class SinkBlockedError(TimeoutError):
    """A sink did not take its packets within ``nissa.delivery.wait_ms``: it is blocking (its queue keeps them)."""


class SinkChannel:
    """One sink, its queue of undelivered packets, its breaker and its delivery thread (see the module)."""

    def __init__(
        self,
        sink: Any,
        name: str,
        options: SinkOptions,
        on_failure: Callable[[BaseException, str], None],
    ) -> None:
        self.sink, self.name, self.options = sink, name, options
        self.queue: deque[Any] = deque(maxlen=options.max_queued)
        self.breaker = CircuitBreaker(
            f"sink:{name}", failure_threshold=options.failure_threshold, open_timeout_s=options.retry_after_s
        )
        self.on_failure = on_failure
        self.dropped = 0
        self.delivered = 0
        self._lock = threading.Condition()
        self._wanted = False  # something to do: new packets, a flush, or closing
        self._flush_wanted = False
        self._busy = False
        self._closing = False
        self._blocked_reported = False
        self._failures: list[tuple[BaseException, str]] = []
        self._thread = threading.Thread(target=self._work, name=f"esper-sink-{name}", daemon=True)
        self._thread.start()

    # -- the run's side -----------------------------------------------------------------------------------------
    def emit(self, packet: Any) -> None:
        """Queue ``packet`` for the sink (the oldest goes, counted, when the queue is full)."""
        with self._lock:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1  # the deque drops the oldest on append
            self.queue.append(packet)
            self._wanted = True
            self._lock.notify_all()

    def flush(self) -> None:
        """Ask for delivery and the sink's own flush, wait for it at most ``wait_ms``, and report what failed."""
        with self._lock:
            self._flush_wanted = self._wanted = True
            self._lock.notify_all()
        self.settle()

    def settle(self, wait_ms: float | None = None) -> bool:
        """Wait (at most ``wait_ms``, default the option) until the sink has taken what it can; report failures on
        the calling thread. Returns whether the channel is idle; a sink still busy after the wait is blocking."""
        limit = self.options.wait_ms if wait_ms is None else wait_ms
        deadline = time.monotonic() + limit / 1000.0
        with self._lock:
            while self._busy or (self._wanted and not self._closing):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            blocked = self._busy
            failures, self._failures = self._failures, []
            if not blocked:
                self._blocked_reported = False
        for error, during in failures:
            self.on_failure(error, during)
        if blocked and not self._blocked_reported:
            self._blocked_reported = True
            self.on_failure(
                SinkBlockedError(
                    f"the sink did not take its packets within {limit:g} ms (nissa.delivery.wait_ms); training goes "
                    f"on, and they wait in its queue ({len(self.queue)} now)"
                ),
                "emit",
            )
        return not blocked

    def close(self) -> None:
        """Deliver what is queued (waiting at most ``wait_ms``), then close the sink; a sink still blocking is left
        to its thread, not closed under it. Failures are reported."""
        with self._lock:
            self._closing = self._flush_wanted = self._wanted = True
            self._lock.notify_all()
        self._thread.join(self.options.wait_ms / 1000.0)
        self.settle(0)
        if self._thread.is_alive():
            return
        self.sink.close()

    # -- the channel's thread -----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._wanted:
                    self._lock.wait()
                self._wanted = False
                self._busy = True
                closing = self._closing
            try:
                self._deliver()
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()
            if closing:
                return

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self.queue or not self.breaker.allow():
                    break
                packet = self.queue[0]
            try:
                self.sink.emit(packet)
            except Exception as error:  # noqa: BLE001 - a sink must never stop training
                self._failed(error, "emit")
                return  # tried again at the next delivery, not in a loop
            with self._lock:
                if self.queue and self.queue[0] is packet:
                    self.queue.popleft()
                self.delivered += 1
                self.breaker.record_success()
        with self._lock:
            flush = self._flush_wanted and not self.queue and self.breaker.allow()
            self._flush_wanted = False
        if flush:
            try:
                self.sink.flush()
            except Exception as error:  # noqa: BLE001 - a sink must never stop training
                self._failed(error, "flush")

    def _failed(self, error: BaseException, during: str) -> None:
        with self._lock:
            self.breaker.record_failure(f"{type(error).__name__}: {error}")
            self._failures.append((error, during))
