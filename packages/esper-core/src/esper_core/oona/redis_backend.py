"""Oona on Redis Streams: a :class:`~esper_core.oona.BusBackend` over redis-py (sync client).

Selected by URL: ``oona.backend = "redis://127.0.0.1:6379/0"`` (also ``rediss://`` and ``unix://``). The mapping
onto Redis is direct:

========================  ==========================================================================================
``publish``               ``XADD stream MAXLEN ~ n * field value ...``
``publish_many``          the same XADDs in one pipeline (no transaction), in chunks
``ensure_group``          ``XGROUP CREATE stream group $ MKSTREAM`` (``0`` with ``from_start``); an existing
                          group (BUSYGROUP) is left as it is
``destroy_group``         ``XGROUP DESTROY stream group``
``read``                  ``XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS s1 s2 ... > > ...``, preceded in the
                          same round trip by an ``XACK`` per stream of ``ack``, if any
``request``               the XADDs, the XACKs and the XREADGROUP of ``read``, in one pipeline (one round trip)
``claim_idle``            ``XPENDING stream group IDLE ms - + n`` (delivery counts), then ``XCLAIM`` of those ids;
                          pending entries whose data was trimmed away are dropped from the group
``ack``                   ``XACK``
``length``                ``XLEN`` (0 for a missing stream)
``pending_count``         ``XPENDING stream group`` (summary form)
``trim``                  ``XTRIM MAXLEN n`` / ``XTRIM MINID id`` (exact)
========================  ==========================================================================================

Connection loss: redis-py's own retries are switched off; every command goes through :meth:`RedisBackend._call`,
which retries ``ConnectionError``/``TimeoutError`` (including "Redis is loading the dataset" after a restart) with
exponential backoff and jitter, and records every attempt on one :class:`~esper_core.breaker.CircuitBreaker`. When
the retries are exhausted, or the breaker is open, it raises :class:`~esper_core.oona.BusUnavailableError` naming the
URL: a publish is never dropped silently. A command whose reply was lost is retried, so a publish may be stored
twice (at-least-once; consumers are idempotent by design), and entries a lost ``XREADGROUP`` reply delivered stay
pending and come back through ``claim_idle``: nothing is lost, and nothing acknowledged is delivered again.

The commands of the hot path (XADD, XREADGROUP, XACK, XLEN) are written on redis-py connections directly, from a
pool of the backend's own, and their raw replies parsed here; the rest go through the redis-py client. Both share
the URL, timeouts and TLS settings; see :meth:`RedisBackend._execute` for why.

redis-py is imported only when a backend is created, so installing Esper without the ``redis`` extra costs nothing.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import attrs

from esper_core.breaker import CircuitBreaker
from esper_core.config import section
from esper_core.config.validators import not_negative, positive
from esper_core.errors import ConfigError, EsperError
from esper_core.extras import install_hint, require
from esper_core.leyline import CircuitBreakerState
from esper_core.oona.backend import BusUnavailableError, StreamEntry

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

URL_SCHEMES = ("redis", "rediss", "unix")
INSTALL_HINT = install_hint("redis")
#: XADDs sent per pipeline round trip by ``publish_many``.
PIPELINE_CHUNK = 500
#: A blocking XREADGROUP waits at most this much less than the socket timeout (or half of it, if that is longer), so
#: that the socket never times out under it.
_BLOCK_MARGIN_MS = 1_000


@section("oona.redis")
@attrs.frozen
class RedisOptions:
    """Connection handling of the Redis backend (``[oona.redis]``); the URL itself is ``oona.backend``."""

    #: Seconds to wait for a reply (blocking reads are split into waits shorter than this).
    socket_timeout_s: float = attrs.field(default=5.0, validator=positive)
    #: Seconds to wait for a connection to open.
    connect_timeout_s: float = attrs.field(default=2.0, validator=positive)
    #: Connections per pool, shared by every thread of the process that uses this backend (there are two pools: one
    #: for publishing, reading and acknowledging, one for the rest).
    max_connections: int = attrs.field(default=64, validator=positive)
    #: Retries of a command after a connection error or timeout, with exponential backoff between them.
    retries: int = attrs.field(default=5, validator=not_negative)
    #: The first backoff; it doubles after each failed attempt, up to ``backoff_max_s`` (plus up to 25 % jitter).
    backoff_initial_s: float = attrs.field(default=0.05, validator=positive)
    backoff_max_s: float = attrs.field(default=2.0, validator=positive)
    #: Consecutive failed attempts (across all commands) that open the backend's circuit breaker.
    breaker_failure_threshold: int = attrs.field(default=10, validator=positive)
    #: While open, the breaker refuses commands at once; after this many seconds one command probes Redis again.
    breaker_open_s: float = attrs.field(default=5.0, validator=not_negative)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _import_redis() -> Any:
    return require("redis", "the Redis bus backend")


_keys: dict[bytes, str] = {}
#: Field names up to this long are cached decoded. The bus's names are short; long ones can only be junk that anyone
#: able to write to Redis put there, and caching them would hold their memory for the life of the process.
_KEY_CACHE_MAX_BYTES = 64


def _key(raw: bytes | str) -> str:
    """A field name as ``str`` (field names are few, so their decoding is cached).

    Never raises: a name that is not UTF-8 (anyone who can reach Redis can write one: ``redis-cli XADD s "*"
    $'\\xff' x``) is decoded with its undecodable bytes as lone surrogates (``surrogateescape``), so that the entry
    reaches the bus, which drops it as malformed, instead of stopping every read of the stream. Such a name equals no
    name the bus uses, and :func:`_pack` writes it back as the same bytes (a dead letter copies an entry's fields)."""
    if isinstance(raw, str):
        return raw
    name = _keys.get(raw)
    if name is None:
        name = raw.decode("utf-8", "surrogateescape")
        if len(raw) <= _KEY_CACHE_MAX_BYTES and len(_keys) < 4096:
            _keys[raw] = name
    return name


def _pack(command: Sequence[Any]) -> bytes:
    """``command`` in the Redis protocol (an array of bulk strings), as one buffer: a third of what redis-py's
    general packer costs, and one ``sendall`` per round trip. Arguments are ``bytes``, ``str`` (UTF-8; lone surrogates
    from :func:`_key` become the bytes they stand for) or ``int``."""
    parts = [b"*%d\r\n" % len(command)]
    for argument in command:
        if isinstance(argument, bytes):
            data = argument
        elif isinstance(argument, str):
            data = argument.encode("utf-8", "surrogateescape")
        elif isinstance(argument, int):
            data = b"%d" % argument
        else:
            raise TypeError(f"a Redis command argument must be bytes, str or int, not {type(argument).__name__}")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8")


def _entries(stream: str, items: Sequence[Any], delivery_count: int | Mapping[str, int]) -> list[StreamEntry]:
    """StreamEntry objects from redis-py's ``[(id, {field: value}), ...]`` (entries that were deleted are None)."""
    out: list[StreamEntry] = []
    append = out.append
    known = _keys.get
    for item in items:
        if item is None or item[0] is None or item[1] is None:
            continue
        entry_id = _text(item[0])
        count = delivery_count if isinstance(delivery_count, int) else delivery_count[entry_id]
        append(StreamEntry(stream, entry_id, {known(k) or _key(k): v for k, v in item[1].items()}, count))
    return out


class _Connections:
    """The hot path's connections (publish, read, ack): redis-py connections made as the client's pool makes them
    (same class, same URL, timeouts and TLS), kept in a list. A connection is always returned with nothing left to
    read, or disconnected, so unlike redis-py's pool this one needs no check of the socket on each checkout."""

    def __init__(self, pool: Any, limit: int, too_many: type[Exception]) -> None:
        self._pool = pool
        self._limit = limit
        self._too_many = too_many
        self._idle: list[Any] = []
        self._made = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    def take(self) -> Any:
        if self._pid != os.getpid():  # a forked child must not share its parent's sockets
            self._idle, self._made, self._pid = [], 0, os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            with self._lock:
                if self._made >= self._limit:
                    raise self._too_many(
                        f"all {self._limit} connections are in use (oona.redis.max_connections)"
                    ) from None
                self._made += 1
            return self._pool.connection_class(**self._pool.connection_kwargs)

    def give_back(self, connection: Any) -> None:
        if self._closed:
            connection.disconnect()
        else:
            self._idle.append(connection)

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.disconnect()


class RedisBackend:
    """Redis Streams consumer groups behind the :class:`~esper_core.oona.BusBackend` protocol. Thread-safe."""

    def __init__(
        self,
        url: str,
        options: RedisOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise ConfigError(
                f"oona.backend = {redact_url(url)!r} is not a Redis URL; use redis://host:port/db, "
                "rediss://host:port/db (TLS) or unix:///path/to/redis.sock"
            )
        self.url = url
        self.options = options or RedisOptions()
        self._redis = _import_redis()
        self._transient: tuple[type[BaseException], ...] = (
            self._redis.exceptions.ConnectionError,
            self._redis.exceptions.TimeoutError,
        )
        self._response_error: type[BaseException] = self._redis.exceptions.ResponseError
        retry = self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0)
        try:
            self.client: redis.Redis = self._redis.Redis.from_url(
                url,
                socket_timeout=self.options.socket_timeout_s,
                socket_connect_timeout=self.options.connect_timeout_s,
                max_connections=self.options.max_connections,
                retry=retry,
                protocol=2,
            )
        except ValueError as error:
            raise ConfigError(f"oona.backend = {redact_url(url)!r} is not a usable Redis URL: {error}") from error
        self._connections = _Connections(
            self.client.connection_pool, self.options.max_connections, self._redis.exceptions.ConnectionError
        )
        self.breaker = CircuitBreaker(
            f"oona.redis {redact_url(url)}",
            failure_threshold=self.options.breaker_failure_threshold,
            open_timeout_s=self.options.breaker_open_s,
        )
        self._breaker_lock = threading.Lock()
        self._sleep = sleep
        self._rng = rng or random.Random()
        timeout_ms = int(self.options.socket_timeout_s * 1000)
        self._max_block_ms = max(1, timeout_ms - _BLOCK_MARGIN_MS, timeout_ms // 2)
        self._closed = False
        self.counters: dict[str, int] = {"retries": 0, "unavailable": 0}

    def __repr__(self) -> str:
        return f"RedisBackend({redact_url(self.url)!r})"

    # -- the one way every command reaches Redis --------------------------------------------------------------
    def _unavailable(self, what: str, detail: str) -> BusUnavailableError:
        self.counters["unavailable"] += 1
        return BusUnavailableError(
            f"the Oona bus at {redact_url(self.url)} is unavailable ({what}): {detail}. Check that Redis is running "
            "and reachable; the operation did not complete and can be retried."
        )

    def _call(self, what: str, function: Callable[[], T], *, retries: int | None = None) -> T:
        retries = self.options.retries if retries is None else retries
        delay = self.options.backoff_initial_s
        attempt = 0
        while True:
            if self._closed:
                raise self._unavailable(what, "the backend was closed")
            with self._breaker_lock:
                allowed = self.breaker.allow()
            if not allowed:
                raise self._unavailable(
                    what,
                    f"its circuit breaker is open after repeated connection failures; it lets a probe through "
                    f"{self.options.breaker_open_s:g} s after the last failure",
                )
            attempt += 1
            try:
                result = function()
            except self._transient as error:
                reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
                with self._breaker_lock:
                    self.breaker.record_failure(reason)
                if attempt > retries:
                    raise self._unavailable(what, f"gave up after {attempt} attempt(s); {reason}") from error
                self.counters["retries"] += 1
                self._sleep(delay * (1.0 + 0.25 * self._rng.random()))
                delay = min(delay * 2.0, self.options.backoff_max_s)
                continue
            with self._breaker_lock:
                self.breaker.record_success()
            return result

    def _no_group(self, error: BaseException, stream: str, group: str) -> Exception:
        if "NOGROUP" in str(error):
            return LookupError(
                f"consumer group {group!r} does not exist on stream {stream!r}; call ensure_group first (after a "
                "Redis restart without persistence, groups must be created again)"
            )
        return EsperError(f"Redis refused a command on stream {stream!r}: {error}")

    def ping(self) -> None:
        """Check that Redis answers, with one attempt and no retries; raise :class:`BusUnavailableError` if not."""
        self._call("PING", self.client.ping, retries=0)

    # -- the hot path: one pooled connection, no per-command layers --------------------------------------------
    def _execute(self, *command: Any) -> Any:
        """Send ``command`` and read its raw reply, on a connection of the hot path's own pool.

        ``client.xadd(...)`` and its kin pass through redis-py's per-command machinery (its retry wrapper, which is
        switched off here, observability hooks, reply callbacks, a pool that polls each connection's socket on
        every checkout) that costs about a fifth of a loopback round trip and does nothing this backend needs:
        :meth:`_call` does the retries, replies are parsed here, and every reply is read before a connection goes
        back (or the connection is disconnected). The connections and the wire protocol are redis-py's own. A
        connection that failed is disconnected before it goes back (the next user reconnects it), as redis-py does
        itself."""
        connections = self._connections
        connection = connections.take()
        try:
            connection.send_packed_command([_pack(command)])
            return connection.read_response()
        except self._transient:
            connection.disconnect()
            raise
        finally:
            connections.give_back(connection)

    def _pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one round trip (no transaction) and read their raw replies in order; an error reply
        is returned in its place (as the ``ResponseError``), so that every reply is read and the connection stays
        in step with the server."""
        connections = self._connections
        connection = connections.take()
        try:
            connection.send_packed_command([b"".join(_pack(command) for command in commands)])
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except self._response_error as error:
                    replies.append(error)
            return replies
        except self._transient:
            connection.disconnect()
            raise
        finally:
            connections.give_back(connection)

    @staticmethod
    def _xadd(stream: str, fields: Mapping[str, bytes], maxlen: int | None) -> list[Any]:
        if not fields:
            raise ValueError(f"an entry for {stream!r} needs at least one field")
        command: list[Any] = (
            ["XADD", stream, "MAXLEN", "~", maxlen, "*"] if maxlen is not None else ["XADD", stream, "*"]
        )
        for name, value in fields.items():
            command += (name, value)
        return command

    # -- writing ----------------------------------------------------------------------------------------------
    def publish(self, stream: str, fields: Mapping[str, bytes], *, maxlen: int | None = None) -> str:
        command = self._xadd(stream, fields, maxlen)
        return _text(self._call("XADD", functools.partial(self._execute, *command)))

    def publish_many(
        self, entries: Sequence[tuple[str, Mapping[str, bytes]]], *, maxlen: int | None = None
    ) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(entries), PIPELINE_CHUNK):
            commands = [
                self._xadd(stream, fields, maxlen) for stream, fields in entries[start : start + PIPELINE_CHUNK]
            ]
            replies = self._call("XADD (pipelined)", functools.partial(self._pipeline, commands))
            for (stream, _), reply in zip(entries[start : start + PIPELINE_CHUNK], replies, strict=True):
                if isinstance(reply, self._response_error):
                    raise EsperError(f"Redis refused an entry for stream {stream!r}: {reply}")
                ids.append(_text(reply))
        return ids

    # -- groups -----------------------------------------------------------------------------------------------
    def ensure_group(self, stream: str, group: str, *, from_start: bool = False) -> None:
        start = "0" if from_start else "$"

        def create() -> None:
            try:
                self.client.xgroup_create(stream, group, id=start, mkstream=True)
            except self._response_error as error:
                if "BUSYGROUP" not in str(error):
                    raise EsperError(f"Redis refused to create group {group!r} on {stream!r}: {error}") from error

        self._call("XGROUP CREATE", create)

    def destroy_group(self, stream: str, group: str) -> bool:
        def destroy() -> bool:
            try:
                return bool(self.client.xgroup_destroy(stream, group))
            except self._response_error as error:
                if "requires the key to exist" in str(error) or "no such key" in str(error).lower():
                    return False  # no stream, so no group
                raise EsperError(f"Redis refused to destroy group {group!r} on {stream!r}: {error}") from error

        return self._call("XGROUP DESTROY", destroy)

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
        return self._read_after([], streams, group, consumer, count=count, block_ms=block_ms, ack=ack)[1]

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
        """Publish ``entries``, then :meth:`read` (with ``ack``), all pipelined in one round trip: a request and
        the start of the wait for its reply. Returns the entries' ids and what was read."""
        xadds = [self._xadd(stream, fields, maxlen) for stream, fields in entries]
        return self._read_after(xadds, streams, group, consumer, count=count, block_ms=block_ms, ack=ack)

    def _read_after(
        self,
        xadds: list[list[Any]],
        streams: Sequence[str],
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int,
        ack: Mapping[str, Sequence[str]] | None,
    ) -> tuple[list[str], list[StreamEntry]]:
        """XADDs, then XACKs, then XREADGROUP, the first two sent with the read's first wait (one round trip)."""
        acks = [["XACK", stream, group, *entry_ids] for stream, entry_ids in (ack or {}).items() if entry_ids]
        leading = [*xadds, *acks]
        published: list[str] = []
        if not streams:
            if leading:
                self._call(
                    "XADD/XACK (pipelined)",
                    functools.partial(self._send_leading, leading, len(xadds), published, group),
                )
            return published, []
        head = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        tail = ["STREAMS", *streams, *(">" for _ in streams)]

        def xreadgroup(block: int | None) -> Any:
            command = [*head, "BLOCK", block, *tail] if block is not None else [*head, *tail]
            if leading:  # in the same round trip, ahead of the read
                reply = self._send_leading([*leading, command], len(xadds), published, group)
                leading.clear()  # sent: a later slice of a long wait does not send them again
            else:
                try:
                    reply = self._execute(*command)
                except self._response_error as error:
                    reply = error
            if isinstance(reply, self._response_error):
                raise self._no_group(reply, ",".join(streams), group) from reply
            return reply

        if block_ms <= 0:
            reply = self._call("XREADGROUP", functools.partial(xreadgroup, None))
        else:
            # BLOCK 0 would wait forever, and a wait longer than the socket timeout would look like a dead server:
            # wait in slices until something arrives or block_ms has passed.
            deadline = time.monotonic() + block_ms / 1000.0
            while True:
                if self._closed:
                    return published, []
                remaining = int((deadline - time.monotonic()) * 1000)
                if remaining <= 0:
                    if not leading:
                        return published, []
                    remaining = 0  # what must be sent still is, with a read that does not wait
                block = min(remaining, self._max_block_ms) or None
                reply = self._call("XREADGROUP", functools.partial(xreadgroup, block))
                if reply or block is None:
                    break
        return published, self._parse_read(reply)

    def _send_leading(self, commands: list[list[Any]], xadds: int, published: list[str], group: str) -> Any:
        """Pipeline ``commands`` (``xadds`` XADDs, then XACKs, then possibly a read); record the XADDs' ids in
        ``published``, raise for a refused one, and return the last reply (the read's, or an XACK's)."""
        replies = self._pipeline(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, self._response_error) and command[0] != "XREADGROUP":
                if command[0] == "XACK":
                    raise self._no_group(reply, command[1], group) from reply
                raise EsperError(f"Redis refused an entry for stream {command[1]!r}: {reply}") from reply
        published[:] = [_text(reply) for reply in replies[:xadds]]
        return replies[-1]

    @staticmethod
    def _parse_read(reply: Any) -> list[StreamEntry]:
        """Entries from a raw RESP2 XREADGROUP reply: ``[[stream, [[id, [field, value, ...]], ...]], ...]``."""
        delivered: list[StreamEntry] = []
        append = delivered.append
        known = _keys.get
        for raw_stream, items in reply or ():
            stream = _text(raw_stream)
            for entry_id, flat in items:
                if flat is None:  # deleted since it was delivered (only when re-reading pending entries)
                    continue
                names = [known(name) or _key(name) for name in flat[::2]]
                append(StreamEntry(stream, _text(entry_id), dict(zip(names, flat[1::2], strict=True)), 1))
        return delivered

    def claim_idle(self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        client = self.client

        def pending() -> Any:
            try:
                return client.xpending_range(stream, group, "-", "+", count, idle=min_idle_ms)
            except self._response_error as error:
                raise self._no_group(error, stream, group) from error

        idle = cast("list[dict[str, Any]]", self._call("XPENDING", pending))
        if not idle:
            return []
        # XCLAIM adds one delivery to each entry it transfers; XPENDING told us how many there were before.
        counts = {_text(item["message_id"]): int(item["times_delivered"]) + 1 for item in idle}
        ids: list[Any] = list(counts)
        claimed_raw = self._call("XCLAIM", lambda: client.xclaim(stream, group, consumer, min_idle_ms, ids))
        claimed = _entries(stream, cast("list[Any]", claimed_raw), counts)
        missing = set(ids) - {entry.entry_id for entry in claimed}
        if missing:
            self._drop_trimmed(stream, group, sorted(missing))
        return claimed

    def _drop_trimmed(self, stream: str, group: str, ids: Sequence[str]) -> None:
        """Acknowledge the pending ids whose entries no longer exist (Redis 7 does this itself in XCLAIM; older
        servers reply nil). An id still present was claimed by another consumer meanwhile and is left alone."""

        def check() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(stream, min=entry_id, max=entry_id)
            return pipe.execute()

        gone = [entry_id for entry_id, found in zip(ids, self._call("XRANGE", check), strict=True) if not found]
        if gone:
            self.ack(stream, group, gone)

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        return int(self._call("XACK", functools.partial(self._execute, "XACK", stream, group, *entry_ids)))

    # -- inspection and housekeeping --------------------------------------------------------------------------
    def length(self, stream: str) -> int:
        return int(self._call("XLEN", functools.partial(self._execute, "XLEN", stream)))

    def pending_count(self, stream: str, group: str) -> int:
        def summary() -> Any:
            try:
                return self.client.xpending(stream, group)
            except self._response_error as error:
                raise self._no_group(error, stream, group) from error

        return int(self._call("XPENDING", summary)["pending"])

    def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | None = None) -> int:
        removed = 0
        client = self.client
        if maxlen is not None:
            removed += int(self._call("XTRIM", lambda: client.xtrim(stream, maxlen=maxlen, approximate=False)))
        if min_id is not None:
            removed += int(self._call("XTRIM", lambda: client.xtrim(stream, minid=min_id, approximate=False)))
        return removed

    def metrics(self) -> dict[str, float]:
        """Retry and breaker figures, named for telemetry (``oona.redis.<name>``)."""
        snapshot = self.breaker.snapshot()
        return {
            "oona.redis.retries": float(self.counters["retries"]),
            "oona.redis.unavailable": float(self.counters["unavailable"]),
            "oona.redis.breaker_open": float(snapshot.state == CircuitBreakerState.CIRCUIT_STATE_OPEN),
            "oona.redis.breaker_opens_total": float(snapshot.opens_total),
        }

    def close(self) -> None:
        self._closed = True
        self._connections.close()
        self.client.close()
        self.client.connection_pool.disconnect()


__all__ = ["INSTALL_HINT", "URL_SCHEMES", "RedisBackend", "RedisOptions", "redact_url"]
