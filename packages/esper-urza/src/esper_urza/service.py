"""``esper serve urza``: builds and stores artifacts for training processes that ask for them over Oona.

A training run whose store is ``urza-prefetch`` (:mod:`esper_urza.prefetch`) does not build seed artifacts itself: it
publishes a ``KernelPrefetchRequest`` and this service answers. It reads ``oona.streams.kernel_requests`` with the
consumer group ``urza`` (so several service processes share the work).
The group is created with the stream's history (requests published before the first service started are answered
too); a group that exists already keeps its position. For each request:

1. fetch the artifact through the :class:`~esper_urza.library.UrzaLibrary` at ``urza.root`` for the slot the request
   names (its kind and shape, and for a width slot its ``read_kind`` and ``read_shape``): warm from memory or disk, or
   built by Tezzeret on a miss and saved durably before the fetch returns;
2. reply ``KernelArtifactReady`` on ``kernel_ready`` (the artifact's key as ``artifact_ref``, its SHA-256 as
   ``checksum``, Tezzeret's forward timings as the prewarm percentiles), or ``KernelArtifactError`` on
   ``kernel_errors`` with a reason naming what was wrong; the envelope's correlation id is the request id;
3. acknowledge the request, only now: a service that dies before replying leaves it pending, and another consumer
   of the group claims it after ``oona.claim_idle_ms``.

Answering twice is harmless (the second answer finds the artifact warm and says the same; the requester ignores
replies it no longer waits for), which is what at-least-once delivery asks of a handler. Every request gets an
answer: a request the library refuses is an error reply; an unexpected failure (the disk, the database) is an error
reply too, after which the service raises so that Weatherlight rebuilds it with a freshly opened library.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import Counter, deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from esper_core.errors import ConfigError, EsperError
from esper_core.leyline import KernelArtifactError, KernelArtifactReady, KernelPrefetchRequest, TelemetryPacket
from esper_core.oona import BusMessage, Oona
from esper_core.protocols import SlotShape
from esper_core.stats import percentile
from esper_core.telemetry import Metric, build_telemetry_packet
from esper_urza.errors import ArtifactBuildError
from esper_urza.options import UrzaOptions

if TYPE_CHECKING:
    from esper_core.plugins import BuildContext
    from esper_urza.library import UrzaLibrary
    from esper_urza.records import ArtifactRecord

log = logging.getLogger("esper.urza.service")

#: How long one read of the request stream blocks: also how soon the service notices that it should stop.
POLL_MS = 500
#: Seconds between the service's telemetry packets (sent only when something happened, and once on stopping).
TELEMETRY_INTERVAL_S = 10.0
_LATENCY_WINDOW = 1024
#: Failures that belong to the request (unknown blueprint, bad parameters or slot, Tezzeret's refusal): answered,
#: and the service carries on. Anything else is answered and then raised, so that the service is rebuilt.
_REQUEST_ERRORS = (KeyError, ValueError, ArtifactBuildError)


def describe_failure(error: BaseException) -> str:
    """A reply's ``reason``: what kind of failure, and the library's own explanation."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, KeyError):
        return f"unknown blueprint: {text}"
    if isinstance(error, ValueError):
        return f"invalid request: {text}"
    if isinstance(error, ArtifactBuildError):
        return f"build refused: {text}"
    return f"the urza service failed ({type(error).__name__}): {text}"


def request_slot(request: KernelPrefetchRequest) -> SlotShape:
    """The slot a request asks for: its written kind and shape and, when ``read_shape`` is set (a width slot), the
    kind and shape its seed reads."""
    shape = tuple(int(size) for size in request.slot_shape)
    if not request.read_shape:
        return SlotShape(request.slot_kind, shape)
    read_shape = tuple(int(size) for size in request.read_shape)
    return SlotShape(request.slot_kind, shape, read_kind=request.read_kind, read_shape=read_shape)


def prewarm_percentiles(record: ArtifactRecord) -> tuple[float, float]:
    """p50 and p95 of Tezzeret's timed forward passes (the median alone for records without the samples)."""
    samples = [float(sample) for sample in record.report.get("forward_latency_samples", ())]
    if not samples:
        return record.forward_latency_ms, record.forward_latency_ms
    return statistics.median(samples), percentile(samples, 0.95)


