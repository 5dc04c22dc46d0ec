"""``esper serve urza`` and the ``urza-prefetch`` store: requests answered from the library, artifacts opened from
the shared root, errors and timeouts explained, and requests of a crashed service redelivered and answered.

The service runs in a thread here, over the in-memory bus or a real Redis (``redis_server``); the end-to-end test
of the ``esper serve urza`` command itself is in ``test_serve_urza.py``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import esper_urza.plugin
from esper_core.errors import ConfigError
from esper_core.leyline import (
    KernelArtifactError,
    KernelArtifactReady,
    KernelPrefetchRequest,
    SlotKind,
    TelemetryPacket,
)
from esper_core.oona import BusBackend, BusMessage, MemoryBackend, Oona, OonaOptions, StreamNames
from esper_core.plugins import BuildContext, Registry
from esper_core.protocols import ArtifactStore, SlotShape
from esper_core.signing import SigningKey
from esper_core.testing.conformance import ArtifactStoreConformance
from esper_core.testing.servers import RedisServer, require_module, wait_until
from esper_urza.errors import (
    ArtifactBuildError,
    ArtifactIntegrityError,
    ArtifactPrefetchTimeout,
    ArtifactServiceError,
)
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.options import PrefetchOptions, UrzaOptions
from esper_urza.prefetch import PrefetchStore, build_prefetch_store
from esper_urza.service import UrzaService

KEY = SigningKey.from_secret("urza-prefetch-test-secret-0123456789")
CONV = SlotShape(SlotKind.SLOT_KIND_CONV2D, (8, 6, 6))
VECTOR = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))
Buses = Callable[..., Oona]


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


def stream_names(tag: str) -> StreamNames:
    """Streams of one test's own: the Redis server is shared by the session."""
    return StreamNames.prefixed(f"t{uuid.uuid4().hex[:10]}.{tag}")


def make_buses(backend: BusBackend, streams: StreamNames, **options: Any) -> Buses:
    oona_options = OonaOptions(streams=streams, **options)

    def bus(group: str, consumer: str | None = None) -> Oona:
        return Oona(backend, signing_key=KEY, options=oona_options, group=group, consumer=consumer or group)

    return bus


@pytest.fixture
def memory_buses(request: pytest.FixtureRequest) -> Buses:
    return make_buses(MemoryBackend(), stream_names(request.node.name[:20]))


