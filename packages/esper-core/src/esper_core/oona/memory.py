"""An in-process backend with the semantics of Redis Streams consumer groups; the embedded default.

Thread-safe: one lock guards all streams and a condition wakes blocked readers when entries arrive. Trimming with
``maxlen`` is exact here (Redis trims approximately, in whole macro nodes); the conformance suite allows for both.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import attrs

from esper_core.oona.backend import StreamEntry, parse_entry_id


@attrs.define
class _Pending:
    consumer: str
    delivered_at_ms: float
    delivery_count: int


@attrs.define
class _Group:
    last_delivered: tuple[int, int] = (0, 0)
    pending: OrderedDict[str, _Pending] = attrs.field(factory=OrderedDict)


@attrs.define
class _Stream:
    entries: OrderedDict[str, dict[str, bytes]] = attrs.field(factory=OrderedDict)
    last_id: tuple[int, int] = (0, 0)
    groups: dict[str, _Group] = attrs.field(factory=dict)


class MemoryBackend:
    def __init__(self, clock_ms: Callable[[], float] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time() * 1000.0)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closed = False

    # -- writing ----------------------------------------------------------------------------------------------
    def publish(self, stream: str, fields: Mapping[str, bytes], *, maxlen: int | None = None) -> str:
        with self._arrived:
            entry_id = self._append(stream, fields, maxlen)
            self._arrived.notify_all()
            return entry_id

    def publish_many(
        self, entries: Sequence[tuple[str, Mapping[str, bytes]]], *, maxlen: int | None = None
    ) -> list[str]:
        with self._arrived:
            ids = [self._append(stream, fields, maxlen) for stream, fields in entries]
            self._arrived.notify_all()
            return ids

    def _append(self, stream: str, fields: Mapping[str, bytes], maxlen: int | None) -> str:
        data = self._streams.setdefault(stream, _Stream())
        now = int(self._clock_ms())
        last_ms, last_seq = data.last_id
        new_id = (now, 0) if now > last_ms else (last_ms, last_seq + 1)
        data.last_id = new_id
        entry_id = f"{new_id[0]}-{new_id[1]}"
        data.entries[entry_id] = {str(key): bytes(value) for key, value in fields.items()}
        if maxlen is not None:
            self._trim_locked(data, maxlen=maxlen, min_id=None)
        return entry_id

    # -- groups -----------------------------------------------------------------------------------------------
    def ensure_group(self, stream: str, group: str, *, from_start: bool = False) -> None:
        with self._lock:
            data = self._streams.setdefault(stream, _Stream())
            if group not in data.groups:
                # "$" is the last id the stream ever gave out (trimmed entries included), as in Redis.
                data.groups[group] = _Group(last_delivered=(0, 0) if from_start else data.last_id)

    def destroy_group(self, stream: str, group: str) -> bool:
        with self._lock:
            data = self._streams.get(stream)
            return data is not None and data.groups.pop(group, None) is not None

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        data = self._streams.get(stream)
        if data is None or group not in data.groups:
            raise LookupError(f"consumer group {group!r} does not exist on stream {stream!r}; call ensure_group first")
        return data, data.groups[group]

    def read(
        self,
        streams: Sequence[str],
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int,
        ack: Mapping[str, Sequence[str]] | None = None,
    ) -> list[StreamEntry]:
        for stream, entry_ids in (ack or {}).items():
            self.ack(stream, group, entry_ids)
        deadline = time.monotonic() + block_ms / 1000.0
        with self._arrived:
            while True:
                delivered = self._deliver_new(streams, group, consumer, count)
                remaining = deadline - time.monotonic()
                if delivered or block_ms <= 0 or remaining <= 0 or self._closed:
                    return delivered
                self._arrived.wait(remaining)

    def request(
        self,
        entries: Sequence[tuple[str, Mapping[str, bytes]]],
        *,
        maxlen: int | None = None,
        streams: Sequence[str],
        group: str,
        consumer: str,
        count: int,
        block_ms: int,
        ack: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[list[str], list[StreamEntry]]:
        """Publish ``entries``, then :meth:`read` (there is no round trip to save in memory)."""
        ids = self.publish_many(entries, maxlen=maxlen)
        return ids, self.read(streams, group, consumer, count=count, block_ms=block_ms, ack=ack)

    def _deliver_new(self, streams: Sequence[str], group: str, consumer: str, count: int) -> list[StreamEntry]:
        delivered: list[StreamEntry] = []
        now = self._clock_ms()
        for stream in streams:
            data, state = self._group(stream, group)
            taken = 0
            for entry_id, fields in data.entries.items():
                if taken >= count:
                    break
                parsed = parse_entry_id(entry_id)
                if parsed <= state.last_delivered:
                    continue
                state.last_delivered = parsed
                state.pending[entry_id] = _Pending(consumer, now, 1)
                delivered.append(StreamEntry(stream, entry_id, dict(fields), 1))
                taken += 1
        return delivered

    def claim_idle(self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        with self._lock:
            data, state = self._group(stream, group)
            now = self._clock_ms()
            claimed: list[StreamEntry] = []
            for entry_id in list(state.pending):
                if len(claimed) >= count:
                    break
                pending = state.pending[entry_id]
                if now - pending.delivered_at_ms < min_idle_ms:
                    continue
                fields = data.entries.get(entry_id)
                if fields is None:  # trimmed while pending: nothing left to deliver
                    del state.pending[entry_id]
                    continue
                pending.consumer = consumer
                pending.delivered_at_ms = now
                pending.delivery_count += 1
                claimed.append(StreamEntry(stream, entry_id, dict(fields), pending.delivery_count))
            return claimed

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        with self._lock:
            _, state = self._group(stream, group)
            return sum(1 for entry_id in entry_ids if state.pending.pop(entry_id, None) is not None)

    # -- inspection and housekeeping --------------------------------------------------------------------------
    def length(self, stream: str) -> int:
        with self._lock:
            data = self._streams.get(stream)
            return 0 if data is None else len(data.entries)

    def pending_count(self, stream: str, group: str) -> int:
        with self._lock:
            return len(self._group(stream, group)[1].pending)

    def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | None = None) -> int:
        with self._lock:
            data = self._streams.get(stream)
            return 0 if data is None else self._trim_locked(data, maxlen=maxlen, min_id=min_id)

    @staticmethod
    def _trim_locked(data: _Stream, *, maxlen: int | None, min_id: str | None) -> int:
        removed = 0
        if maxlen is not None:
            while len(data.entries) > maxlen:
                data.entries.popitem(last=False)
                removed += 1
        if min_id is not None:
            floor = parse_entry_id(min_id)
            while data.entries and parse_entry_id(next(iter(data.entries))) < floor:
                data.entries.popitem(last=False)
                removed += 1
        return removed

    def close(self) -> None:
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()