class UrzaService:
    """The ``urza`` service: answers ``KernelPrefetchRequest`` messages from the artifact library.

    :param bus: its Oona client (group ``urza`` under ``esper serve``).
    :param library: the library at ``urza.root``, shared with the processes that open the artifacts; the service
        closes it when :meth:`run` returns.
    """

    name = "urza"

    def __init__(self, bus: Oona, library: UrzaLibrary, *, clock: Any = time.monotonic) -> None:
        self.bus = bus
        self.library = library
        self.counters: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {
            "serve": deque(maxlen=_LATENCY_WINDOW),
            "build": deque(maxlen=_LATENCY_WINDOW),
        }
        self._clock = clock
        self._last_report = clock()
        self._unreported = False

    def run(self, stop: threading.Event) -> None:
        """Answer requests, one at a time, until ``stop`` is set; the request in hand is answered and acknowledged
        first. Raises (to be rebuilt) when the bus fails or the library fails in a way no request explains."""
        streams = [self.bus.streams.kernel_requests]
        try:
            # With the history: when the group is new (the first service on this bus), requests published before it
            # started (by a run whose service was still starting) are answered, not lost. Answering a request its
            # requester stopped waiting for is harmless and still useful: the artifact is built and stored for the
            # next fetch. An existing group keeps its position and its pending requests.
            self.bus.subscribe(streams, from_start=True)
            while not stop.is_set():
                # One at a time: on a stop, nothing beyond the request in hand has been taken from the stream.
                for message in self.bus.poll(streams, count=1, block_ms=POLL_MS):
                    self.handle(message)
                if self._clock() - self._last_report >= TELEMETRY_INTERVAL_S:
                    self.report()
        finally:
            with suppress(EsperError):  # the bus may be why we are stopping; the original error matters more
                self.report()
            self.library.close()

    def handle(self, message: BusMessage) -> None:
        """Answer one request, then acknowledge it (a failure to reply leaves it pending, to be delivered again)."""
        request = message.payload
        if not isinstance(request, KernelPrefetchRequest):
            log.warning("ignoring a %s on %s: not a prefetch request", type(request).__name__, message.stream)
            self.counters["ignored"] += 1
            self.bus.ack(message)
            return
        started = time.perf_counter()
        try:
            ready = self.serve(request)
        except Exception as error:
            reason = describe_failure(error)
            self.bus.publish(
                KernelArtifactError(request_id=request.request_id, blueprint_id=request.blueprint_id, reason=reason),
                stream=self.bus.streams.kernel_errors,
                correlation_id=request.request_id,
            )
            self.bus.ack(message)
            self.counters["failed"] += 1
            self._unreported = True
            log.warning("request %s for %s failed: %s", request.request_id, request.blueprint_id, reason)
            if not isinstance(error, _REQUEST_ERRORS):
                raise
            return
        self.bus.publish(ready, stream=self.bus.streams.kernel_ready, correlation_id=request.request_id)
        self.bus.ack(message)
        self.counters["served"] += 1
        self._latency["serve"].append((time.perf_counter() - started) * 1000.0)
        self._unreported = True

    def serve(self, request: KernelPrefetchRequest) -> KernelArtifactReady:
        """The reply for ``request``: the artifact fetched (built and stored on a miss) and where to find it."""
        if not request.request_id:
            raise ValueError("the request has no request_id, so its reply could not be matched to it")
        slot = request_slot(request)
        started = time.perf_counter()
        fetched, record = self.library.fetch_artifact(request.blueprint_id, slot, dict(request.parameters))
        if fetched.source == "built":
            self.counters["built"] += 1
            self._latency["build"].append((time.perf_counter() - started) * 1000.0)
        log.info(
            "request %s: %s at %s served from %s (artifact %s)",
            request.request_id,
            request.blueprint_id,
            slot.describe(),
            fetched.source,
            record.key[:12],
        )
        p50, p95 = prewarm_percentiles(record)
        return KernelArtifactReady(
            request_id=request.request_id,
            blueprint_id=request.blueprint_id,
            artifact_ref=record.key,
            checksum=record.sha256,
            prewarm_p50_ms=p50,
            prewarm_p95_ms=p95,
        )

    def metrics(self) -> dict[str, float]:
        """``urza.service.*``: requests answered and failed, and how long answering and building took."""
        values = {
            f"urza.service.{name}_total": float(self.counters[name])
            for name in ("served", "failed", "built", "ignored")
        }
        for kind, samples in self._latency.items():
            values[f"urza.service.{kind}.p50_ms"] = statistics.median(samples) if samples else 0.0
            values[f"urza.service.{kind}.p95_ms"] = percentile(samples, 0.95)
        return values

    def telemetry(self) -> list[TelemetryPacket]:
        """The service's packet and the library's (its fetch metrics and events), if anything happened since the
        last report."""
        packets = self.library.drain_telemetry()
        if self._unreported:
            metrics = [
                Metric(name, value, "ms" if name.endswith("_ms") else "") for name, value in self.metrics().items()
            ]
            packets.insert(0, build_telemetry_packet(source="urza-service", metrics=metrics))
        return packets

    def report(self) -> None:
        """Publish :meth:`telemetry` on the bus's telemetry stream."""
        self._last_report = self._clock()
        packets = self.telemetry()
        self._unreported = False
        if packets:
            self.bus.publish_many(packets)


def build_service(context: BuildContext) -> UrzaService:
    """The service as ``esper serve urza`` builds it: the library at ``urza.root`` over the configured catalogs."""
    from esper_urza.library import UrzaLibrary
    from esper_urza.plugin import library_root

    bus = context.bus
    if not isinstance(bus, Oona):
        raise ConfigError("the urza service answers prefetch requests over the bus: run it with `esper serve urza`")
    options = context.options if isinstance(context.options, UrzaOptions) else UrzaOptions()
    library = UrzaLibrary(library_root(options, None), context.blueprint_catalogs(), options=options)
    return UrzaService(bus, library)