@pytest.fixture
def redis_buses(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[Buses]:
    require_module("redis", "pip install 'esper-core[redis]'")
    from esper_core.oona.redis_backend import RedisBackend

    backend = RedisBackend(redis_server.url)
    yield make_buses(backend, stream_names(request.node.name[:20]), claim_idle_ms=200)
    backend.close()


@pytest.fixture
def serve(karn: KarnCatalog) -> Iterator[Callable[[Oona, Path], UrzaService]]:
    """Start the service in a thread, as Weatherlight would; stopped (and checked to stop) at the end."""
    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(bus: Oona, root: Path) -> UrzaService:
        service = UrzaService(bus, UrzaLibrary(root, [karn]))
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
        thread.start()
        running.append((thread, stop))
        return service

    yield start
    for thread, stop in running:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the service did not stop"


def open_store(buses: Buses, root: Path, karn: KarnCatalog, *, timeout_s: float = 20.0) -> PrefetchStore:
    return PrefetchStore(buses("trainer"), UrzaLibrary(root, [karn]), training_run_id="run-1", timeout_s=timeout_s)


def request_for(blueprint_id: str, slot: SlotShape, **parameters: float) -> KernelPrefetchRequest:
    request = KernelPrefetchRequest(
        request_id=f"req-{time.time_ns()}",
        blueprint_id=blueprint_id,
        training_run_id="run-1",
        parameters=parameters,
        slot_kind=slot.kind,
        slot_shape=list(slot.shape),
    )
    request.issued_at.GetCurrentTime()
    return request


def observer(buses: Buses, group: str = "observer") -> Oona:
    """A test consumer of the replies and telemetry, subscribed before anything it must see is published."""
    bus = buses(group)
    bus.subscribe([bus.streams.kernel_ready, bus.streams.kernel_errors, bus.streams.telemetry])
    return bus


def replies(bus: Oona, request_id: str, count: int = 1, timeout_s: float = 60.0) -> list[BusMessage]:
    """``count`` replies to ``request_id`` on the kernel streams, read by a test consumer of its own (one that
    subscribed before the request went out)."""
    found: list[BusMessage] = []

    def enough() -> bool:
        messages = bus.poll([bus.streams.kernel_ready, bus.streams.kernel_errors], block_ms=200)
        bus.ack_many(messages)
        found.extend(message for message in messages if message.envelope.correlation_id == request_id)
        return len(found) >= count

    wait_until(enough, what=f"{count} replies to {request_id}", timeout_s=timeout_s)
    return found


# -- over the in-memory bus ------------------------------------------------------------------------------------------
def test_a_fetch_through_the_service_serves_the_module_a_local_fetch_would(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    service = serve(memory_buses("urza"), root)
    with open_store(memory_buses, root, karn) as store:
        fetched = store.fetch("BP009", CONV, {"depth": 1})
        again = store.fetch("BP009", CONV, {"depth": 1})
    with UrzaLibrary(tmp_path / "local", [karn]) as local:
        expected = local.fetch("BP009", CONV, {"depth": 1})

    inputs = torch.randn(3, *CONV.shape)
    assert tuple(fetched.module(inputs).shape) == (3, *CONV.shape)
    count = sum(parameter.numel() for parameter in fetched.module.parameters())
    assert count == sum(parameter.numel() for parameter in expected.module.parameters())
    # The same deterministic initial weights as a local build (Tezzeret seeds them from the artifact key).
    local_state = expected.module.state_dict()
    assert all(torch.equal(tensor, local_state[name]) for name, tensor in fetched.module.state_dict().items())
    assert fetched.descriptor.blueprint_id == "BP009"
    assert (fetched.source, again.source) == ("disk", "memory")  # opened from the shared root, then warm
    assert again.artifact_sha256 == fetched.artifact_sha256 and fetched.fetch_latency_ms > 0
    assert fetched.module is not again.module
    # The service counts a request after its reply is out: the last fetch can return before the count moves.
    wait_until(lambda: service.counters["served"] == 2, what="the service counting both requests")
    assert service.counters["built"] == 1


def test_the_ready_reply_names_the_stored_artifact(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    serve(memory_buses("urza"), root)
    client = observer(memory_buses, "client")
    request = request_for("BP052", VECTOR, hidden_multiple=2)
    client.publish(request, correlation_id=request.request_id)
    client.publish(request, correlation_id=request.request_id)  # delivered twice: answered twice, the same way
    first, second = replies(client, request.request_id, 2)
    for message in (first, second):
        ready = message.payload
        assert isinstance(ready, KernelArtifactReady) and message.stream == client.streams.kernel_ready
        assert message.envelope.correlation_id == request.request_id == ready.request_id
        assert ready.blueprint_id == "BP052"
        assert 0 < ready.prewarm_p50_ms <= ready.prewarm_p95_ms
    assert isinstance(first.payload, KernelArtifactReady) and isinstance(second.payload, KernelArtifactReady)
    assert (first.payload.artifact_ref, first.payload.checksum) == (
        second.payload.artifact_ref,
        second.payload.checksum,
    )
    with UrzaLibrary(root) as library:  # another process's view of the same root: no catalogs needed to look
        record = library.get(first.payload.artifact_ref)
        assert record is not None and record.blueprint_id == "BP052"
        assert hashlib.sha256((root / record.path).read_bytes()).hexdigest() == first.payload.checksum


def test_refused_requests_get_an_error_reply_and_the_store_raises_the_reason(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    service = serve(memory_buses("urza"), root)
    with open_store(memory_buses, root, karn) as store:
        with pytest.raises(ArtifactServiceError) as unknown:
            store.fetch("BP999", CONV, {})
        assert isinstance(unknown.value, ArtifactBuildError)
        assert unknown.value.reason.startswith("unknown blueprint: ") and "'BP999'" in unknown.value.reason
        assert "esper serve urza could not provide BP999 at conv2d[8, 6, 6]" in str(unknown.value)

        with pytest.raises(ArtifactServiceError, match=r"invalid request: .*depth.*9") as bounds:
            store.fetch("BP009", CONV, {"depth": 9})
        assert bounds.value.check == "service"

        with pytest.raises(ArtifactServiceError, match="build refused: Tezzeret refused BP045"):
            store.fetch("BP045", VECTOR, {"frequency": 0.25})  # the NaN stressor fails the finiteness probe

        # Errors travel on kernel_errors, correlated like the ready replies.
        client = observer(memory_buses, "client")
        request = request_for("BP009", VECTOR)
        client.publish(request, correlation_id=request.request_id)
        (message,) = replies(client, request.request_id)
        assert isinstance(message.payload, KernelArtifactError) and message.stream == client.streams.kernel_errors
        assert message.envelope.correlation_id == request.request_id
        assert "does not grow in vector slots" in message.payload.reason

        assert store.fetch("BP009", CONV, {"depth": 1}).module is not None  # the service carries on
    wait_until(lambda: service.counters["served"] == 1, what="the service counting the last request")
    assert service.counters["failed"] == 4


WIDTH = SlotShape(SlotKind.SLOT_KIND_VECTOR, (10,), read_kind=SlotKind.SLOT_KIND_CONV2D, read_shape=(4, 6, 6))


def test_a_width_fetch_through_the_service_carries_the_read_side_end_to_end(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    """The store asks for the read side as well, the service builds for it, and the store checks what it opens."""
    root = tmp_path / "shared"
    service = serve(memory_buses("urza"), root)
    inspector = memory_buses("inspector")
    inspector.subscribe([inspector.streams.kernel_requests])
    with open_store(memory_buses, root, karn) as store:
        fetched = store.fetch("BP058", WIDTH, {"width": 3})
        narrower_read = SlotShape(WIDTH.kind, WIDTH.shape, read_kind=WIDTH.read_kind, read_shape=(2, 6, 6))
        other = store.fetch("BP058", narrower_read, {"width": 3})
    (first, _) = inspector.poll([inspector.streams.kernel_requests])
    request = first.payload
    assert isinstance(request, KernelPrefetchRequest)
    assert (request.slot_kind, list(request.slot_shape)) == (SlotKind.SLOT_KIND_VECTOR, [10])
    assert (request.read_kind, list(request.read_shape)) == (SlotKind.SLOT_KIND_CONV2D, [4, 6, 6])
    assert fetched.module(torch.randn(2, 4, 6, 6)).shape == (2, 10)
    assert other.module(torch.randn(2, 2, 6, 6)).shape == (2, 10)
    assert fetched.artifact_sha256 != other.artifact_sha256
    with UrzaLibrary(tmp_path / "local", [karn]) as local:
        expected = local.fetch("BP058", WIDTH, {"width": 3}).module.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in fetched.module.state_dict().items())
    with UrzaLibrary(root) as library:
        slots = {record.slot.read_shape for record in library.query(blueprint_id="BP058")}
    assert slots == {(4, 6, 6), (2, 6, 6)}
    wait_until(lambda: service.counters["built"] == 2, what="the service counting both builds")


def test_the_service_builds_for_the_read_side_a_request_names(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    serve(memory_buses("urza"), root)
    client = observer(memory_buses, "client")
    width = request_for("BP059", SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,)), width=4)
    width.read_kind = SlotKind.SLOT_KIND_VECTOR
    width.read_shape.append(20)
    residual_only = request_for("BP059", SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,)))  # no read side
    for request in (width, residual_only):
        client.publish(request, correlation_id=request.request_id)
    answers: dict[str, BusMessage] = {}

    def both() -> bool:
        messages = client.poll([client.streams.kernel_ready, client.streams.kernel_errors], block_ms=200)
        client.ack_many(messages)
        answers.update((message.envelope.correlation_id, message) for message in messages)
        return {width.request_id, residual_only.request_id} <= set(answers)

    wait_until(both, what="replies to both requests", timeout_s=60.0)
    ready, refused = answers[width.request_id], answers[residual_only.request_id]
    assert isinstance(ready.payload, KernelArtifactReady)
    assert isinstance(refused.payload, KernelArtifactError)
    assert refused.payload.reason.startswith("invalid request: BP059 is a width blueprint and vector[12] is a residual")
    with UrzaLibrary(root) as library:
        record = library.get(ready.payload.artifact_ref)
    assert record is not None
    assert record.slot == SlotShape(
        SlotKind.SLOT_KIND_VECTOR, (12,), read_kind=SlotKind.SLOT_KIND_VECTOR, read_shape=(20,)
    )
    assert record.parameter_count == (20 * 4 + 4) + (4 * 12 + 12)


def test_the_service_reports_telemetry_when_it_stops(memory_buses: Buses, karn: KarnCatalog, tmp_path: Path) -> None:
    bus = memory_buses("urza")
    service = UrzaService(bus, UrzaLibrary(tmp_path / "shared", [karn]))
    watcher = observer(memory_buses)
    request = request_for("BP052", VECTOR)
    bus.publish(request)  # before the service ever ran: it reads the history of a group it creates
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    replies(watcher, request.request_id)
    stop.set()
    worker.join(60)
    assert not worker.is_alive()
    packets = [message.payload for message in watcher.poll([bus.streams.telemetry], count=10)]
    assert all(isinstance(packet, TelemetryPacket) for packet in packets)
    by_source = {packet.source_subsystem: packet for packet in packets if isinstance(packet, TelemetryPacket)}
    metrics = {metric.name: metric.value for metric in by_source["urza-service"].metrics}
    assert metrics["urza.service.served_total"] == 1 and metrics["urza.service.built_total"] == 1
    assert metrics["urza.service.build.p50_ms"] > 0
    assert {metric.name for metric in by_source["urza"].metrics} >= {"urza.fetch.built_total"}
    assert service.library._closed  # run() closes the library it was given


def test_an_unexpected_failure_is_answered_then_raised_so_the_service_is_rebuilt(
    memory_buses: Buses, karn: KarnCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = memory_buses("urza")
    service = UrzaService(bus, UrzaLibrary(tmp_path / "shared", [karn]))

    def broken(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.library, "fetch_artifact", broken)
    watcher = observer(memory_buses)
    request = request_for("BP052", VECTOR)
    bus.publish(request, correlation_id=request.request_id)
    with pytest.raises(sqlite3.OperationalError):
        service.run(threading.Event())
    (message,) = replies(watcher, request.request_id)
    assert isinstance(message.payload, KernelArtifactError)
    assert message.payload.reason == "the urza service failed (OperationalError): disk I/O error"
    assert bus.backend.pending_count(bus.streams.kernel_requests, "urza") == 0  # answered: not delivered again
    assert service.library._closed


def test_without_a_service_the_fetch_times_out_saying_how_to_start_one(
    memory_buses: Buses, karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    with open_store(memory_buses, root, karn, timeout_s=0.3) as store:
        started = time.monotonic()
        with pytest.raises(ArtifactPrefetchTimeout) as caught:
            store.fetch("BP009", CONV, {})
        assert time.monotonic() - started >= 0.3  # it waited the whole timeout
    message = str(caught.value)
    assert "no `esper serve urza` answered prefetch request" in message and "within 0.3 s" in message
    assert f"esper serve urza --set oona.backend=memory --set urza.root={root}" in message
    assert "ESPER_LEYLINE_SECRET" in message and "which no other process can reach" in message
    assert isinstance(caught.value, TimeoutError)


def test_a_late_reply_is_skipped_by_the_next_fetch(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    with open_store(memory_buses, root, karn, timeout_s=0.2) as store:
        with pytest.raises(ArtifactPrefetchTimeout):
            store.fetch("BP009", CONV, {})
        serve(memory_buses("urza"), root)  # answers the timed-out request too, and the artifact is warm
        store.timeout_s = 20.0
        fetched = store.fetch("BP009", CONV, {})
        assert fetched.descriptor.blueprint_id == "BP009"
        assert store.skipped_replies == 1


def test_replies_to_other_stores_and_the_streams_history_are_skipped(
    memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    serve(memory_buses("urza"), root)
    with open_store(memory_buses, root, karn) as first:
        first.fetch("BP052", VECTOR, {})
        with PrefetchStore(memory_buses("other-trainer"), UrzaLibrary(root, [karn])) as second:
            assert second.skipped_replies == 0  # the history was acknowledged unread at construction
            second.fetch("BP052", VECTOR, {})
            first.fetch("BP052", VECTOR, {})
        assert first.skipped_replies == 1  # the second store's reply


def test_a_store_makes_its_group_before_asking_and_deletes_it_when_closed(
    memory_buses: Buses, karn: KarnCatalog, tmp_path: Path
) -> None:
    store = open_store(memory_buses, tmp_path, karn)
    backend, group, streams = store.bus.backend, store.bus.group, store.bus.streams
    for stream in (streams.kernel_ready, streams.kernel_errors):  # no reply can come before the group exists
        assert backend.pending_count(stream, group) == 0
    store.close()
    for stream in (streams.kernel_ready, streams.kernel_errors):  # nobody reads it again: Redis need not keep it
        with pytest.raises(LookupError):
            backend.pending_count(stream, group)


class Tracked(MemoryBackend):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_the_factory_needs_a_shared_bus_the_secret_and_the_shared_root(
    esper_registry: Registry,
    register_plugin: Any,
    karn: KarnCatalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_plugin(esper_urza.plugin)
    spec = esper_registry.artifact_store("urza-prefetch")
    assert spec.options is PrefetchOptions
    config = esper_registry.load_config(env={}, overrides=[f"urza.root={tmp_path}", "urza.prefetch.timeout_s=2.5"])
    monkeypatch.delenv("ESPER_LEYLINE_SECRET", raising=False)

    def build(bus: Oona | None, **overrides: Any) -> Any:
        return esper_registry.build(spec, **({"config": config, "catalogs": [karn], "bus": bus} | overrides))

    with pytest.raises(ConfigError, match=r"needs the run's bus, shared with the service \(oona.backend"):
        build(None)
    with pytest.raises(ConfigError, match=r"this run's bus is in-process \(oona.backend = 'memory'\)"):
        build(Oona(MemoryBackend(), signing_key=KEY))
    backend = Tracked()  # in-process here, standing in for Redis
    bus = Oona(backend, signing_key=KEY, options=OonaOptions(backend="redis://127.0.0.1:1/0"), group="tolaria")
    with pytest.raises(ConfigError, match="set ESPER_LEYLINE_SECRET to the same value in this process and in the"):
        build(bus)
    monkeypatch.setenv("ESPER_LEYLINE_SECRET", "urza-prefetch-test-secret-0123456789")
    with pytest.raises(ConfigError, match=r"urza\.root must name the library directory the service uses"):
        build(bus, config=esper_registry.load_config(env={}))

    store = build(bus, training_run_id="run-7")
    try:
        assert isinstance(store, PrefetchStore) and isinstance(store, ArtifactStore)
        assert store.timeout_s == 2.5 and store.training_run_id == "run-7" and store.library.root == tmp_path
        assert store.bus.group.startswith("urza-prefetch-run-7-") and store.bus.backend is backend
    finally:
        store.close()
    store.close()  # twice is fine
    assert not backend.closed  # the run's backend belongs to the run


def test_the_training_run_id_reaches_the_request(
    memory_buses: Buses, esper_registry: Registry, karn: KarnCatalog, tmp_path: Path
) -> None:
    bus = memory_buses("tolaria")
    context = BuildContext(
        registry=esper_registry,
        options=PrefetchOptions(timeout_s=0.05),
        bus=bus,
        services={"catalogs": [karn], "training_run_id": "run-42"},
    )
    with pytest.raises(ConfigError):  # no configuration: no urza.root
        build_prefetch_store(context)
    inspector = memory_buses("inspector")
    inspector.subscribe([bus.streams.kernel_requests])
    store = PrefetchStore(memory_buses("trainer"), UrzaLibrary(tmp_path, [karn]), training_run_id="run-42")
    store.timeout_s = 0.05
    with store, pytest.raises(ArtifactPrefetchTimeout):
        store.fetch("BP052", VECTOR, {"hidden_multiple": 3})
    requests = inspector.poll([bus.streams.kernel_requests])
    (message,) = requests
    request = message.payload
    assert isinstance(request, KernelPrefetchRequest)
    assert request.training_run_id == "run-42" and request.blueprint_id == "BP052"
    assert dict(request.parameters) == {"hidden_multiple": 3.0}
    assert (request.slot_kind, list(request.slot_shape)) == (SlotKind.SLOT_KIND_VECTOR, [12])
    assert request.request_id and request.issued_at.seconds > 0
    assert message.envelope.correlation_id == request.request_id


def test_open_artifact_refuses_what_the_reply_did_not_name(karn: KarnCatalog, tmp_path: Path) -> None:
    with UrzaLibrary(tmp_path, [karn]) as writer:
        _, record = writer.fetch_artifact("BP052", VECTOR, {})
    with UrzaLibrary(tmp_path, [karn]) as reader:
        with pytest.raises(ArtifactIntegrityError, match="holds no artifact 000000000000"):
            reader.open_artifact("0" * 64, record.sha256)
        with pytest.raises(ArtifactIntegrityError, match="not the ffffffffffff asked for: it was replaced since"):
            reader.open_artifact(record.key, "f" * 64)
        with pytest.raises(ArtifactIntegrityError, match=r"was built for vector\[12\], not vector\[13\]"):
            reader.open_artifact(record.key, record.sha256, slot=SlotShape(SlotKind.SLOT_KIND_VECTOR, (13,)))
        assert reader.open_artifact(record.key, record.sha256, slot=VECTOR).source == "disk"
    with UrzaLibrary(tmp_path) as without_catalogs, pytest.raises(KeyError, match="catalogs the service uses"):
        without_catalogs.open_artifact(record.key, record.sha256)
    path = tmp_path / record.path
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # corrupted after the reply
    with UrzaLibrary(tmp_path, [karn], options=UrzaOptions(verify_on_open=False)) as reader:
        with pytest.raises(ArtifactIntegrityError, match=r"could not be loaded \(evicted and reported"):
            reader.open_artifact(record.key, record.sha256)
        assert reader.get(record.key) is None  # evicted: the service builds it again on the next request


class TestPrefetchStoreConformance(ArtifactStoreConformance):
    @pytest.fixture
    def store(
        self, memory_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
    ) -> Iterator[ArtifactStore]:
        serve(memory_buses("urza"), tmp_path)
        with open_store(memory_buses, tmp_path, karn) as opened:
            yield opened

    @pytest.fixture
    def fetch_request(self) -> tuple[str, SlotShape, dict[str, float]]:
        return "BP052", VECTOR, {}

    def test_an_unknown_blueprint_is_a_key_error(
        self, store: ArtifactStore, fetch_request: tuple[str, SlotShape, dict[str, float]]
    ) -> None:
        """The service decides what it offers: an unknown blueprint is its error reply, not a local KeyError."""
        with pytest.raises(ArtifactServiceError, match="unknown blueprint"):
            store.fetch("no-such-blueprint", fetch_request[1], {})


# -- over Redis ------------------------------------------------------------------------------------------------------
def test_over_redis_a_request_left_pending_by_a_crashed_service_is_answered_by_the_next(
    redis_buses: Buses, serve: Callable[[Oona, Path], UrzaService], karn: KarnCatalog, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    crashed = redis_buses("urza", "urza-crashed")  # the service's group, a consumer that dies holding a request
    crashed.subscribe([crashed.streams.kernel_requests])
    with open_store(redis_buses, root, karn) as store:
        outcome: dict[str, Any] = {}

        def fetch() -> None:
            try:
                outcome["fetched"] = store.fetch("BP009", CONV, {"depth": 1})
            except Exception as error:
                outcome["error"] = error

        trainer = threading.Thread(target=fetch)
        trainer.start()
        wait_until(
            lambda: crashed.poll([crashed.streams.kernel_requests], block_ms=200),
            what="the request in the doomed hands",
        )
        # ... and it never replies nor acknowledges. A fresh service claims the request once idle (claim_idle_ms).
        service = serve(redis_buses("urza", "urza-fresh"), root)
        trainer.join(60)
        assert not trainer.is_alive() and "error" not in outcome, outcome.get("error")
        fetched = outcome["fetched"]
        inputs = torch.randn(2, *CONV.shape)
        assert tuple(fetched.module(inputs).shape) == (2, *CONV.shape)
        # At least once: a build slower than claim_idle_ms (a loaded machine) may be claimed and answered again. The
        # service counts a request after its reply is out, so the fetch can return before the count moves.
        wait_until(lambda: service.counters["served"] >= 1, what="the fresh service counting what it served")
        backend = crashed.backend
        wait_until(  # acknowledged after the reply
            lambda: backend.pending_count(crashed.streams.kernel_requests, "urza") == 0,
            what="the redelivered request acknowledged",
        )
