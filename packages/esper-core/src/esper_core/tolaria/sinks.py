"""Telemetry sinks that can never stop training: each sink behind a :class:`SinkChannel` with a breaker and a
bounded queue.

Sinks are called only when Tolaria relays telemetry, at decision points and lifecycle events, never inside a training
step. When a sink raises, its channel keeps the packet (and those that follow) in a bounded queue, tells the run
(which writes the failure down through the plugin-failure ledger: one console line naming the sink and its
distribution, the traceback in ``RUN/plugin-errors/``, a ``plugin_error`` entry, the counts), and retries later,
in order. After ``failure_threshold`` failures in a row its breaker (the core :class:`~esper_core.breaker.
CircuitBreaker`) opens and the sink is not called at all for ``retry_after_s``; then one delivery tries it again.
Beyond ``max_queued`` packets the oldest are dropped and counted. Packets still queued when the run stops or
resumes are not kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from esper_core.breaker import CircuitBreaker
from esper_core.config import section
from esper_core.config.validators import at_least, not_negative

__all__ = ["SinkChannel", "SinkOptions"]


@section("nissa.delivery")
@attrs.frozen
class SinkOptions:
    """How telemetry reaches the sinks when one of them fails (docs/tolaria.md, "When a plugin fails")."""

    #: Packets kept for a failing sink; beyond this the oldest are dropped (counted).
    max_queued: int = attrs.field(default=1_000, validator=at_least(1))
    #: Failures in a row that open a sink's breaker: it is then not called at all for ``retry_after_s``.
    failure_threshold: int = attrs.field(default=3, validator=at_least(1))
    retry_after_s: float = attrs.field(default=30.0, validator=not_negative)


class SinkChannel:
    """One sink, its queue of undelivered packets and its breaker (see the module)."""

    def __init__(
        self,
        sink: Any,
        name: str,
        options: SinkOptions,
        on_failure: Callable[[BaseException, str], None],
    ) -> None:
        self.sink, self.name = sink, name
        self.queue: deque[Any] = deque(maxlen=options.max_queued)
        self.breaker = CircuitBreaker(
            f"sink:{name}", failure_threshold=options.failure_threshold, open_timeout_s=options.retry_after_s
        )
        self.on_failure = on_failure
        self.dropped = 0
        self.delivered = 0

    def emit(self, packet: Any) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the deque drops the oldest on append
        self.queue.append(packet)
        self._deliver()

    def flush(self) -> None:
        self._deliver()
        if self.queue or not self.breaker.allow():
            return
        try:
            self.sink.flush()
        except Exception as error:  # noqa: BLE001 - a sink must never stop training
            self._failed(error, "flush")

    def _deliver(self) -> None:
        while self.queue and self.breaker.allow():
            try:
                self.sink.emit(self.queue[0])
            except Exception as error:  # noqa: BLE001 - a sink must never stop training
                self._failed(error, "emit")
                return
            self.queue.popleft()
            self.delivered += 1
            self.breaker.record_success()

    def _failed(self, error: BaseException, during: str) -> None:
        self.breaker.record_failure(f"{type(error).__name__}: {error}")
        self.on_failure(error, during)
