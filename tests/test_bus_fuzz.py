"""No entry anyone writes on the bus stops a service: bad entries fed to the services' own consumer loops.

The bus conformance suite (:mod:`esper_core.testing.conformance.bus`) shows that no bad entry stops any of Oona's
consumer paths, on every backend. Every service reads through those paths (none decodes entries itself), so this
module shows the same end to end, for each service and its client, on the in-memory bus and on a real Redis: the
Tamiyo service (``decisions`` and ``policy``) and the remote controller it answers (``commands``,
``esper_core.tolaria.remote``); the Urza service (``kernel_requests``) and the ``urza-prefetch`` store it answers
(``kernel_ready``, ``kernel_errors``). Bad entries go onto every stream each one reads, ahead of the real traffic;
the real traffic is still answered, each bad entry is counted as what it is by the client that read it, nothing is
left pending, and the service is still running.

Each test runs once with one entry of every kind (:func:`~esper_core.testing.bad_entries.poison_corpus`), then with
a few lists of random ones (hypothesis, derandomized: the same examples on every run), against one service that
runs throughout, as a real one would.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esper_core.leyline import SlotKind, SystemStatePacket, TrainingMetrics
from esper_core.oona import BusBackend, MemoryBackend, Oona, OonaOptions, StreamNames
from esper_core.plugins import Registry
from esper_core.protocols import SlotShape
from esper_core.signing import CommandVerifier, SigningKey
from esper_core.testing.bad_entries import COUNTER, BadEntry, bad_entries, poison_corpus, write
from esper_core.testing.servers import require_module, wait_until
from esper_core.tolaria.remote import RemoteController
from esper_tamiyo.service import TamiyoService
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.prefetch import PrefetchStore
from esper_urza.service import UrzaService

KEY = SigningKey.from_secret("bus-fuzz-test-secret-0123456789abcdef")
#: The fixed corpus, its huge entries kept to 64 KiB (the conformance suite sends the 1 MiB ones).
CORPUS = poison_corpus(KEY, huge_bytes=1 << 16)
#: One service serves every example, as a real one would serve whatever comes: hypothesis is told so.
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
VECTOR = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[BusBackend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    require_module("redis", "pip install 'esper-core[redis]'")
    from esper_core.oona.redis_backend import RedisBackend

    redis = RedisBackend(request.getfixturevalue("redis_server").url)
    try:
        yield redis
    finally:
        redis.close()


@pytest.fixture
def streams() -> StreamNames:
    return StreamNames.prefixed(f"fuzz.{uuid.uuid4().hex[:10]}")  # the Redis server is shared by the session


def bus(backend: BusBackend, streams: StreamNames, group: str) -> Oona:
    return Oona(backend, signing_key=KEY, options=OonaOptions(streams=streams), group=group, consumer=group)


@contextmanager
def running(service: TamiyoService | UrzaService) -> Iterator[threading.Thread]:
    """``service`` running in a thread, as Weatherlight runs it; stopped (and checked to stop) on leaving."""
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
    worker.start()
    try:
        yield worker
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive(), "the service did not stop"


def spread(backend: BusBackend, entries: list[BadEntry], streams: list[str]) -> Counter[str]:
    """Write ``entries`` on each of ``streams``; return how many of each fate were stored in all."""
    fates: Counter[str] = Counter()
    for stream in streams:
        fates.update(entry.fate for entry in entries if write(backend, stream, entry))
    return fates


def counts(bus: Oona) -> dict[str, int]:
    return {fate: bus.counters[name] for fate, name in COUNTER.items()}


def grown(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {fate: after[fate] - before[fate] for fate in COUNTER}


# -- Tamiyo: the service and the remote controller --------------------------------------------------------------------
@pytest.fixture
def tamiyo(
    backend: BusBackend, streams: StreamNames, tmp_path: Path
) -> Iterator[tuple[TamiyoService, threading.Thread]]:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[f"tamiyo.service.data_dir={tmp_path}"])
    service_bus = bus(backend, streams, "tamiyo")
    service: TamiyoService = registry.build(registry.service("tamiyo"), config=config, signing_key=KEY, bus=service_bus)
    with running(service) as worker:
        yield service, worker


@pytest.fixture
def remote(backend: BusBackend, streams: StreamNames) -> Iterator[RemoteController]:
    controller = RemoteController(bus(backend, streams, "tolaria-fuzz"), training_run_id="fuzz", timeout_s=60)
    yield controller
    controller.close()


def state(epoch: int) -> SystemStatePacket:
    return SystemStatePacket(
        version=1,
        packet_id=f"fuzz-{epoch}-{uuid.uuid4().hex[:6]}",
        training_run_id="fuzz",
        current_epoch=epoch,
        global_step=epoch * 100,
        metrics=TrainingMetrics(epoch=epoch, global_step=epoch * 100, val_loss=0.5, parameter_count=20_000),
    )


@FUZZ
@given(entries=st.lists(bad_entries(KEY), min_size=1, max_size=8))
@example(entries=CORPUS)
def test_bad_entries_stop_neither_the_tamiyo_service_nor_the_remote_controller(
    backend: BusBackend,
    streams: StreamNames,
    tamiyo: tuple[TamiyoService, threading.Thread],
    remote: RemoteController,
    entries: list[BadEntry],
) -> None:
    service, worker = tamiyo
    service_before, remote_before = counts(service.bus), counts(remote.bus)
    served = spread(backend, entries, [streams.decisions, streams.policy])
    answered = spread(backend, entries, [streams.commands])
    command = remote.decide(state(len(entries)))
    assert CommandVerifier(KEY).verify(command).accepted and command.training_run_id == "fuzz"
    # Read ahead of the state packet (or with it) and dealt with before the command went out.
    assert grown(counts(service.bus), service_before) == {fate: served[fate] for fate in COUNTER}
    assert grown(counts(remote.bus), remote_before) == {fate: answered[fate] for fate in COUNTER}
    assert backend.pending_count(streams.policy, "tamiyo") == 0
    wait_until(lambda: backend.pending_count(streams.decisions, "tamiyo") == 0, what="the packet acknowledged")
    assert worker.is_alive()


# -- Urza: the service and the prefetch store -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


@pytest.fixture
def urza(
    backend: BusBackend, streams: StreamNames, tmp_path: Path, karn: KarnCatalog
) -> Iterator[tuple[UrzaService, threading.Thread]]:
    service = UrzaService(bus(backend, streams, "urza"), UrzaLibrary(tmp_path / "shared", [karn]))
    with running(service) as worker:
        yield service, worker


@pytest.fixture
def store(backend: BusBackend, streams: StreamNames, tmp_path: Path, karn: KarnCatalog) -> Iterator[PrefetchStore]:
    library = UrzaLibrary(tmp_path / "shared", [karn])
    with PrefetchStore(bus(backend, streams, "trainer"), library, training_run_id="fuzz", timeout_s=60) as opened:
        yield opened


@FUZZ
@given(entries=st.lists(bad_entries(KEY), min_size=1, max_size=8))
@example(entries=CORPUS)
def test_bad_entries_stop_neither_the_urza_service_nor_the_prefetch_store(
    backend: BusBackend,
    streams: StreamNames,
    urza: tuple[UrzaService, threading.Thread],
    store: PrefetchStore,
    entries: list[BadEntry],
) -> None:
    service, worker = urza
    service_before, store_before = counts(service.bus), counts(store.bus)
    served = spread(backend, entries, [streams.kernel_requests])
    answered = spread(backend, entries, [streams.kernel_ready, streams.kernel_errors])
    fetched = store.fetch("BP052", VECTOR, {"hidden_multiple": 2})
    assert fetched.descriptor.blueprint_id == "BP052"
    # The service reads one entry at a time: the bad ones ahead of the request were dealt with before it.
    assert grown(counts(service.bus), service_before) == {fate: served[fate] for fate in COUNTER}
    assert grown(counts(store.bus), store_before) == {fate: answered[fate] for fate in COUNTER}
    wait_until(lambda: backend.pending_count(streams.kernel_requests, "urza") == 0, what="the request acknowledged")
    for stream in (streams.kernel_ready, streams.kernel_errors):
        assert backend.pending_count(stream, "trainer") == 0
    assert worker.is_alive()
