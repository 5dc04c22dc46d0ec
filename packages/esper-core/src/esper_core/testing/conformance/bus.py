"""The semantics every Oona bus backend must have, written once and run against each backend unchanged.

Subclass :class:`BusBackendConformance` and provide a ``backend`` fixture returning a fresh backend (for a shared
server, one whose streams do not collide with other tests': the suite names its streams with a unique prefix per
test). The suite checks the Redis-Streams consumer-group semantics at the backend level, then the bus behaviour
(signing, routing, retries, dead letters, backpressure, retention) of :class:`~esper_core.oona.Oona` over it.

Timing: idle timeouts here are tens of milliseconds, so the suite runs in seconds on any backend.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from esper_core.leyline import (
    AdaptationCommand,
    BusEnvelope,
    BusMessageType,
    CommandType,
    FieldReport,
    MessagePriority,
    PolicyUpdate,
    SystemStatePacket,
    TelemetryPacket,
)
from esper_core.oona import BusBackend, BusMessage, Oona, OonaOptions, StreamNames
from esper_core.oona.backend import parse_entry_id
from esper_core.signing import SigningKey

IDLE_MS = 60


def _fields(index: int) -> dict[str, bytes]:
    return {"n": str(index).encode()}


class BusBackendConformance:
    """Redis Streams consumer-group semantics (backend) and Oona's delivery guarantees (bus).

    Subclasses provide a ``backend`` fixture returning a fresh :class:`~esper_core.oona.BusBackend`.
    """

    @pytest.fixture
    def prefix(self) -> str:
        return f"conformance.{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def streams(self, prefix: str) -> StreamNames:
        return StreamNames(
            normal=f"{prefix}.normal",
            emergency=f"{prefix}.emergency",
            telemetry=f"{prefix}.telemetry",
            policy=f"{prefix}.policy",
            kernel_requests=f"{prefix}.kernels.requests",
            kernel_ready=f"{prefix}.kernels.ready",
            kernel_errors=f"{prefix}.kernels.errors",
            dead_letter=f"{prefix}.deadletter",
        )

    @pytest.fixture
    def key(self) -> SigningKey:
        return SigningKey.generate()

    @pytest.fixture
    def make_bus(self, backend: BusBackend, streams: StreamNames, key: SigningKey) -> Callable[..., Oona]:
        def make(consumer: str = "c1", group: str = "g", **options: object) -> Oona:
            settings = {"claim_idle_ms": IDLE_MS, "max_attempts": 3, **options}
            return Oona(
                backend,
                signing_key=key,
                options=OonaOptions(streams=streams, **settings),  # type: ignore[arg-type]
                group=group,
                consumer=consumer,
            )

        return make

    # -- backend: streams and groups --------------------------------------------------------------------------
    def test_publish_returns_increasing_ids(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        ids = [backend.publish(stream, _fields(i)) for i in range(50)]
        parsed = [parse_entry_id(entry_id) for entry_id in ids]
        assert parsed == sorted(parsed) and len(set(ids)) == 50
        assert backend.length(stream) == 50

    def test_publish_many_keeps_order(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        ids = backend.publish_many([(stream, _fields(i)) for i in range(20)])
        backend.ensure_group(stream, "g")
        entries = backend.read([stream], "g", "c", count=100, block_ms=0)
        assert [entry.entry_id for entry in entries] == ids
        assert [entry.fields["n"] for entry in entries] == [str(i).encode() for i in range(20)]

    def test_every_group_sees_every_message(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for group in ("a", "b"):
            backend.ensure_group(stream, group)
        for i in range(5):
            backend.publish(stream, _fields(i))
        for group in ("a", "b"):
            entries = backend.read([stream], group, "c", count=10, block_ms=0)
            assert [entry.fields["n"] for entry in entries] == [str(i).encode() for i in range(5)]

    def test_a_new_group_sees_the_backlog_and_ensure_group_is_idempotent(
        self, backend: BusBackend, prefix: str
    ) -> None:
        stream = f"{prefix}.s"
        backend.publish(stream, _fields(1))
        backend.ensure_group(stream, "late")
        backend.ensure_group(stream, "late")
        assert len(backend.read([stream], "late", "c", count=10, block_ms=0)) == 1

    def test_consumers_of_one_group_share_the_messages(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        for i in range(10):
            backend.publish(stream, _fields(i))
        first = backend.read([stream], "g", "c1", count=4, block_ms=0)
        second = backend.read([stream], "g", "c2", count=10, block_ms=0)
        assert len(first) == 4 and len(second) == 6
        assert {e.entry_id for e in first}.isdisjoint({e.entry_id for e in second})
        assert backend.read([stream], "g", "c3", count=10, block_ms=0) == []

    def test_read_from_several_streams(self, backend: BusBackend, prefix: str) -> None:
        streams = [f"{prefix}.a", f"{prefix}.b"]
        for stream in streams:
            backend.ensure_group(stream, "g")
            backend.publish(stream, _fields(1))
        entries = backend.read(streams, "g", "c", count=10, block_ms=0)
        assert sorted(entry.stream for entry in entries) == streams

    def test_ack_clears_pending_and_acked_entries_are_never_redelivered(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        backend.publish(stream, _fields(1))
        (entry,) = backend.read([stream], "g", "c", count=10, block_ms=0)
        assert backend.pending_count(stream, "g") == 1
        assert backend.ack(stream, "g", [entry.entry_id]) == 1
        assert backend.ack(stream, "g", [entry.entry_id]) == 0
        assert backend.pending_count(stream, "g") == 0
        time.sleep(IDLE_MS * 1.5 / 1000)
        assert backend.claim_idle(stream, "g", "other", min_idle_ms=IDLE_MS, count=10) == []
        assert backend.read([stream], "g", "other", count=10, block_ms=0) == []

    def test_unacknowledged_entries_are_redelivered_after_the_idle_timeout(
        self, backend: BusBackend, prefix: str
    ) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        backend.publish(stream, _fields(7))
        (entry,) = backend.read([stream], "g", "crashed", count=10, block_ms=0)
        assert entry.delivery_count == 1
        assert backend.claim_idle(stream, "g", "rescuer", min_idle_ms=10_000, count=10) == []
        time.sleep(IDLE_MS * 1.5 / 1000)
        (claimed,) = backend.claim_idle(stream, "g", "rescuer", min_idle_ms=IDLE_MS, count=10)
        assert claimed.entry_id == entry.entry_id
        assert claimed.fields["n"] == b"7"
        assert claimed.delivery_count == 2
        assert backend.pending_count(stream, "g") == 1

    def test_pending_entries_trimmed_away_are_dropped_on_claim(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        first = backend.publish(stream, _fields(1))
        backend.read([stream], "g", "c", count=10, block_ms=0)
        backend.publish(stream, _fields(2))
        backend.trim(stream, maxlen=1)
        time.sleep(IDLE_MS * 1.5 / 1000)
        claimed = backend.claim_idle(stream, "g", "other", min_idle_ms=IDLE_MS, count=10)
        assert first not in {entry.entry_id for entry in claimed}
        assert backend.pending_count(stream, "g") == 0

    def test_max_length_is_approximately_enforced(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for i in range(1000):
            backend.publish(stream, _fields(i), maxlen=100)
        # Redis trims whole macro nodes (100 entries by default), so allow one node of slack.
        assert 100 <= backend.length(stream) <= 200

    def test_trim_by_minimum_id(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        ids = [backend.publish(stream, _fields(i)) for i in range(10)]
        removed = backend.trim(stream, min_id=ids[4])
        assert removed == 4 and backend.length(stream) == 6

    def test_a_blocking_read_wakes_when_a_message_arrives(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        timer = threading.Timer(0.1, lambda: backend.publish(stream, _fields(1)))
        start = time.monotonic()
        timer.start()
        try:
            entries = backend.read([stream], "g", "c", count=10, block_ms=5_000)
        finally:
            timer.cancel()
        assert len(entries) == 1
        assert time.monotonic() - start < 2.5

    def test_a_non_blocking_read_of_an_empty_stream_returns_at_once(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        start = time.monotonic()
        assert backend.read([stream], "g", "c", count=10, block_ms=0) == []
        assert time.monotonic() - start < 1.0
        assert backend.length(f"{prefix}.missing") == 0

    # -- the bus over the backend -----------------------------------------------------------------------------
    def test_typed_messages_round_trip(self, make_bus: Callable[..., Oona], streams: StreamNames) -> None:
        bus = make_bus()
        state = SystemStatePacket(packet_id="p1", current_epoch=3)
        bus.publish(state, correlation_id="corr")
        (message,) = bus.poll([streams.normal])
        assert message.payload == state
        assert message.envelope.message_type == BusMessageType.BUS_MESSAGE_TYPE_SYSTEM_STATE
        assert message.envelope.correlation_id == "corr"
        bus.ack(message)

    def test_each_message_kind_travels_on_its_stream(self, make_bus: Callable[..., Oona], streams: StreamNames) -> None:
        bus = make_bus()
        bus.publish(TelemetryPacket(packet_id="t"))
        bus.publish(PolicyUpdate(policy_id="p"))
        bus.publish(FieldReport(report_id="r"))
        assert [m.payload.packet_id for m in bus.poll([streams.telemetry])] == ["t"]  # type: ignore[attr-defined]
        assert [m.payload.policy_id for m in bus.poll([streams.policy])] == ["p"]  # type: ignore[attr-defined]
        assert [m.payload.report_id for m in bus.poll([streams.normal])] == ["r"]  # type: ignore[attr-defined]

    def test_urgent_messages_take_the_emergency_stream_within_the_rate_cap(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus(emergency_max_per_minute=2)
        for i in range(3):
            bus.publish(TelemetryPacket(packet_id=str(i)), priority=MessagePriority.MESSAGE_PRIORITY_CRITICAL)
        assert len(bus.poll([streams.emergency])) == 2
        assert len(bus.poll([streams.telemetry])) == 1  # over the cap: its normal route, never lost
        assert bus.counters["emergency_rate_limited"] == 1

    def test_bad_and_missing_signatures_are_dropped_and_counted(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus()
        envelope = bus.envelope_for(SystemStatePacket(packet_id="forged")).SerializeToString()
        backend.publish(streams.normal, {"envelope": envelope, "signature": SigningKey.generate().sign(envelope)})
        backend.publish(streams.normal, {"envelope": envelope})
        bus.publish(SystemStatePacket(packet_id="genuine"))
        handled: list[BusMessage] = []
        report = bus.consume([streams.normal], handled.append)
        assert [m.payload.packet_id for m in handled] == ["genuine"]  # type: ignore[attr-defined]
        assert report.dropped_bad_signature == 2
        assert backend.pending_count(streams.normal, "g") == 0

    def test_a_failing_handler_is_retried_then_dead_lettered(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus(max_attempts=3)
        bus.publish(SystemStatePacket(packet_id="poison"))
        attempts: list[int] = []

        def handler(message: BusMessage) -> None:
            attempts.append(message.attempts)
            raise RuntimeError("cannot handle")

        for _ in range(5):
            bus.consume([streams.normal], handler)
        assert attempts == [1, 2, 3]
        bus.subscribe([streams.dead_letter])
        letters = bus.backend.read([streams.dead_letter], "g", "auditor", count=10, block_ms=0)
        assert len(letters) == 1
        assert b"failed 3 times" in letters[0].fields["reason"]
        assert letters[0].fields["source_stream"] == streams.normal.encode()
        assert bus.backend.pending_count(streams.normal, "g") == 0

    def test_messages_of_a_crashed_consumer_are_redelivered_then_dead_lettered(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        crashing = make_bus(consumer="crashing", max_attempts=2)
        rescuer = make_bus(consumer="rescuer", max_attempts=2)
        crashing.publish(SystemStatePacket(packet_id="orphan"))
        assert len(crashing.poll([streams.normal])) == 1  # taken, never acknowledged
        assert rescuer.poll([streams.normal]) == []
        time.sleep(IDLE_MS * 1.5 / 1000)
        (again,) = rescuer.poll([streams.normal])
        assert again.payload.packet_id == "orphan" and again.attempts == 2  # type: ignore[attr-defined]
        time.sleep(IDLE_MS * 1.5 / 1000)
        assert crashing.poll([streams.normal]) == []  # third delivery would exceed max_attempts
        assert crashing.counters["dead_lettered"] == 1
        assert crashing.backend.length(streams.dead_letter) == 1

    def test_acknowledged_messages_are_never_delivered_again(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        first, second = make_bus(consumer="first"), make_bus(consumer="second")
        first.publish(AdaptationCommand(command_type=CommandType.COMMAND_NOOP))
        report = first.consume([streams.normal], lambda message: None)
        assert report.handled == 1
        time.sleep(IDLE_MS * 1.5 / 1000)
        assert second.poll([streams.normal]) == []
        assert first.poll([streams.normal]) == []

    def test_every_group_of_the_bus_gets_its_own_copy(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        nissa, simic = make_bus(group="nissa"), make_bus(group="simic")
        nissa.subscribe([streams.normal])
        simic.subscribe([streams.normal])
        nissa.publish(FieldReport(report_id="r1"))
        assert len(nissa.poll([streams.normal])) == 1
        assert len(simic.poll([streams.normal])) == 1

    def test_backpressure_drops_and_reroutes_with_counts(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        rerouting = make_bus(reroute_depth=2)
        for i in range(3):
            rerouting.publish(FieldReport(report_id=str(i)))
        assert rerouting.counters["rerouted"] == 1
        assert rerouting.backend.length(streams.emergency) == 1
        dropping = make_bus(drop_depth=2)
        assert dropping.publish(FieldReport(report_id="dropped")) is None
        assert dropping.counters["dropped_backpressure"] == 1
        assert dropping.publish(FieldReport(report_id="urgent"), priority=MessagePriority.MESSAGE_PRIORITY_HIGH)

    def test_undecodable_envelopes_are_dead_lettered(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames, key: SigningKey
    ) -> None:
        bus = make_bus()
        garbage = b"\xff\xff\xff not an envelope"
        backend.publish(streams.normal, {"envelope": garbage, "signature": key.sign(garbage)})
        unknown = BusEnvelope(message_type=BusMessageType.ValueType(999), payload=b"").SerializeToString()
        backend.publish(streams.normal, {"envelope": unknown, "signature": key.sign(unknown)})
        assert bus.poll([streams.normal]) == []
        assert bus.counters["dead_lettered"] == 2

    def test_housekeeping_trims_entries_older_than_the_ttl(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus(message_ttl_ms=1_000)
        for i in range(3):
            bus.publish(FieldReport(report_id=str(i)))
        assert bus.housekeeping(now_ms=time.time() * 1000) == 0
        assert bus.housekeeping(now_ms=time.time() * 1000 + 5_000) == 3
        assert bus.backend.length(streams.normal) == 0

    def test_publish_many_is_delivered_in_order(self, make_bus: Callable[..., Oona], streams: StreamNames) -> None:
        bus = make_bus()
        ids = bus.publish_many([FieldReport(report_id=str(i)) for i in range(10)])
        assert all(ids)
        received = [m.payload.report_id for m in bus.poll([streams.normal], count=20)]  # type: ignore[attr-defined]
        assert received == [str(i) for i in range(10)]
