"""The ``BusBackend`` protocol: the Redis Streams consumer-group operations Oona needs, and nothing more.

A backend stores entries (a mapping of field name to bytes) in named streams, with ids that increase within a
stream (``"<milliseconds>-<sequence>"``). Consumer groups each see every entry of a stream; within a group each
entry goes to one consumer and stays *pending* until acknowledged. Pending entries idle longer than a timeout can
be claimed by another consumer, which increments their delivery count. A group starts at the stream's end unless
asked to read its history (``ensure_group(..., from_start=True)``). Everything above that (signing, envelopes,
routing, retries, dead letters) lives in :class:`esper_core.oona.Oona`, so every backend behaves the same; the
conformance suite in :mod:`esper_core.testing.conformance.bus` checks it.

A backend may also offer ``request(entries, *, maxlen, streams, group, consumer, count, block_ms, ack)``: publish
``entries`` then ``read`` in one round trip, returning ``(entry ids, entries read)``. :meth:`Oona.request
<esper_core.oona.Oona.request>` uses it when it is there (the Redis backend pipelines the XADD with the blocking
XREADGROUP), and publishes then reads when it is not.

Reading never fails because of what an entry holds: anyone who can write to the streams can write anything there,
and an entry that made ``read`` or ``claim_idle`` raise would stop every consumer of its stream (it stays pending and
comes back on every claim). A backend hands every entry over as it is, for the bus to judge (:class:`Oona
<esper_core.oona.Oona>` drops what is not a signed envelope). Field names are ``str``; a name stored as bytes that
are not UTF-8 is given with those bytes as lone surrogates (``bytes.decode("utf-8", "surrogateescape")``), and a
name given that way to ``publish`` is stored as those bytes again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

from esper_core.errors import EsperError


class BusUnavailableError(EsperError):
    """The bus backend cannot be reached (after its retries, or while its circuit breaker is open).

    Nothing is dropped silently: the operation that raised did not take effect, or may have (a publish whose reply was
    lost is retried, so consumers must be idempotent, which Oona requires anyway). Retry later.
    """


@attrs.frozen
class StreamEntry:
    """An entry as stored: whatever its writer put there, which the bus checks before it trusts any of it."""

    stream: str
    entry_id: str
    fields: Mapping[str, bytes]
    #: How many times this entry has been delivered to the group (1 on first delivery).
    delivery_count: int = 1


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@runtime_checkable
class BusBackend(Protocol):
    def publish(self, stream: str, fields: Mapping[str, bytes], *, maxlen: int | None = None) -> str:
        """Append an entry (trimming the stream to about ``maxlen`` entries); return its id."""

    def publish_many(
        self, entries: Sequence[tuple[str, Mapping[str, bytes]]], *, maxlen: int | None = None
    ) -> list[str]:
        """Append several entries in one round trip where the backend can; return their ids in order."""

    def ensure_group(self, stream: str, group: str, *, from_start: bool = False) -> None:
        """Create ``group`` on ``stream`` (and the stream) if missing; an existing group is left as it is.

        A new group starts at the stream's end (``$``): it is delivered only entries appended after its creation.
        With ``from_start`` it starts before the first entry (``0``) and is delivered the retained history too."""

    def destroy_group(self, stream: str, group: str) -> bool:
        """Delete ``group`` from ``stream`` with its position and pending entries (other groups and the entries
        themselves are untouched); return whether it existed. Creating it again starts afresh."""

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
        """Deliver up to ``count`` never-delivered entries per stream to ``consumer``, waiting up to ``block_ms``
        (0: do not wait) for one to arrive; delivered entries become pending.

        ``ack`` (entry ids per stream) is acknowledged in ``group`` first, in the same round trip where the backend
        can: a consumer that reads again right after handling a batch pays no extra round trip for acknowledging
        it."""

    def claim_idle(self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Transfer up to ``count`` entries pending longer than ``min_idle_ms`` to ``consumer`` and deliver them
        again (delivery count + 1). Pending entries whose data was trimmed away are dropped from the group."""

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        """Acknowledge entries; return how many were pending. An acknowledged entry is never delivered again."""

    def length(self, stream: str) -> int:
        """Entries currently stored in ``stream`` (0 for a stream that does not exist)."""

    def pending_count(self, stream: str, group: str) -> int:
        """Entries delivered to ``group`` and not yet acknowledged."""

    def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | None = None) -> int:
        """Remove old entries (beyond ``maxlen``, or with ids below ``min_id``); return how many were removed."""

    def close(self) -> None:
        """Release connections; further calls may fail."""
