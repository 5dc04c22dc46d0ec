"""A bus backend several clients of one process share (Weatherlight's services, a run's remote controller).

Every call passes through to the process's backend, except :meth:`SharedBackend.close`, which does nothing: the
backend (one Redis connection pool) belongs to the process and is closed once, by its owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from esper_core.oona.backend import BusBackend, StreamEntry


class SharedBackend:
    """A backend several clients share: everything passes through, except :meth:`close`, which the owner does."""

    def __init__(self, backend: BusBackend) -> None:
        self.inner = backend

    def publish(self, stream: str, fields: Mapping[str, bytes], *, maxlen: int | None = None) -> str:
        return self.inner.publish(stream, fields, maxlen=maxlen)

    def publish_many(
        self, entries: Sequence[tuple[str, Mapping[str, bytes]]], *, maxlen: int | None = None
    ) -> list[str]:
        return self.inner.publish_many(entries, maxlen=maxlen)

    def ensure_group(self, stream: str, group: str, *, from_start: bool = False) -> None:
        self.inner.ensure_group(stream, group, from_start=from_start)

    def destroy_group(self, stream: str, group: str) -> bool:
        return self.inner.destroy_group(stream, group)

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
        return self.inner.read(streams, group, consumer, count=count, block_ms=block_ms, ack=ack)

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
        request = getattr(self.inner, "request", None)
        if request is None:  # a backend without it: the same, in two round trips
            ids = self.inner.publish_many(entries, maxlen=maxlen)
            return ids, self.inner.read(streams, group, consumer, count=count, block_ms=block_ms, ack=ack)
        result: tuple[list[str], list[StreamEntry]] = request(
            entries, maxlen=maxlen, streams=streams, group=group, consumer=consumer, count=count, block_ms=block_ms,
            ack=ack,
        )  # fmt: skip
        return result

    def claim_idle(self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        return self.inner.claim_idle(stream, group, consumer, min_idle_ms=min_idle_ms, count=count)

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        return self.inner.ack(stream, group, entry_ids)

    def length(self, stream: str) -> int:
        return self.inner.length(stream)

    def pending_count(self, stream: str, group: str) -> int:
        return self.inner.pending_count(stream, group)

    def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | None = None) -> int:
        return self.inner.trim(stream, maxlen=maxlen, min_id=min_id)

    def metrics(self) -> dict[str, float]:
        metrics = getattr(self.inner, "metrics", None)
        return dict(metrics()) if callable(metrics) else {}

    def close(self) -> None:
        """Does nothing: the backend belongs to the process, which closes it once every service has stopped."""
