"""The semantics every Oona bus backend must have, written once and run against each backend unchanged.

Subclass :class:`BusBackendConformance` and provide a ``backend`` fixture returning a fresh backend (for a shared
server, one whose streams do not collide with other tests': the suite names its streams with a unique prefix per
test). The suite checks the Redis-Streams consumer-group semantics at the backend level, then the bus behaviour
(signing, routing, retries, dead letters, backpressure, retention) of :class:`~esper_core.oona.Oona` over it.

Timing: idle timeouts here are tens of milliseconds, so the suite runs in seconds on any backend. Nothing waits a
fixed time: a test that needs an entry to become idle polls until it can be claimed (with a generous deadline that
only fails a test that would otherwise hang), and "nothing else comes back" is shown by the backend's own pending
counts or by a sentinel published afterwards being the only thing delivered.

Bad entries: anyone who can write to a stream can write anything there, without the secret. The suite writes every
kind it knows (:mod:`esper_core.testing.bad_entries`: field names that are not UTF-8, no envelope, garbage, damaged
or foreign-signed envelopes, huge fields, signed entries that cannot be decoded) through the backend, and checks
that each is dropped or dead-lettered as documented, that no consumer path raises (poll, consume, request, a poll
that acknowledges or publishes, a claim of entries a crashed consumer left pending), and that the valid message
behind them is handled. A backend that raised while reading such an entry would let anyone stop every consumer of a
stream: the suite is where a new backend learns that.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from esper_core.oona import BusBackend, BusMessage, Oona, OonaOptions, Outgoing, StreamEntry, StreamNames
from esper_core.oona.backend import parse_entry_id
from esper_core.signing import SigningKey
from esper_core.testing.bad_entries import COUNTER, BadEntry, bad_entries, poison_corpus, write
from esper_core.testing.conformance.properties import SHARED_ACROSS_SUBCLASSES
from esper_core.testing.servers import wait_until

IDLE_MS = 60
#: The longest any test here waits for something that should take milliseconds (a generous deadline, never a bound).
PATIENCE_S = 30.0


def _fields(index: int) -> dict[str, bytes]:
    return {"n": str(index).encode()}


def _numbers(entries: list[StreamEntry]) -> list[int]:
    return [int(entry.fields["n"]) for entry in entries]


def _report_ids(messages: list[BusMessage]) -> list[str]:
    return [message.payload.report_id for message in messages]  # type: ignore[attr-defined]


#: Consumer paths of the bus that the bad-entry property test drives (each reads through the backend differently).
CONSUMER_PATHS = ("poll", "consume", "request", "poll, acknowledging", "poll, publishing", "claim")


class _Crash(BaseException):
    """What a process dying in the middle of a handler looks like to the code around it: nothing after runs."""


class BusBackendConformance:
    """Redis Streams consumer-group semantics (backend) and Oona's delivery guarantees (bus).

    Subclasses provide a ``backend`` fixture returning a fresh :class:`~esper_core.oona.BusBackend`.
    """

    @pytest.fixture
    def prefix(self) -> str:
        return f"conformance.{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def streams(self, prefix: str) -> StreamNames:
        return StreamNames.prefixed(prefix)

    @pytest.fixture
    def key(self) -> SigningKey:
        return SigningKey.generate()

    @pytest.fixture
    def make_bus(self, backend: BusBackend, streams: StreamNames, key: SigningKey) -> Callable[..., Oona]:
        """A bus client; unless ``subscribed=False``, its group exists on every stream before the test publishes
        (what a consumer that must not miss anything does: create its group before the traffic)."""

        def make(consumer: str = "c1", group: str = "g", *, subscribed: bool = True, **options: object) -> Oona:
            settings = {"claim_idle_ms": IDLE_MS, "max_attempts": 3, **options}
            bus = Oona(
                backend,
                signing_key=key,
                options=OonaOptions(streams=streams, **settings),  # type: ignore[arg-type]
                group=group,
                consumer=consumer,
            )
            if subscribed:
                bus.subscribe(streams.all())
            return bus

        return make

    @staticmethod
    def claim_when_idle(backend: BusBackend, stream: str, group: str, consumer: str) -> list[StreamEntry]:
        """Claim entries as soon as they have been idle ``IDLE_MS``."""
        return wait_until(
            lambda: backend.claim_idle(stream, group, consumer, min_idle_ms=IDLE_MS, count=10),
            what=f"an entry of {stream} idle for {IDLE_MS} ms and claimable",
            timeout_s=PATIENCE_S,
        )

    @staticmethod
    def poll_until(bus: Oona, stream: str, count: int = 32) -> list[BusMessage]:
        """What the next poll that returns anything returns (claims of idle entries come before new ones)."""
        return wait_until(lambda: bus.poll([stream], count=count), what=f"a message on {stream}", timeout_s=PATIENCE_S)

    # -- backend: streams and groups --------------------------------------------------------------------------
    def test_publish_returns_increasing_ids(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        ids = [backend.publish(stream, _fields(i)) for i in range(50)]
        parsed = [parse_entry_id(entry_id) for entry_id in ids]
        assert parsed == sorted(parsed) and len(set(ids)) == 50
        assert backend.length(stream) == 50

    def test_publish_many_keeps_order(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        ids = backend.publish_many([(stream, _fields(i)) for i in range(20)])
        entries = backend.read([stream], "g", "c", count=100, block_ms=0)
        assert [entry.entry_id for entry in entries] == ids
        assert _numbers(entries) == list(range(20))

    def test_every_group_sees_every_message(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for group in ("a", "b"):
            backend.ensure_group(stream, group)
        for i in range(5):
            backend.publish(stream, _fields(i))
        for group in ("a", "b"):
            assert _numbers(backend.read([stream], group, "c", count=10, block_ms=0)) == list(range(5))

    def test_a_new_group_starts_at_the_end_of_the_stream(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for i in range(3):
            backend.publish(stream, _fields(i))
        backend.ensure_group(stream, "late")
        assert backend.read([stream], "late", "c", count=10, block_ms=0) == []
        assert backend.length(stream) == 3  # the history is still there, for groups that ask for it
        backend.publish(stream, _fields(3))
        assert _numbers(backend.read([stream], "late", "c", count=10, block_ms=0)) == [3]

    def test_a_new_group_starts_after_entries_already_trimmed_away(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        ids = [backend.publish(stream, _fields(i)) for i in range(3)]
        backend.trim(stream, min_id=f"{parse_entry_id(ids[-1])[0] + 1}-0")
        assert backend.length(stream) == 0
        backend.ensure_group(stream, "late")
        backend.publish(stream, _fields(3))
        assert _numbers(backend.read([stream], "late", "c", count=10, block_ms=0)) == [3]

    def test_a_group_asked_for_the_history_is_delivered_the_backlog(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for i in range(3):
            backend.publish(stream, _fields(i))
        backend.ensure_group(stream, "archivist", from_start=True)
        backend.publish(stream, _fields(3))
        assert _numbers(backend.read([stream], "archivist", "c", count=10, block_ms=0)) == [0, 1, 2, 3]

    def test_ensure_group_on_a_missing_stream_creates_it_empty(self, backend: BusBackend, prefix: str) -> None:
        for from_start in (False, True):
            stream = f"{prefix}.fresh.{from_start}"
            backend.ensure_group(stream, "g", from_start=from_start)
            assert backend.length(stream) == 0 and backend.pending_count(stream, "g") == 0
            backend.publish(stream, _fields(1))
            assert _numbers(backend.read([stream], "g", "c", count=10, block_ms=0)) == [1]

    def test_ensure_group_is_idempotent_and_never_moves_an_existing_group(
        self, backend: BusBackend, prefix: str
    ) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        backend.publish(stream, _fields(1))
        (entry,) = backend.read([stream], "g", "c", count=10, block_ms=0)
        backend.ack(stream, "g", [entry.entry_id])
        backend.publish(stream, _fields(2))
        backend.ensure_group(stream, "g", from_start=True)  # exists: neither rewound to the start...
        backend.ensure_group(stream, "g")  # ...nor moved to the end
        assert _numbers(backend.read([stream], "g", "c", count=10, block_ms=0)) == [2]

    def test_a_destroyed_group_is_gone_with_its_pending_entries(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        for group in ("doomed", "survivor"):
            backend.ensure_group(stream, group)
        for i in range(3):
            backend.publish(stream, _fields(i))
        assert len(backend.read([stream], "doomed", "c", count=2, block_ms=0)) == 2
        assert backend.pending_count(stream, "doomed") == 2
        assert backend.destroy_group(stream, "doomed") is True
        assert backend.destroy_group(stream, "doomed") is False
        assert backend.destroy_group(f"{prefix}.missing", "doomed") is False
        with pytest.raises(LookupError, match="ensure_group"):
            backend.read([stream], "doomed", "c", count=10, block_ms=0)
        with pytest.raises(LookupError, match="ensure_group"):
            backend.pending_count(stream, "doomed")
        assert backend.length(stream) == 3  # the entries stay, for the other groups
        assert _numbers(backend.read([stream], "survivor", "c", count=10, block_ms=0)) == [0, 1, 2]
        backend.ensure_group(stream, "doomed")  # made again: a new group, at the end
        assert backend.pending_count(stream, "doomed") == 0
        assert backend.read([stream], "doomed", "c", count=10, block_ms=0) == []

    def test_a_read_acknowledges_what_it_is_given_first(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        for i in range(3):
            backend.publish(stream, _fields(i))
        first = backend.read([stream], "g", "c", count=2, block_ms=0)
        assert backend.pending_count(stream, "g") == 2
        rest = backend.read([stream], "g", "c", count=10, block_ms=0, ack={stream: [e.entry_id for e in first]})
        assert _numbers(rest) == [2]
        assert backend.pending_count(stream, "g") == 1
        # Acknowledged even when nothing new comes: by a read that does not wait, and by one whose wait runs out.
        assert backend.read([stream], "g", "c", count=10, block_ms=0, ack={stream: [rest[0].entry_id]}) == []
        assert backend.pending_count(stream, "g") == 0
        backend.publish(stream, _fields(3))
        (last,) = backend.read([stream], "g", "c", count=10, block_ms=0)
        assert backend.read([stream], "g", "c", count=10, block_ms=20, ack={stream: [last.entry_id]}) == []
        assert backend.pending_count(stream, "g") == 0

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
        assert backend.pending_count(stream, "g") == 0  # nothing left that a claim could ever return
        backend.publish(stream, _fields(2))  # a sentinel: the next read delivers it, and only it
        assert _numbers(backend.read([stream], "g", "other", count=10, block_ms=0)) == [2]
        assert _numbers(self.claim_when_idle(backend, stream, "g", "rescuer")) == [2]  # not the acknowledged one

    def test_unacknowledged_entries_are_redelivered_after_the_idle_timeout(
        self, backend: BusBackend, prefix: str
    ) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        backend.publish(stream, _fields(7))
        (entry,) = backend.read([stream], "g", "crashed", count=10, block_ms=0)
        assert entry.delivery_count == 1
        assert backend.claim_idle(stream, "g", "rescuer", min_idle_ms=600_000, count=10) == []  # not idle that long
        (claimed,) = self.claim_when_idle(backend, stream, "g", "rescuer")
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
        second = backend.read([stream], "g", "c", count=10, block_ms=0)  # entry 2 pending too, still stored
        assert _numbers(second) == [2]
        claimed = self.claim_when_idle(backend, stream, "g", "other")
        assert first not in {entry.entry_id for entry in claimed}
        assert _numbers(claimed) == [2]
        assert backend.pending_count(stream, "g") == 1  # entry 1 dropped from the group, entry 2 claimed

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
        received: list[StreamEntry] = []
        reading = threading.Event()

        def read() -> None:
            reading.set()
            # Far longer than the test may take: returning at all means the arrival woke the read.
            received.extend(backend.read([stream], "g", "c", count=10, block_ms=600_000))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reading.wait(PATIENCE_S)
        backend.publish(stream, _fields(1))
        reader.join(PATIENCE_S)
        assert not reader.is_alive(), "the blocked read never woke up"
        assert _numbers(received) == [1]

    def test_a_non_blocking_read_of_an_empty_stream_returns(self, backend: BusBackend, prefix: str) -> None:
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        results: list[list[StreamEntry]] = []
        # block_ms=0 means "do not wait" (Redis' own BLOCK 0 would wait forever): the read must return by itself.
        reader = threading.Thread(
            target=lambda: results.append(backend.read([stream], "g", "c", count=10, block_ms=0)), daemon=True
        )
        reader.start()
        reader.join(PATIENCE_S)
        assert results == [[]]
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
        assert _report_ids(bus.poll([streams.normal])) == ["r"]

    def test_a_new_subscriber_starts_at_the_end_unless_it_asks_for_the_history(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        producer = make_bus()
        producer.publish_many([FieldReport(report_id=f"old{i}") for i in range(3)])
        late = make_bus(group="late", subscribed=False)
        archivist = make_bus(group="archivist", subscribed=False)
        implicit = make_bus(group="implicit", subscribed=False)
        late.subscribe([streams.normal])
        archivist.subscribe([streams.normal], from_start=True)
        assert implicit.poll([streams.normal]) == []  # poll subscribes too: at the end
        producer.publish(FieldReport(report_id="new"))
        assert _report_ids(late.poll([streams.normal])) == ["new"]
        assert _report_ids(implicit.poll([streams.normal])) == ["new"]
        assert _report_ids(archivist.poll([streams.normal])) == ["old0", "old1", "old2", "new"]

    def test_a_destroyed_group_forgets_its_position_and_pending_messages(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus(group="temporary")
        bus.publish(FieldReport(report_id="taken"))
        assert len(bus.poll([streams.normal])) == 1  # pending, never acknowledged
        assert bus.destroy_group([streams.normal, streams.telemetry]) == 2
        assert bus.destroy_group([streams.normal]) == 0
        with pytest.raises(LookupError):
            backend.pending_count(streams.normal, "temporary")
        bus.publish(FieldReport(report_id="after"))
        assert bus.poll([streams.normal]) == []  # subscribed again by the poll: a new group, at the end
        bus.publish(FieldReport(report_id="sentinel"))
        assert _report_ids(bus.poll([streams.normal])) == ["sentinel"]

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

    def test_consume_acknowledges_each_message_as_it_is_handled(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        """A consumer that dies on the 3rd message of a batch of 5 leaves exactly the last three pending: the first
        two were acknowledged as they were handled, so only the unhandled ones are delivered again."""
        crashing = make_bus(consumer="crashing")
        crashing.publish_many([FieldReport(report_id=str(i)) for i in range(5)])
        seen: list[str] = []
        pending_at_crash: list[int] = []

        def handler(message: BusMessage) -> None:
            seen.append(message.payload.report_id)  # type: ignore[attr-defined]
            if len(seen) == 3:
                pending_at_crash.append(backend.pending_count(streams.normal, "g"))
                raise _Crash

        with pytest.raises(_Crash):
            crashing.consume([streams.normal], handler, count=5)
        assert seen == ["0", "1", "2"]
        assert pending_at_crash == [3]  # "0" and "1" were acknowledged before "2" was handed over
        assert backend.pending_count(streams.normal, "g") == 3
        rescuer = make_bus(consumer="rescuer")
        redelivered = self.poll_until(rescuer, streams.normal)
        assert _report_ids(redelivered) == ["2", "3", "4"]
        assert all(message.delivery_count == 2 for message in redelivered)
        rescuer.ack_many(redelivered)
        assert backend.pending_count(streams.normal, "g") == 0

    def test_poll_acknowledges_the_messages_it_is_handed_back(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus(claim_idle_ms=600_000)
        bus.publish_many([FieldReport(report_id=str(i)) for i in range(2)])
        first = bus.poll([streams.normal], count=1)
        assert backend.pending_count(streams.normal, "g") == 1
        second = bus.poll([streams.normal], ack=first)  # "0" handled: acknowledged with the next read
        assert _report_ids(second) == ["1"]
        assert backend.pending_count(streams.normal, "g") == 1
        assert bus.poll([streams.normal], ack=second) == []
        assert backend.pending_count(streams.normal, "g") == 0
        assert bus.counters["handled"] == 2

    def test_a_request_waits_for_its_reply_and_acknowledges_the_previous_one(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        requester, replier = make_bus(group="requester"), make_bus(group="replier")

        def answer() -> None:  # a replier that answers the first request it sees
            (request,) = self.poll_until(replier, streams.decisions)
            correlation = request.envelope.correlation_id
            replier.publish(FieldReport(report_id=f"re:{correlation}"), stream=streams.commands)
            replier.ack(request)

        first_replier = threading.Thread(target=answer, daemon=True)
        first_replier.start()
        state = SystemStatePacket(packet_id="p1")
        entry_id, replies = requester.request(
            state, stream=streams.decisions, correlation_id="p1", reply_streams=[streams.commands], block_ms=600_000
        )
        first_replier.join(PATIENCE_S)
        assert entry_id is not None and _report_ids(replies) == ["re:p1"]
        assert backend.pending_count(streams.commands, "requester") == 1  # read, to be acknowledged later
        # The next request acknowledges it in passing; with nothing to wait for, it returns at once.
        entry_id, replies = requester.request(
            SystemStatePacket(packet_id="p2"), stream=streams.decisions, reply_streams=[streams.commands], ack=replies
        )
        assert entry_id is not None and replies == []
        assert backend.pending_count(streams.commands, "requester") == 0
        assert [m.payload.packet_id for m in replier.poll([streams.decisions])] == ["p2"]  # type: ignore[attr-defined]

    def test_poll_can_publish_before_it_reads(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus()
        bus.publish(FieldReport(report_id="in"))
        (handled,) = bus.poll([streams.normal])
        out = [
            Outgoing(FieldReport(report_id="out"), stream=streams.commands),
            Outgoing(TelemetryPacket(packet_id="t")),
        ]
        assert bus.poll([streams.normal], ack=[handled], publish=out) == []
        assert backend.pending_count(streams.normal, "g") == 0
        assert _report_ids(bus.poll([streams.commands])) == ["out"]
        assert [m.payload.packet_id for m in bus.poll([streams.telemetry])] == ["t"]  # type: ignore[attr-defined]

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
        letters = bus.backend.read([streams.dead_letter], "g", "auditor", count=10, block_ms=0)
        assert len(letters) == 1
        assert b"failed 3 times" in letters[0].fields["reason"]
        assert letters[0].fields["source_stream"] == streams.normal.encode()
        assert bus.backend.pending_count(streams.normal, "g") == 0

    def test_a_failing_handler_does_not_stop_the_rest_of_the_batch(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        bus = make_bus()
        bus.publish_many([FieldReport(report_id=str(i)) for i in range(5)])
        handled: list[str] = []

        def handler(message: BusMessage) -> None:
            if message.payload.report_id == "2":  # type: ignore[attr-defined]
                raise ValueError("not this one")
            handled.append(message.payload.report_id)  # type: ignore[attr-defined]

        report = bus.consume([streams.normal], handler, count=5)
        assert (report.delivered, report.handled, report.failed) == (5, 4, 1)
        assert handled == ["0", "1", "3", "4"]
        assert backend.pending_count(streams.normal, "g") == 0  # four acknowledged, one republished for retry
        (retry,) = bus.poll([streams.normal])
        assert retry.payload.report_id == "2" and retry.attempts == 2  # type: ignore[attr-defined]

    def test_messages_of_a_crashed_consumer_are_redelivered_then_dead_lettered(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        crashing = make_bus(consumer="crashing", max_attempts=2)
        rescuer = make_bus(consumer="rescuer", max_attempts=2)
        crashing.publish(SystemStatePacket(packet_id="orphan"))
        assert len(crashing.poll([streams.normal])) == 1  # taken, never acknowledged
        assert rescuer.poll([streams.normal]) == []
        (again,) = self.poll_until(rescuer, streams.normal)
        assert again.payload.packet_id == "orphan" and again.attempts == 2  # type: ignore[attr-defined]
        # Never acknowledged again: the next claim would be a third delivery, beyond max_attempts.
        wait_until(
            lambda: crashing.poll([streams.normal]) == [] and crashing.counters["dead_lettered"] == 1,
            what="the orphan dead-lettered",
            timeout_s=PATIENCE_S,
        )
        assert crashing.backend.length(streams.dead_letter) == 1
        assert crashing.backend.pending_count(streams.normal, "g") == 0

    def test_acknowledged_messages_are_never_delivered_again(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        first, second = make_bus(consumer="first"), make_bus(consumer="second")
        first.publish(AdaptationCommand(command_type=CommandType.COMMAND_NOOP))
        report = first.consume([streams.normal], lambda message: None)
        assert report.handled == 1
        assert first.backend.pending_count(streams.normal, "g") == 0  # nothing a claim could bring back
        first.publish(FieldReport(report_id="sentinel"))
        assert _report_ids(self.poll_until(second, streams.normal)) == ["sentinel"]

    def test_every_group_of_the_bus_gets_its_own_copy(
        self, make_bus: Callable[..., Oona], streams: StreamNames
    ) -> None:
        nissa, simic = make_bus(group="nissa"), make_bus(group="simic")
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
        assert _report_ids(bus.poll([streams.normal], count=20)) == [str(i) for i in range(10)]

    # -- bad entries: nothing anyone writes on a stream stops its consumers -------------------------------------
    def test_a_field_name_that_is_not_utf8_is_read_and_claimed_never_raised(
        self, backend: BusBackend, prefix: str
    ) -> None:
        """What ``redis-cli XADD s '*' $'\\xff' x`` writes: the backend hands it over (its name surrogate-escaped)
        for the bus to judge, on a read and on a claim, and the entry behind it comes too."""
        stream = f"{prefix}.s"
        backend.ensure_group(stream, "g")
        odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
        backend.publish(stream, {odd: b"\xff", "n": b"1"})
        backend.publish(stream, _fields(2))
        read = backend.read([stream], "g", "crashed", count=10, block_ms=0)
        assert [dict(entry.fields) for entry in read] == [{odd: b"\xff", "n": b"1"}, {"n": b"2"}]
        claimed = self.claim_when_idle(backend, stream, "g", "rescuer")
        assert [dict(entry.fields) for entry in claimed] == [{odd: b"\xff", "n": b"1"}, {"n": b"2"}]

    def test_every_kind_of_bad_entry_is_dropped_or_dead_lettered_and_the_next_message_handled(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames, key: SigningKey
    ) -> None:
        """One of each kind, each followed by a valid message: the bad entry is counted as what it is (malformed or
        badly signed: acknowledged and dropped; signed but undecodable: dead-lettered), nothing raises, the valid
        message is handled, and nothing stays pending."""
        bus = make_bus()
        dead_letters = 0
        for index, entry in enumerate(poison_corpus(key)):
            if not write(backend, streams.normal, entry):
                continue
            bus.publish(FieldReport(report_id=str(index)))
            before = dict(bus.counters)
            handled: list[BusMessage] = []
            bus.consume([streams.normal], handled.append)
            assert _report_ids(handled) == [str(index)], entry.kind
            changed = {name: bus.counters[name] - before[name] for name in COUNTER.values()}
            assert changed == {name: int(name == COUNTER[entry.fate]) for name in COUNTER.values()}, entry.kind
            assert backend.pending_count(streams.normal, "g") == 0, entry.kind
            dead_letters += entry.fate == "dead_letter"
            assert backend.length(streams.dead_letter) == dead_letters, entry.kind
        letters = backend.read([streams.dead_letter], "g", "auditor", count=100, block_ms=0)
        assert all(letter.fields["source_stream"] == streams.normal.encode() for letter in letters)
        assert all(letter.fields["reason"] for letter in letters)

    def test_bad_entries_left_pending_by_a_crashed_consumer_are_dropped_when_claimed(
        self, backend: BusBackend, make_bus: Callable[..., Oona], streams: StreamNames, key: SigningKey
    ) -> None:
        rescuer = make_bus(consumer="rescuer")
        stored = [entry for entry in poison_corpus(key) if write(backend, streams.normal, entry)]
        rescuer.publish(FieldReport(report_id="valid"))
        taken = backend.read([streams.normal], "g", "crashed", count=100, block_ms=0)  # and never acknowledged
        assert len(taken) == len(stored) + 1
        assert rescuer.poll([streams.normal]) == []  # nothing new; the claims are not due yet
        (message,) = self.poll_until(rescuer, streams.normal, count=100)
        assert message.payload.report_id == "valid" and message.delivery_count == 2  # type: ignore[attr-defined]
        rescuer.ack(message)
        fates = Counter(entry.fate for entry in stored)
        assert {fate: rescuer.counters[COUNTER[fate]] for fate in COUNTER} == {fate: fates[fate] for fate in COUNTER}
        assert backend.pending_count(streams.normal, "g") == 0

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=SHARED_ACROSS_SUBCLASSES,
    )
    @given(data=st.data(), path=st.sampled_from(CONSUMER_PATHS))
    def test_no_bad_entry_stops_any_consumer_path(
        self, backend: BusBackend, prefix: str, key: SigningKey, data: st.DataObject, path: str
    ) -> None:
        """Random bad entries (random fields, names that are not UTF-8, damaged or foreign-signed envelopes,
        signed entries that cannot be decoded), then a valid message, through each way the bus reads: the valid
        message, and only it, is returned; each bad entry is counted as what it is; nothing stays pending."""
        entries: list[BadEntry] = data.draw(st.lists(bad_entries(key), min_size=1, max_size=6), label="entries")
        streams = StreamNames.prefixed(f"{prefix}.{uuid.uuid4().hex[:8]}")  # fresh streams for every example
        options = OonaOptions(streams=streams, max_attempts=3, claim_idle_ms=1 if path == "claim" else 600_000)
        bus = Oona(backend, signing_key=key, options=options, group="g", consumer="c")
        bus.subscribe([streams.normal, streams.commands])
        earlier: list[BusMessage] = []
        if path == "poll, acknowledging":
            bus.publish(FieldReport(report_id="earlier"))
            earlier = bus.poll([streams.normal])
        stored = [entry for entry in entries if write(backend, streams.normal, entry)]
        bus.publish(FieldReport(report_id="valid"))
        if path == "claim":  # taken by a consumer that died holding them; claimed once idle for a millisecond
            assert len(backend.read([streams.normal], "g", "crashed", count=100, block_ms=0)) == len(stored) + 1
        before = dict(bus.counters)
        got: list[BusMessage]
        if path == "consume":
            got = []
            bus.consume([streams.normal], got.append, count=100)
        elif path == "request":
            request = FieldReport(report_id="request")
            _, got = bus.request(request, stream=streams.commands, reply_streams=[streams.normal], count=100)
        elif path == "poll, acknowledging":
            got = bus.poll([streams.normal], count=100, ack=earlier)
        elif path == "poll, publishing":
            out = [Outgoing(FieldReport(report_id="out"), stream=streams.commands)]
            got = bus.poll([streams.normal], count=100, publish=out)
        elif path == "claim":
            got = self.poll_until(bus, streams.normal, count=100)
        else:
            got = bus.poll([streams.normal], count=100)
        assert _report_ids(got) == ["valid"]
        assert got[0].delivery_count == (2 if path == "claim" else 1)
        if path != "consume":
            bus.ack_many(got)
        fates = Counter(entry.fate for entry in stored)
        assert {fate: bus.counters[name] - before[name] for fate, name in COUNTER.items()} == {
            fate: fates[fate] for fate in COUNTER
        }
        assert backend.pending_count(streams.normal, "g") == 0
        assert backend.length(streams.dead_letter) == fates["dead_letter"]
