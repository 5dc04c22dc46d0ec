"""The ``elasticsearch`` telemetry sink: every packet as documents in daily indices, sent in bulk, at least once.

How it behaves, and why:

- ``emit`` only turns the packet into documents (:mod:`esper_nissa.elastic.documents`) and buffers them: no network
  per packet. Only when ``batch_size`` documents are waiting does it send a full batch on its own, and not while
  the last attempt failed (then the next ``flush`` retries). ``emit`` never raises because the server is away, so
  Tolaria's :class:`~esper_core.tolaria.sinks.SinkChannel` never re-emits a packet the sink already holds.
- ``flush`` sends everything buffered, ``batch_size`` documents per bulk request. A request that fails leaves its
  documents buffered, in order; so do the failed items of a partly failed bulk when the failure is one that passes
  (429, 5xx, a write block). Items the server refuses for good (a 4xx such as a mapping error) would fail forever:
  they are dropped, counted in ``rejected`` and logged. A flush that could not deliver raises
  :class:`~esper_nissa.elastic.errors.ElasticsearchSinkError` naming the server and the error; the channel reports
  it and calls again later. Nothing buffered is lost, except that beyond ``max_buffered`` documents the oldest are
  dropped (counted in ``dropped``).
- Sending twice is harmless: ids and indices come from the packet (``index`` operations with an explicit ``_id``),
  so a document sent again overwrites itself.
- A run's packet is named by its place in the run (see ``_identity``); the counts per place travel in Tolaria's
  checkpoints (``state_dict``/``load_state_dict``), so a resumed run overwrites the documents of the places it
  emits again after its checkpoint, and only those.
- Requests go through the one core :class:`~esper_core.breaker.CircuitBreaker`: after ``failure_threshold``
  failed deliveries in a row the sink makes no request for ``retry_after_s``, then one flush probes the server.
- Before its first request, and again after every failure (the server may have come back empty), the sink puts its
  index templates (:mod:`esper_nissa.elastic.templates`). Retention (:mod:`esper_nissa.elastic.retention`) runs
  when the sink first reaches the server and then at most once a day; a failed retention pass is logged and tried
  again at the next flush, and never holds back telemetry.
- ``close`` tries a last flush (unless the breaker is open), closes the client, and raises if documents were left
  undelivered (counted in ``abandoned``); closing again does nothing.

One lock guards the buffer and the requests: the sink may be called from several threads, and a flush holds the
lock while it sends (Tolaria calls its sinks from one thread, at decision points).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

from esper_core.breaker import OPEN, CircuitBreaker
from esper_nissa.elastic.client import build_client, describe_error
from esper_nissa.elastic.documents import Document, documents_of
from esper_nissa.elastic.errors import ElasticsearchSinkError
from esper_nissa.elastic.options import ElasticsearchOptions
from esper_nissa.elastic.retention import apply_retention
from esper_nissa.elastic.templates import install_templates

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from esper_core.leyline import TelemetryPacket

logger = logging.getLogger(__name__)

#: Packet ids whose document identity the sink remembers (a packet relayed again within this many keeps its id).
REMEMBERED_PACKETS = 10_000

#: Seconds between retention passes.
RETENTION_INTERVAL_S = 24 * 3600.0
#: Item statuses of a bulk response worth sending again: the server was busy or failing, not the document wrong.
_RETRYABLE_STATUSES = frozenset({408, 429})
#: Error types worth sending again whatever their status: an index write block (disk flood stage, or set by an
#: operator) is lifted again.
_RETRYABLE_TYPES = frozenset({"cluster_block_exception", "es_rejected_execution_exception"})

__all__ = ["ElasticsearchSink"]


class _BulkItemsFailed(Exception):
    """Some items of a bulk request failed in a way that passes; they stay buffered."""


class ElasticsearchSink:
    """Writes telemetry packets to Elasticsearch (see the module).

    :param options: the ``[nissa.elasticsearch]`` section.
    :param client: a client to use instead of one built from ``options`` (it is closed with the sink).
    :param clock: monotonic seconds, for the breaker.
    :param wall_clock: seconds since the epoch, for retention's "today" and its daily schedule.
    """

    def __init__(
        self,
        options: ElasticsearchOptions | None = None,
        *,
        client: Elasticsearch | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options if options is not None else ElasticsearchOptions()
        self.url = self.options.url
        self.client = client if client is not None else build_client(self.options)
        self.breaker = CircuitBreaker(
            f"nissa.elasticsearch {self.url}",
            failure_threshold=self.options.failure_threshold,
            open_timeout_s=self.options.retry_after_s,
            clock=clock,
        )
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._buffer: deque[Document] = deque()
        self._closed = False
        #: Whether the templates are in place since the last failure.
        self._prepared = False
        #: Whether the last delivery attempt failed: ``emit`` then leaves retrying to ``flush``.
        self._failing = False
        self._retention_due = 0.0
        self._last_error = ""
        #: Documents the server acknowledged (a document sent twice counts twice).
        self.indexed = 0
        #: Bulk requests (or preparations) that failed, wholly or in part.
        self.failed_attempts = 0
        #: Oldest documents dropped because more than ``max_buffered`` were waiting.
        self.dropped = 0
        #: Documents the server refused for good (a 4xx item error such as a mapping conflict); never resent.
        self.rejected = 0
        #: Documents still buffered when the sink closed.
        self.abandoned = 0
        #: Indices deleted by retention, and retention passes that failed.
        self.expired_indices: list[str] = []
        self.retention_failures = 0
        #: Packets seen per (run, source, epoch, step): what makes a run packet's document id (see ``_identity``),
        #: and the identities given to the most recent packets (the same packet relayed twice keeps its identity).
        self._occurrences: dict[tuple[str, str, int, int], int] = {}
        self._identities: OrderedDict[str, str] = OrderedDict()

    # -- the TelemetrySink protocol -------------------------------------------------------------------------------
    def emit(self, packet: TelemetryPacket) -> None:
        """Buffer the packet's documents; send a batch only when ``batch_size`` are waiting (see the module)."""
        if self._closed:
            raise ValueError(f"the elasticsearch sink writing to {self.url} is closed")
        documents = documents_of(packet, self.options.index_prefix, identity=self._identity(packet))
        with self._lock:
            if self._closed:
                raise ValueError(f"the elasticsearch sink writing to {self.url} is closed")
            self._buffer.extend(documents)
            self._trim()
            if len(self._buffer) >= self.options.batch_size and not self._failing:
                self._deliver(full_batches_only=True)

    def _identity(self, packet: TelemetryPacket) -> str | None:
        """A run packet's document id from where it stands in the run: run, source, epoch, step, and how many packets
        of that source this sink saw at that step before. A resumed run emits the decision points after its
        checkpoint again, with new packet ids but the same places, so its documents overwrite those of the attempt
        that was killed instead of doubling them (a rollback within one process counts on: both attempts stay).
        Packets of no run (services) keep their packet id."""
        if not packet.training_run_id:
            return None
        key = packet.packet_id or hashlib.sha1(packet.SerializeToString(deterministic=True)).hexdigest()
        place = (packet.training_run_id, packet.source_subsystem, int(packet.epoch), int(packet.global_step))
        with self._lock:
            known = self._identities.get(key)
            if known is not None:
                return known
            seen = self._occurrences.get(place, 0)
            self._occurrences[place] = seen + 1
            identity = self._identities[key] = f"{place[0]}:{place[1]}:{place[2]}:{place[3]}:{seen}"
            while len(self._identities) > REMEMBERED_PACKETS:
                self._identities.popitem(last=False)
        return identity

    # -- the ResumableSink protocol: where each place of the run stood at a checkpoint ---------------------------
    def state_dict(self) -> dict[str, Any]:
        """How many packets the sink saw at each place so far (plain data, for Tolaria's checkpoints)."""
        with self._lock:
            return {"places": [[*place, seen] for place, seen in self._occurrences.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Count on from a checkpoint. A resumed process starts from the counts of the places the killed attempt
        used before its checkpoint, so a packet it emits at such a place (Urza's at step 0, a rollback's at the
        checkpoint's step) takes the next number there instead of overwriting a document it does not emit again;
        the places after the checkpoint start from 0 again, and their documents overwrite the killed attempt's. A
        rollback within this process keeps its higher counts (the larger of the two is kept): both attempts stay."""
        with self._lock:
            for run, source, epoch, step, seen in state.get("places", []):
                place = (str(run), str(source), int(epoch), int(step))
                self._occurrences[place] = max(self._occurrences.get(place, 0), int(seen))

    def flush(self) -> None:
        """Send every buffered document; raise :class:`ElasticsearchSinkError` if some could not be delivered
        (they stay buffered for the next flush)."""
        with self._lock:
            if self._closed:
                return
            if not self._buffer and self._wall_clock() < self._retention_due:
                return
            error = self._deliver(full_batches_only=False)
            if error is not None:
                raise ElasticsearchSinkError(self._failure_message(error))

    def close(self) -> None:
        """A last flush (unless the breaker is open), then close the client. Raises if documents were left
        undelivered; closing again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            error: str | None = None
            if self._buffer:
                error = self._deliver(full_batches_only=False)
            left = len(self._buffer)
            self.abandoned += left
            self._buffer.clear()
            try:
                self.client.close()
            except Exception as close_error:  # noqa: BLE001 - closing a connection pool must not hide the data loss
                logger.debug("closing the Elasticsearch client failed: %s", close_error)
        if left:
            dropped = f" ({self.dropped} more were dropped earlier, beyond max_buffered)" if self.dropped else ""
            raise ElasticsearchSinkError(
                f"the elasticsearch sink closed with {left} document(s) it could not deliver to {self.url}, now lost"
                f"{dropped}: {error}"
            )

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Documents waiting to be sent."""
        return len(self._buffer)

    @property
    def last_error(self) -> str:
        """The last delivery failure, in one line ("" before any)."""
        return self._last_error

    def counters(self) -> dict[str, int]:
        """The sink's counts, for telemetry and tests."""
        return {
            "indexed": self.indexed,
            "buffered": self.buffered,
            "failed_attempts": self.failed_attempts,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "abandoned": self.abandoned,
            "expired_indices": len(self.expired_indices),
            "retention_failures": self.retention_failures,
        }

    # -- delivery -----------------------------------------------------------------------------------------------
    def _trim(self) -> None:
        excess = len(self._buffer) - self.options.max_buffered
        if excess <= 0:
            return
        if not self.dropped:
            logger.warning(
                "elasticsearch sink: more than %d documents are waiting for %s; dropping the oldest (counted in "
                "`dropped`)",
                self.options.max_buffered,
                self.url,
            )
        for _ in range(excess):
            self._buffer.popleft()
        self.dropped += excess

    def _deliver(self, *, full_batches_only: bool) -> str | None:
        """Send buffered batches through the breaker; return what went wrong, or None when all went out."""
        if not self.breaker.allow():
            self._log_breaker()
            return (
                f"not tried: the circuit breaker is open after {self.options.failure_threshold} failed deliveries in "
                f"a row (last: {self._last_error}); the next try comes after {self.options.retry_after_s:g} s"
            )
        try:
            self._prepare()
            batch_size = self.options.batch_size
            while self._buffer and (not full_batches_only or len(self._buffer) >= batch_size):
                self._send(list(islice(self._buffer, batch_size)))
        except Exception as error:  # noqa: BLE001 - any failure keeps the documents; the caller reports it
            self._failing = True
            self._prepared = False  # the server may come back without our templates (a new, empty cluster)
            self.failed_attempts += 1
            self._last_error = describe_error(error) if not isinstance(error, _BulkItemsFailed) else str(error)
            self.breaker.record_failure(self._last_error)
            self._log_breaker()
            return self._last_error
        self._failing = False
        self.breaker.record_success()
        self._log_breaker()
        return None

    def _prepare(self) -> None:
        """Templates once per connection; retention when it is due (its failure is logged, not raised)."""
        if not self._prepared:
            install_templates(self.client, self.options.index_prefix)
            self._prepared = True
        now = self._wall_clock()
        if now < self._retention_due:
            return
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        try:
            deleted = apply_retention(self.client, self.options.index_prefix, self.options.retention_days, today)
        except Exception as error:  # noqa: BLE001 - retention must never hold back telemetry
            self.retention_failures += 1
            logger.warning(
                "elasticsearch sink: retention on %s failed (tried again at the next flush): %s",
                self.url,
                describe_error(error),
            )
            return
        self._retention_due = now + RETENTION_INTERVAL_S
        if deleted:
            self.expired_indices.extend(deleted)
            logger.info(
                "elasticsearch sink: deleted %d index(es) older than %d days on %s: %s",
                len(deleted),
                self.options.retention_days,
                self.url,
                ", ".join(deleted),
            )

    def _send(self, batch: list[Document]) -> None:
        """One bulk request for ``batch`` (the first documents of the buffer); take off the buffer what the server
        took or refused for good, keep in order what may pass next time."""
        # The documents are NDJSON bytes already (serialized once, at emit); the client's NDJSON serializer passes
        # bytes through as they are, though the signature only names the list-of-dicts form.
        body_bytes = b"".join(document.lines for document in batch)
        response = self.client.bulk(operations=body_bytes)  # type: ignore[arg-type]
        body: dict[str, Any] = response.body
        if not body.get("errors"):
            for _ in batch:
                self._buffer.popleft()
            self.indexed += len(batch)
            return
        items: list[dict[str, Any]] = body.get("items", [])
        if len(items) != len(batch):
            raise _BulkItemsFailed(
                f"the bulk response has {len(items)} items for {len(batch)} documents; all are kept for a retry"
            )
        kept: list[Document] = []
        first_error = ""
        for document, item in zip(batch, items, strict=True):
            result: dict[str, Any] = next(iter(item.values()), {})
            status = int(result.get("status", 500))
            if status < 300:
                self.indexed += 1
                continue
            error = result.get("error") or {}
            reason = f"HTTP {status} {error.get('type', '')}: {error.get('reason', '')}".strip()
            if status >= 500 or status in _RETRYABLE_STATUSES or error.get("type") in _RETRYABLE_TYPES:
                kept.append(document)
                first_error = first_error or f"{document.index}/{document.id}: {reason}"
            else:
                self.rejected += 1
                logger.warning(
                    "elasticsearch sink: %s refused document %s in %s for good, dropped: %s",
                    self.url,
                    document.id,
                    document.index,
                    reason,
                )
        for _ in batch:
            self._buffer.popleft()
        self._buffer.extendleft(reversed(kept))
        if kept:
            raise _BulkItemsFailed(
                f"{len(kept)} of {len(batch)} documents of a bulk request failed and stay buffered; first: "
                f"{first_error}"
            )

    def _failure_message(self, error: str) -> str:
        dropped = f", {self.dropped} dropped so far (max_buffered {self.options.max_buffered})" if self.dropped else ""
        return (
            f"elasticsearch sink could not deliver to {self.url}: {error}; {len(self._buffer)} document(s) stay "
            f"buffered for the next flush{dropped}"
        )

    def _log_breaker(self) -> None:
        for transition in self.breaker.drain_transitions():
            level = logging.WARNING if transition.to_state == OPEN else logging.INFO
            logger.log(level, "elasticsearch sink %s: circuit breaker: %s", self.url, transition.reason)

    def __enter__(self) -> ElasticsearchSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"ElasticsearchSink({self.url!r}, prefix={self.options.index_prefix!r}, buffered={self.buffered}{state})"
