"""The Redis Streams backend: the bus conformance suite, unchanged, against a real redis-server on loopback, and what
only a real server can show: connection loss, restarts (with persistence), pipelining, URL selection."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from esper_core.errors import ConfigError, EsperError
from esper_core.leyline import FieldReport
from esper_core.oona import BusUnavailableError, Oona, OonaOptions, StreamEntry, StreamNames
from esper_core.oona.redis_backend import RedisBackend, RedisOptions, redact_url
from esper_core.plugins import Registry
from esper_core.signing import SigningKey
from esper_core.testing.conformance import BusBackendConformance
from esper_core.testing.servers import RedisServer, free_port, require_module, wait_until

#: Fail fast in the tests that take the server away: few, short retries; a breaker that opens quickly.
FAST = RedisOptions(
    retries=2, backoff_initial_s=0.01, backoff_max_s=0.05, breaker_failure_threshold=3, breaker_open_s=0.3
)


@pytest.fixture(autouse=True)
def _needs_redis_py() -> None:
    require_module("redis", "pip install 'esper-core[redis]'")


class TestRedisBackend(BusBackendConformance):
    @pytest.fixture
    def backend(self, redis_server: RedisServer) -> Iterator[RedisBackend]:
        backend = RedisBackend(redis_server.url)
        try:
            yield backend
        finally:
            backend.close()


@pytest.fixture
def names() -> StreamNames:
    return StreamNames.prefixed(f"redis.{uuid.uuid4().hex[:10]}")


@pytest.fixture
def shared_backend(redis_server: RedisServer) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_server.url)
    try:
        yield backend
    finally:
        backend.close()


def report_ids(messages: list[Any]) -> list[str]:
    return [message.payload.report_id for message in messages]


# -- selection and configuration -------------------------------------------------------------------------------
def test_the_registry_selects_the_redis_backend_by_url(esper_registry: Registry, redis_server: RedisServer) -> None:
    config = esper_registry.load_config(env={}, overrides=[f"oona.backend={redis_server.url}", "oona.redis.retries=1"])
    spec = esper_registry.bus_backend(config.get(OonaOptions).backend)
    assert spec.name == "redis"
    assert esper_registry.bus_backend("rediss://cache.example:6380/1") is spec
    assert esper_registry.bus_backend("unix:///run/redis/redis.sock?db=2") is spec
    backend = esper_registry.build(spec, config=config)
    try:
        assert isinstance(backend, RedisBackend)
        assert backend.options.retries == 1
        backend.ping()
        assert backend.length("absent") == 0
    finally:
        backend.close()


def test_oona_backend_must_be_a_url_for_the_redis_backend(esper_registry: Registry) -> None:
    config = esper_registry.load_config(env={}, overrides=["oona.backend=redis"])
    with pytest.raises(ConfigError, match="is not a Redis URL"):
        esper_registry.build(esper_registry.bus_backend("redis"), config=config)
    with pytest.raises(ConfigError, match="is not a Redis URL"):
        RedisBackend("http://127.0.0.1:6379/0")


def test_missing_redis_py_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(EsperError, match=r"pip install 'esper-core\[redis\]'"):
        RedisBackend("redis://127.0.0.1:6379/0")


def test_passwords_never_appear_in_messages() -> None:
    assert redact_url("redis://user:hunter2@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    backend = RedisBackend(f"redis://:hunter2@127.0.0.1:{free_port()}/0", FAST)
    with pytest.raises(BusUnavailableError) as caught:
        backend.publish("s", {"n": b"1"})
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    assert "hunter2" not in repr(backend)


# -- Redis specifics -----------------------------------------------------------------------------------------
def test_publish_many_is_pipelined_in_chunks(
    shared_backend: RedisBackend, names: StreamNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    round_trips: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append(1)
        return original(self, command, *args, **kwargs)

    shared_backend.length(names.normal)  # a connection made (and its handshake done) before counting
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    entries = [(names.normal if i % 2 else names.telemetry, {"n": str(i).encode()}) for i in range(1_200)]
    ids = shared_backend.publish_many(entries)
    assert len(round_trips) == 3  # 500 + 500 + 200: one round trip each
    assert len(ids) == 1_200 and len(set(zip(ids, (stream for stream, _ in entries), strict=True))) == 1_200
    shared_backend.ensure_group(names.normal, "g", from_start=True)  # created after the publish: ask for history
    odd = shared_backend.read([names.normal], "g", "c", count=1_000, block_ms=0)
    assert [entry.fields["n"] for entry in odd] == [str(i).encode() for i in range(1, 1_200, 2)]
    assert [entry.entry_id for entry in odd] == ids[1::2]


def test_acknowledgements_ride_with_the_next_read_in_one_round_trip(
    shared_backend: RedisBackend, names: StreamNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    stream = names.normal
    shared_backend.ensure_group(stream, "g")
    for i in range(3):
        shared_backend.publish(stream, {"n": str(i).encode()})
    handled = shared_backend.read([stream], "g", "c", count=2, block_ms=0)
    round_trips: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append(1)
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    rest = shared_backend.read(
        [stream], "g", "c", count=5, block_ms=1_000, ack={stream: [entry.entry_id for entry in handled]}
    )
    assert len(round_trips) == 1
    monkeypatch.undo()
    assert [entry.fields["n"] for entry in rest] == [b"2"]
    assert shared_backend.pending_count(stream, "g") == 1


def test_claims_count_every_delivery(shared_backend: RedisBackend, names: StreamNames) -> None:
    stream = names.normal
    shared_backend.ensure_group(stream, "g")
    shared_backend.publish(stream, {"n": b"1"})
    assert [e.delivery_count for e in shared_backend.read([stream], "g", "a", count=5, block_ms=0)] == [1]
    for expected in (2, 3, 4):
        (claimed,) = wait_until(
            lambda consumer=f"c{expected}": shared_backend.claim_idle(stream, "g", consumer, min_idle_ms=20, count=5),
            what="an entry idle for 20 ms",
        )
        assert claimed.delivery_count == expected
    assert shared_backend.pending_count(stream, "g") == 1


def test_a_missing_group_is_a_lookup_error(shared_backend: RedisBackend, names: StreamNames) -> None:
    shared_backend.publish(names.normal, {"n": b"1"})
    with pytest.raises(LookupError, match="ensure_group"):
        shared_backend.read([names.normal], "nobody", "c", count=1, block_ms=0)
    with pytest.raises(LookupError, match="ensure_group"):
        shared_backend.pending_count(names.normal, "nobody")


def test_a_wait_longer_than_the_socket_timeout_is_split(redis_server: RedisServer, names: StreamNames) -> None:
    backend = RedisBackend(redis_server.url, RedisOptions(socket_timeout_s=0.8))  # waits of 400 ms
    try:
        backend.ensure_group(names.normal, "g")
        start = time.monotonic()
        assert backend.read([names.normal], "g", "c", count=1, block_ms=1_500) == []
        assert time.monotonic() - start >= 1.4  # it waited (about) the whole time asked for...
        assert backend.counters["retries"] == 0  # ...in slices: no socket timeout was hit
    finally:
        backend.close()


# -- bad entries written behind the bus's back ----------------------------------------------------------------
def test_a_field_name_that_is_not_utf8_written_with_redis_py_does_not_block_a_consumer(
    redis_server: RedisServer, shared_backend: RedisBackend, names: StreamNames
) -> None:
    """The reproduction of issue #11: ``XADD stream * "\\xff" x`` by anyone who can reach Redis (no secret) made
    every consume raise UnicodeDecodeError, and the signed messages behind it were never handled. Now it is
    acknowledged, dropped and counted, and the message published after it is handled, on the first consume."""
    import redis

    bus = Oona(shared_backend, signing_key=SigningKey.generate(), options=OonaOptions(streams=names), group="g")
    bus.subscribe([names.normal])
    raw = redis.Redis.from_url(redis_server.url, protocol=2)
    try:
        raw.xadd(names.normal, {b"\xff": b"x"})
    finally:
        raw.close()
    bus.publish(FieldReport(report_id="valid"))
    handled: list[Any] = []
    report = bus.consume([names.normal], handled.append)
    assert report_ids(handled) == ["valid"]
    assert (report.dropped_malformed, report.dropped_bad_signature, report.dead_lettered) == (1, 0, 0)
    assert bus.metrics()["oona.dropped_malformed"] == 1.0
    assert shared_backend.pending_count(names.normal, "g") == 0  # the poison is acknowledged away, not left pending


def test_a_poison_entry_left_pending_does_not_block_the_claims(
    redis_server: RedisServer, shared_backend: RedisBackend, names: StreamNames
) -> None:
    """The same entry taken by a consumer that then died (read with raw redis-py, never acknowledged): the claims
    that hand it to another consumer go through another reply parser (XCLAIM's), which must not raise either."""
    import redis

    bus = Oona(
        shared_backend,
        signing_key=SigningKey.generate(),
        options=OonaOptions(streams=names, claim_idle_ms=20),
        group="g",
        consumer="rescuer",
    )
    bus.subscribe([names.normal])
    raw = redis.Redis.from_url(redis_server.url, protocol=2)
    try:
        raw.xadd(names.normal, {b"\xff": b"x"})
        bus.publish(FieldReport(report_id="valid"))
        taken = raw.xreadgroup("g", "crashed", {names.normal: ">"}, count=10)
        assert len(taken[0][1]) == 2
    finally:
        raw.close()
    (message,) = wait_until(lambda: bus.poll([names.normal]), what="the claimed entries")
    assert report_ids([message]) == ["valid"] and message.delivery_count == 2
    bus.ack(message)
    assert bus.counters["dropped_malformed"] == 1
    assert shared_backend.pending_count(names.normal, "g") == 0


def test_a_dead_letter_keeps_field_names_that_are_not_utf8_byte_for_byte(
    redis_server: RedisServer, shared_backend: RedisBackend, names: StreamNames
) -> None:
    """A signed entry that cannot be decoded is dead-lettered with all its fields: a name that is not UTF-8 is
    written back as the bytes it was (not refused by the encoder, which would stop the consumer again)."""
    import redis

    key = SigningKey.generate()
    bus = Oona(shared_backend, signing_key=key, options=OonaOptions(streams=names), group="g")
    bus.subscribe([names.normal])
    raw = redis.Redis.from_url(redis_server.url, protocol=2)
    try:
        garbage = b"\x0a\x05ab"  # a length-delimited field cut short: no decoder reads past it
        raw.xadd(names.normal, {b"envelope": garbage, b"signature": key.sign(garbage), b"\xfe\xff": b"junk"})
        bus.publish(FieldReport(report_id="valid"))
        handled: list[Any] = []
        assert bus.consume([names.normal], handled.append).dead_lettered == 1
        assert report_ids(handled) == ["valid"]
        ((_, letter),) = raw.xrange(names.dead_letter)
    finally:
        raw.close()
    assert letter[b"\xfe\xff"] == b"junk" and letter[b"envelope"] == garbage
    assert letter[b"reason"] == b"the envelope cannot be decoded"


def test_long_field_names_are_not_cached(shared_backend: RedisBackend, names: StreamNames) -> None:
    """Field names are cached decoded, for speed: not junk ones of any length, whose memory the process would keep."""
    from esper_core.oona import redis_backend

    long_name = "n" * 1_000
    shared_backend.ensure_group(names.normal, "g")
    shared_backend.publish(names.normal, {long_name: b"1"})
    (entry,) = shared_backend.read([names.normal], "g", "c", count=10, block_ms=0)
    assert dict(entry.fields) == {long_name: b"1"}
    assert long_name.encode() not in redis_backend._keys


# -- connection loss and restarts ----------------------------------------------------------------------------
def test_publishing_to_a_lost_server_fails_loudly_then_the_breaker_fails_fast(
    redis_server_factory: Callable[..., RedisServer], names: StreamNames
) -> None:
    server = redis_server_factory()
    backend = RedisBackend(server.url, FAST)
    try:
        backend.publish(names.normal, {"n": b"1"})
        server.stop()
        with pytest.raises(BusUnavailableError, match=r"gave up after 3 attempt\(s\)") as caught:
            backend.publish(names.normal, {"n": b"2"})
        assert server.url in str(caught.value)
        assert backend.breaker.is_open
        retries = backend.counters["retries"]
        with pytest.raises(BusUnavailableError, match="circuit breaker is open"):
            backend.publish(names.normal, {"n": b"3"})
        assert backend.counters["retries"] == retries  # refused at once: no attempt, no retry while open
        assert backend.counters["unavailable"] == 2
    finally:
        backend.close()


def _publish_until_accepted(bus: Oona, message: FieldReport) -> str:
    """What a producer does with a publish that raised: keep the message and try again."""

    def attempt() -> str | None:
        try:
            return bus.publish(message)
        except BusUnavailableError:
            return None

    return wait_until(attempt, what="a publish accepted after the restart", interval_s=0.05)


def _blocked_clients(backend: RedisBackend) -> int:
    """How many clients the server has parked in a blocking command (a blocked XREADGROUP is one)."""
    return int(backend.client.info("clients")["blocked_clients"])


def test_a_redis_crash_and_restart_loses_nothing_and_redelivers_what_was_not_acknowledged(
    redis_server_factory: Callable[..., RedisServer], names: StreamNames
) -> None:
    """Item 5 of issue #7 at bus level: kill Redis mid-run (SIGKILL; AOF with appendfsync always), restart it.

    Publishing fails loudly while it is down and recovers after; the entries a consumer had taken but not
    acknowledged are redelivered through claims; acknowledged ones never are; every accepted publish is still there.
    """
    server = redis_server_factory(appendonly=True, appendfsync="always")
    backend = RedisBackend(server.url, FAST)
    key = SigningKey.generate()
    options = OonaOptions(streams=names, claim_idle_ms=200)
    worker = Oona(backend, signing_key=key, options=options, group="g", consumer="worker")
    try:
        worker.subscribe([names.normal])
        for i in range(10):
            assert worker.publish(FieldReport(report_id=f"r{i}"))
        taken = worker.poll([names.normal], count=10)
        assert report_ids(taken) == [f"r{i}" for i in range(10)]
        for message in taken[:4]:
            worker.ack(message)  # r0-r3 handled; r4-r9 in flight when Redis dies

        server.kill()
        with pytest.raises(BusUnavailableError):
            worker.publish(FieldReport(report_id="during-outage"))
        with pytest.raises(BusUnavailableError, match="circuit breaker is open"):
            worker.publish(FieldReport(report_id="during-outage"))

        server.restart()
        _publish_until_accepted(worker, FieldReport(report_id="during-outage"))
        assert not backend.breaker.is_open

        rescuer = Oona(backend, signing_key=key, options=options, group="g", consumer="rescuer")
        received: list[Any] = []

        def collect() -> bool:
            messages = rescuer.poll([names.normal], count=20)
            received.extend(messages)
            for message in messages:
                rescuer.ack(message)
            return len(received) >= 7

        # The fresh entry comes at once; the six in flight come back once idle for claim_idle_ms.
        wait_until(collect, what="the unacknowledged entries claimed after the restart")
        redelivered = [message for message in received if message.delivery_count == 2]
        assert report_ids(redelivered) == [f"r{i}" for i in range(4, 10)]
        assert report_ids([message for message in received if message.delivery_count == 1]) == ["during-outage"]
        assert len(received) == 7

        assert backend.pending_count(names.normal, "g") == 0  # nothing acknowledged can come back
        assert backend.length(names.normal) == 11  # every accepted publish survived the crash
    finally:
        backend.close()


def test_a_blocked_reader_rides_out_a_restart(
    redis_server_factory: Callable[..., RedisServer], names: StreamNames
) -> None:
    server = redis_server_factory(appendonly=True)
    # Patient enough for a restart on a loaded machine: about a minute of retries, a breaker that never opens.
    patient = RedisOptions(retries=300, backoff_initial_s=0.02, backoff_max_s=0.2, breaker_failure_threshold=10_000)
    backend = RedisBackend(server.url, patient)
    try:
        backend.ensure_group(names.normal, "g")
        received: list[StreamEntry] = []
        reader = threading.Thread(
            target=lambda: received.extend(backend.read([names.normal], "g", "c", count=5, block_ms=120_000)),
            daemon=True,
        )
        reader.start()
        wait_until(lambda: _blocked_clients(backend) >= 1, what="the reader blocked in XREADGROUP")
        server.kill()
        wait_until(lambda: backend.counters["retries"] >= 1, what="the reader noticing the lost connection")
        server.restart()
        backend.publish(names.normal, {"n": b"after-restart"})
        reader.join(60)
        assert not reader.is_alive(), "the reader never came back from the restart"
        assert [entry.fields["n"] for entry in received] == [b"after-restart"]
    finally:
        backend.close()


def test_after_a_restart_without_persistence_groups_must_be_created_again(
    redis_server_factory: Callable[..., RedisServer], names: StreamNames
) -> None:
    server = redis_server_factory()
    backend = RedisBackend(server.url, FAST)
    try:
        backend.ensure_group(names.normal, "g")
        server.restart()

        def read_refused() -> bool:
            try:
                backend.read([names.normal], "g", "c", count=1, block_ms=0)
            except LookupError:
                return True  # the group is gone, and the error says what to do
            except BusUnavailableError:
                return False  # still reconnecting (the breaker may be open for a moment)
            raise AssertionError("a read of a group the restart lost succeeded")

        wait_until(read_refused, what="a read refused for want of the group", interval_s=0.05)

        def recreated() -> bool:
            try:
                backend.ensure_group(names.normal, "g")  # what a restarted service does on subscribe
            except BusUnavailableError:
                return False
            return True

        wait_until(recreated, what="the group created again", interval_s=0.05)
        backend.publish(names.normal, {"n": b"new"})
        assert [entry.fields["n"] for entry in backend.read([names.normal], "g", "c", count=1, block_ms=0)] == [b"new"]
    finally:
        backend.close()
