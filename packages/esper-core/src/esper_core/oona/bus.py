"""Oona: typed, signed messaging over any :class:`BusBackend`.

Publishing wraps a Leyline message in a ``BusEnvelope``, signs the envelope bytes with the run's key, and appends
it to the stream for its kind (telemetry, policy updates, kernel prefetch, ...). HIGH and CRITICAL messages go to the
emergency stream while its rate cap allows; over the cap they take their normal route (counted, never lost).
Optional depth thresholds reroute or drop normal-priority traffic under backpressure, with counts.

Consuming is done by consumer groups (see :meth:`Oona.subscribe`: a new group starts at the stream's end unless asked
for the history). It checks each entry before trusting anything in it: one that is not a bus entry, or whose
signature is missing or wrong, is acknowledged, dropped and counted; no entry can make a read raise (see
:meth:`Oona._open`). It then decodes the envelope and payload (a signed entry that cannot be decoded is
dead-lettered) and hands a :class:`BusMessage` to the handler, acknowledging it when the handler returns. A handler
that raises makes the message retry: it is republished with ``attempt + 1`` and the original acknowledged; once a
message has been attempted ``max_attempts`` times it goes to the dead-letter stream instead.
Entries left pending by a crashed consumer are claimed after ``claim_idle_ms`` and count their deliveries towards the
same limit. Delivery is at-least-once: handlers must be idempotent (commands carry nonces for exactly this reason).

Round trips: a consumer that reads again right after handling can send its replies and acknowledgements with that
read (:meth:`Oona.poll` with ``publish`` and ``ack``), and a requester can send its request with the read that waits
for the reply (:meth:`Oona.request`): one pipelined round trip each on Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import attrs
from google.protobuf.message import Message

from esper_core.leyline import (
    PAYLOAD_TYPES,
    BusEnvelope,
    BusMessageType,
    MessagePriority,
    bus_message_type_of,
)
from esper_core.oona.backend import BusBackend, StreamEntry, parse_entry_id
from esper_core.oona.options import OonaOptions, StreamNames
from esper_core.signing import SigningKey

ENVELOPE_FIELD = "envelope"
SIGNATURE_FIELD = "signature"
Priority: TypeAlias = MessagePriority.ValueType
_URGENT = (MessagePriority.MESSAGE_PRIORITY_HIGH, MessagePriority.MESSAGE_PRIORITY_CRITICAL)


@attrs.frozen
class BusMessage:
    """A verified, decoded message delivered to a consumer."""

    stream: str
    entry_id: str
    envelope: BusEnvelope
    payload: Message
    delivery_count: int

    @property
    def attempts(self) -> int:
        """Delivery attempts including this one."""
        return self.envelope.attempt + self.delivery_count


@attrs.frozen
class Outgoing:
    """A message to publish with :meth:`Oona.publish_batch`, with the options :meth:`Oona.publish` takes."""

    message: Message
    priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL
    #: The stream, when not the message kind's own (see :func:`route_for`).
    stream: str | None = None
    correlation_id: str = ""


@attrs.define
class ConsumeReport:
    delivered: int = 0
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    #: Entries whose signature was missing or wrong: acknowledged and dropped.
    dropped_bad_signature: int = 0
    #: Entries that were not bus entries at all (no envelope, fields of the wrong type): acknowledged and dropped.
    dropped_malformed: int = 0


class _TokenBucket:
    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def route_for(message_type: int, streams: StreamNames) -> str:
    """The stream a message type travels on at normal priority."""
    kinds = BusMessageType
    if message_type == kinds.BUS_MESSAGE_TYPE_TELEMETRY:
        return streams.telemetry
    if message_type == kinds.BUS_MESSAGE_TYPE_POLICY_UPDATE:
        return streams.policy
    if message_type == kinds.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_REQUEST:
        return streams.kernel_requests
    if message_type in (kinds.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_READY, kinds.BUS_MESSAGE_TYPE_KERNEL_CATALOG_UPDATE):
        return streams.kernel_ready
    if message_type == kinds.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_ERROR:
        return streams.kernel_errors
    if message_type == kinds.BUS_MESSAGE_TYPE_EMERGENCY_SIGNAL:
        return streams.emergency
    if message_type == kinds.BUS_MESSAGE_TYPE_GROUND_RUN_REQUEST:
        return streams.simic_jobs
    if message_type == kinds.BUS_MESSAGE_TYPE_GROUND_RUN_RESULT:
        return streams.simic_results
    if message_type == kinds.BUS_MESSAGE_TYPE_RUN_RECORD_ENTRY:
        return streams.record
    return streams.normal


class Oona:
    def __init__(
        self,
        backend: BusBackend,
        *,
        signing_key: SigningKey,
        options: OonaOptions | None = None,
        group: str = "esper",
        consumer: str = "esper-1",
        source: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.key = signing_key
        self.options = options or OonaOptions()
        self.streams = self.options.streams
        self.group = group
        self.consumer = consumer
        self.source = source
        self._clock = clock
        self._emergency_bucket = _TokenBucket(self.options.emergency_max_per_minute, clock)
        # route_for, looked up once per message type instead of walked for every message.
        self._routes = {kind: route_for(kind, self.streams) for kind in BusMessageType.values()}
        self._groups_ready: set[str] = set()
        self._last_claim: dict[str, float] = {}
        self.counters: dict[str, int] = {
            "published": 0,
            "published_emergency": 0,
            "emergency_rate_limited": 0,
            "rerouted": 0,
            "dropped_backpressure": 0,
            "delivered": 0,
            "handled": 0,
            "retried": 0,
            "dead_lettered": 0,
            "dropped_bad_signature": 0,
            "dropped_malformed": 0,
            "trimmed": 0,
        }

    # -- publishing -------------------------------------------------------------------------------------------
    def envelope_for(
        self,
        message: Message,
        *,
        priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL,
        correlation_id: str = "",
    ) -> BusEnvelope:
        now_ns = time.time_ns()
        envelope = BusEnvelope(
            message_type=bus_message_type_of(message),
            payload=message.SerializeToString(),
            priority=priority,
            source=self.source,
            correlation_id=correlation_id,
        )
        created = envelope.created_at  # set field by field: Timestamp.FromNanoseconds costs as much again
        created.seconds, created.nanos = divmod(now_ns, 1_000_000_000)
        return envelope

    def _fields(self, envelope: BusEnvelope) -> dict[str, bytes]:
        data = envelope.SerializeToString(deterministic=True)
        return {ENVELOPE_FIELD: data, SIGNATURE_FIELD: self.key.sign(data)}

    def choose_stream(self, envelope: BusEnvelope, stream: str | None = None) -> str | None:
        """The stream for ``envelope`` after priority routing and backpressure; None means drop."""
        target = stream or self._routes.get(envelope.message_type) or route_for(envelope.message_type, self.streams)
        if envelope.priority in _URGENT and target != self.streams.emergency:
            if self._emergency_bucket.take():
                self.counters["published_emergency"] += 1
                return self.streams.emergency
            self.counters["emergency_rate_limited"] += 1
            return target
        options = self.options
        if target != self.streams.emergency and (options.drop_depth or options.reroute_depth):
            depth = self.backend.length(target)
            if options.drop_depth and depth >= options.drop_depth:
                self.counters["dropped_backpressure"] += 1
                return None
            if options.reroute_depth and depth >= options.reroute_depth and self._emergency_bucket.take():
                self.counters["rerouted"] += 1
                return self.streams.emergency
        return target

    def publish(
        self,
        message: Message,
        *,
        priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL,
        stream: str | None = None,
        correlation_id: str = "",
    ) -> str | None:
        """Publish ``message``; return its entry id, or None if backpressure dropped it (counted)."""
        envelope = self.envelope_for(message, priority=priority, correlation_id=correlation_id)
        target = self.choose_stream(envelope, stream)
        if target is None:
            return None
        entry_id = self.backend.publish(target, self._fields(envelope), maxlen=self.options.max_stream_length)
        self.counters["published"] += 1
        return entry_id

    def publish_many(
        self, messages: Iterable[Message], *, priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL
    ) -> list[str | None]:
        """Publish several messages in one backend round trip (pipelined on Redis)."""
        return self.publish_batch([Outgoing(message, priority=priority) for message in messages])

    def publish_batch(self, batch: Iterable[Outgoing]) -> list[str | None]:
        """Publish several messages, each routed as :meth:`publish` would route it, in one backend round trip
        (pipelined on Redis, in order: the first is stored, and wakes its readers, first). Returns the entry ids,
        None for a message that backpressure dropped."""
        entries, positions = self._prepare(batch)
        ids = self.backend.publish_many(entries, maxlen=self.options.max_stream_length) if entries else []
        self.counters["published"] += len(ids)
        return self._placed(ids, positions)

    def _prepare(self, batch: Iterable[Outgoing]) -> tuple[list[tuple[str, dict[str, bytes]]], list[int | None]]:
        """The signed entries of ``batch`` and, for each message, its index among them (None: dropped)."""
        entries: list[tuple[str, dict[str, bytes]]] = []
        positions: list[int | None] = []
        for item in batch:
            envelope = self.envelope_for(item.message, priority=item.priority, correlation_id=item.correlation_id)
            target = self.choose_stream(envelope, item.stream)
            if target is None:
                positions.append(None)
            else:
                positions.append(len(entries))
                entries.append((target, self._fields(envelope)))
        return entries, positions

    @staticmethod
    def _placed(ids: Sequence[str], positions: Sequence[int | None]) -> list[str | None]:
        return [None if position is None else ids[position] for position in positions]

    # -- consuming --------------------------------------------------------------------------------------------
    def subscribe(self, streams: Sequence[str], *, from_start: bool = False) -> None:
        """Create this bus's consumer group on ``streams`` where it is missing (idempotent).

        A new group is delivered only what is published after this call; with ``from_start`` it is delivered the
        streams' retained history too. A group that already exists (made by another process of the same service, or
        by this one before a restart) keeps its position either way: ``from_start`` only decides where a new group
        begins. :meth:`poll` subscribes implicitly, so subscribe *before* the traffic a consumer must not miss.
        """
        for stream in streams:
            if stream not in self._groups_ready:
                self.backend.ensure_group(stream, self.group, from_start=from_start)
                self._groups_ready.add(stream)

    @property
    def subscriptions(self) -> list[str]:
        """The streams this bus's group is subscribed to (in this process)."""
        return sorted(self._groups_ready)

    def destroy_group(self, streams: Sequence[str]) -> int:
        """Delete this bus's consumer group from ``streams``, with its pending entries; return how many existed.

        For a group nobody will read again (a client with a group of its own, at its end), so that Redis does not
        keep it forever. Other groups and the entries are untouched; a later :meth:`subscribe` starts afresh."""
        destroyed = 0
        for stream in streams:
            self._groups_ready.discard(stream)
            self._last_claim.pop(stream, None)
            destroyed += self.backend.destroy_group(stream, self.group)
        return destroyed

    def poll(
        self,
        streams: Sequence[str],
        *,
        count: int = 32,
        block_ms: int = 0,
        ack: Sequence[BusMessage] = (),
        publish: Sequence[Outgoing] = (),
    ) -> list[BusMessage]:
        """Verified, decoded messages for this consumer: idle claims first, then new entries.

        The caller must :meth:`ack` or :meth:`fail` each one (``consume`` does both for a handler).

        ``ack`` and ``publish`` let a consumer that reads again right after handling a batch fold its outgoing
        traffic into the read's round trip (where the backend can: one pipeline on Redis, in this order):
        ``publish`` is published as :meth:`publish_batch` would, then ``ack`` (messages already handled) is
        acknowledged, then the read waits. Those messages stay pending until this poll, so after a crash they are
        delivered again; pass only messages whose second delivery is harmless (to an idempotent handler, or to a
        client that matches replies to its requests and ignores stale ones).
        """
        return self._exchange(publish, streams, count=count, block_ms=block_ms, ack=ack)[1]

    def request(
        self,
        message: Message,
        *,
        reply_streams: Sequence[str],
        stream: str | None = None,
        correlation_id: str = "",
        priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL,
        count: int = 32,
        block_ms: int = 0,
        ack: Sequence[BusMessage] = (),
    ) -> tuple[str | None, list[BusMessage]]:
        """Publish ``message`` (as :meth:`publish`) and :meth:`poll` ``reply_streams`` for what comes back, in one
        round trip where the backend can (Redis: the XADD and the blocking XREADGROUP pipelined on one connection).

        For request-reply: the requester is waiting for the reply from the moment its request is sent, instead of
        a round trip later. Returns the request's entry id (None if backpressure dropped it) and the messages read.
        If the round trip fails and is retried, the request may be stored twice: the replier must be idempotent,
        as every Oona consumer must be.
        """
        outgoing = Outgoing(message, priority=priority, stream=stream, correlation_id=correlation_id)
        ids, messages = self._exchange([outgoing], reply_streams, count=count, block_ms=block_ms, ack=ack)
        return ids[0], messages

    def _exchange(
        self,
        publish: Sequence[Outgoing],
        streams: Sequence[str],
        *,
        count: int,
        block_ms: int,
        ack: Sequence[BusMessage],
    ) -> tuple[list[str | None], list[BusMessage]]:
        """Publish, acknowledge and read, in one round trip where the backend can."""
        self.subscribe(streams)
        entries, positions = self._prepare(publish)
        due = self._claims_due(streams)
        send = getattr(self.backend, "request", None) if entries else None
        ids: list[str] = []
        if entries and (due or not callable(send)):  # claims to make (rare), or a backend without request()
            ids = self.backend.publish_many(entries, maxlen=self.options.max_stream_length)
            entries = []
        claimed: list[StreamEntry] = []
        if due:
            if ack:  # acknowledged before claiming, or a claim could hand them back
                self.ack_many(ack)
                ack = ()
            claimed = self._claim(due, count)
        if claimed:
            read = claimed
        elif entries:
            assert callable(send)
            ids, read = send(
                entries,
                maxlen=self.options.max_stream_length,
                streams=streams,
                group=self.group,
                consumer=self.consumer,
                count=count,
                block_ms=block_ms,
                ack=self._ids_by_stream(ack) or None,
            )
            self.counters["handled"] += len(ack)
        elif ack:
            read = self.backend.read(
                streams, self.group, self.consumer, count=count, block_ms=block_ms, ack=self._ids_by_stream(ack)
            )
            self.counters["handled"] += len(ack)
        else:  # no ``ack=`` keyword: a backend written before it existed still serves other callers
            read = self.backend.read(streams, self.group, self.consumer, count=count, block_ms=block_ms)
        self.counters["published"] += len(ids)
        return self._placed(ids, positions), self._open_all(read)

    def _claims_due(self, streams: Sequence[str]) -> list[str]:
        """The streams whose idle entries it is time to claim (every ``claim_idle_ms / 2``)."""
        now = self._clock()
        claim_every = self.options.claim_idle_ms / 2000.0
        return [stream for stream in streams if now - self._last_claim.get(stream, float("-inf")) >= claim_every]

    def _claim(self, streams: Sequence[str], count: int) -> list[StreamEntry]:
        now = self._clock()
        entries: list[StreamEntry] = []
        for stream in streams:
            self._last_claim[stream] = now
            entries.extend(
                self.backend.claim_idle(
                    stream, self.group, self.consumer, min_idle_ms=self.options.claim_idle_ms, count=count
                )
            )
        return entries

    def _open_all(self, entries: Sequence[StreamEntry]) -> list[BusMessage]:
        messages = []
        dropped: dict[str, list[str]] = {}
        for entry in entries:
            message = self._open(entry, dropped)
            if message is not None:
                messages.append(message)
        # One acknowledgement per stream for everything dropped, however many bad entries a writer put there. Were
        # the process to die first, they would come back through a claim and be dropped again: harmless.
        for stream, entry_ids in dropped.items():
            self.backend.ack(stream, self.group, entry_ids)
        self.counters["delivered"] += len(messages)
        return messages

    def _open(self, entry: StreamEntry, dropped: dict[str, list[str]]) -> BusMessage | None:
        """The message in ``entry``, or None for a bad entry, which is dealt with here and never raises.

        Anyone who can write to the streams can write anything there, so nothing is trusted before the signature
        is checked, and nothing before that can fail: an entry that is not a bus entry at all (no ``envelope`` of
        bytes, a ``signature`` that is not bytes, an empty entry, odd field names) is dropped as malformed, one
        whose signature is missing or wrong as badly signed, both acknowledged (in ``dropped``) and counted, never
        dead-lettered (the dead-letter stream would become anyone's to fill, a copy per consumer group). A signed
        entry that cannot be decoded was written by a process holding the secret, so it is a bug worth keeping:
        it is dead-lettered with the reason."""
        fields = entry.fields
        data = fields.get(ENVELOPE_FIELD)
        signature = fields.get(SIGNATURE_FIELD, b"")
        if not isinstance(data, bytes) or not isinstance(signature, bytes):
            dropped.setdefault(entry.stream, []).append(entry.entry_id)
            self.counters["dropped_malformed"] += 1
            return None
        if not self.key.verify(data, signature):
            dropped.setdefault(entry.stream, []).append(entry.entry_id)
            self.counters["dropped_bad_signature"] += 1
            return None
        # Decoding failures: DecodeError from upb, UnicodeDecodeError from the pure-Python protobuf (for a string
        # that is not UTF-8); any of them must dead-letter the entry, not stop the consumer.
        try:
            envelope = BusEnvelope.FromString(data)
        except Exception:  # noqa: BLE001 - whatever a protobuf implementation raises on bad bytes
            self._dead_letter(entry, "the envelope cannot be decoded")
            return None
        if envelope.attempt + entry.delivery_count > self.options.max_attempts:
            self._dead_letter(
                entry, f"delivered {envelope.attempt + entry.delivery_count - 1} times, never acknowledged"
            )
            return None
        payload_type = PAYLOAD_TYPES.get(envelope.message_type)
        if payload_type is None:
            self._dead_letter(entry, f"unknown message type {envelope.message_type}")
            return None
        try:
            payload = payload_type.FromString(envelope.payload)
        except Exception:  # noqa: BLE001 - as above: a payload that cannot be decoded must not stop the consumer
            self._dead_letter(entry, f"the {payload_type.__name__} payload cannot be decoded")
            return None
        return BusMessage(entry.stream, entry.entry_id, envelope, payload, entry.delivery_count)

    def ack(self, message: BusMessage) -> None:
        self.ack_many([message])

    def ack_many(self, messages: Sequence[BusMessage]) -> None:
        """Acknowledge several messages with one round trip per stream."""
        for stream, entry_ids in self._ids_by_stream(messages).items():
            self.backend.ack(stream, self.group, entry_ids)
        self.counters["handled"] += len(messages)

    @staticmethod
    def _ids_by_stream(messages: Sequence[BusMessage]) -> dict[str, list[str]]:
        by_stream: dict[str, list[str]] = {}
        for message in messages:
            by_stream.setdefault(message.stream, []).append(message.entry_id)
        return by_stream

    def fail(self, message: BusMessage, reason: str) -> bool:
        """Record a failed attempt: republish for retry, or dead-letter at the limit. True if dead-lettered."""
        attempts = message.attempts
        if attempts >= self.options.max_attempts:
            self._dead_letter_fields(
                message.stream, message.entry_id, self._fields(message.envelope), f"failed {attempts} times: {reason}"
            )
            return True
        retry = BusEnvelope()
        retry.CopyFrom(message.envelope)
        retry.attempt = attempts
        self.backend.publish(message.stream, self._fields(retry), maxlen=self.options.max_stream_length)
        self.backend.ack(message.stream, self.group, [message.entry_id])
        self.counters["retried"] += 1
        return False

    def consume(
        self, streams: Sequence[str], handler: Callable[[BusMessage], Any], *, count: int = 32, block_ms: int = 0
    ) -> ConsumeReport:
        """Poll once and hand every message to ``handler``: each is acknowledged as soon as its handler returns,
        or retried (:meth:`fail`) as soon as it raises an ``Exception``.

        Acknowledging one by one is what makes a crash cheap: a process that dies in the middle of a batch (or a
        handler that raises a ``BaseException``, which propagates) leaves pending only the messages not yet
        handled, so only those are delivered again, never the ones before them."""
        counters = self.counters
        dropped_before, malformed_before = counters["dropped_bad_signature"], counters["dropped_malformed"]
        dead_before = counters["dead_lettered"]
        report = ConsumeReport()
        for message in self.poll(streams, count=count, block_ms=block_ms):
            report.delivered += 1
            try:
                handler(message)
            except Exception as error:  # noqa: BLE001 - a failing handler must not stop the consumer
                report.failed += 1
                self.fail(message, f"{type(error).__name__}: {error}")
            else:
                self.ack(message)
                report.handled += 1
        report.dropped_bad_signature = counters["dropped_bad_signature"] - dropped_before
        report.dropped_malformed = counters["dropped_malformed"] - malformed_before
        report.dead_lettered = counters["dead_lettered"] - dead_before
        return report

    def _dead_letter(self, entry: StreamEntry, reason: str) -> None:
        self._dead_letter_fields(entry.stream, entry.entry_id, dict(entry.fields), reason)

    def _dead_letter_fields(self, stream: str, entry_id: str, fields: dict[str, bytes], reason: str) -> None:
        letter = dict(fields)
        letter["reason"] = reason.encode("utf-8")
        letter["source_stream"] = stream.encode("utf-8")
        letter["source_id"] = entry_id.encode("utf-8")
        self.backend.publish(self.streams.dead_letter, letter, maxlen=self.options.max_stream_length)
        self.backend.ack(stream, self.group, [entry_id])
        self.counters["dead_lettered"] += 1

    # -- housekeeping -----------------------------------------------------------------------------------------
    def housekeeping(self, now_ms: float | None = None) -> int:
        """Trim every stream of entries older than ``message_ttl_ms``; return how many were removed."""
        ttl = self.options.message_ttl_ms
        if not ttl:
            return 0
        now = time.time() * 1000.0 if now_ms is None else now_ms
        floor = f"{int(now - ttl)}-0"
        removed = sum(self.backend.trim(stream, min_id=floor) for stream in self.streams.all())
        self.counters["trimmed"] += removed
        return removed

    def metrics(self) -> dict[str, float]:
        """Counters and stream depths, named for telemetry (``oona.<name>``)."""
        values: dict[str, float] = {f"oona.{name}": float(count) for name, count in self.counters.items()}
        for field in attrs.fields(StreamNames):
            values[f"oona.queue_depth.{field.name}"] = float(self.backend.length(getattr(self.streams, field.name)))
        return values

    def close(self) -> None:
        self.backend.close()


__all__ = ["BusMessage", "ConsumeReport", "Oona", "Outgoing", "parse_entry_id", "route_for"]
