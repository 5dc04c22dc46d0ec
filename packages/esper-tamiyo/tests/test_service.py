"""``esper serve tamiyo``'s service in a thread over the in-memory bus, with the remote controller of
``esper_core.tolaria.remote`` as its client: commands come back signed; a repeated packet gets the same command;
what a run's controller publishes goes out after the command; every run's controller gets each policy update; and
what was handled is acknowledged. (Across processes over Redis: ``tests/test_remote_tamiyo.py``.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esper_core.errors import EsperError
from esper_core.leyline import AdaptationCommand, PolicyUpdate, SystemStatePacket, TelemetryPacket
from esper_core.oona import BusMessage, MemoryBackend, Oona, OonaOptions, StreamNames
from esper_core.plugins import Registry
from esper_core.signing import CommandVerifier, SigningKey
from esper_core.testing.servers import wait_until
from esper_core.tolaria.remote import RemoteController
from esper_tamiyo.service import TamiyoService

from tamiyo_scenarios import packet, slot

KEY = SigningKey.from_secret("tamiyo-service-test-secret-0123456789")
STREAMS = StreamNames.prefixed("service")
OPTIONS = OonaOptions(streams=STREAMS)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def service(backend: MemoryBackend, tmp_path: Path) -> Iterator[TamiyoService]:
    """The service as ``esper serve tamiyo`` builds it (its own bus client, group ``tamiyo``), running in a thread."""
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[f"tamiyo.service.data_dir={tmp_path}"])
    bus = Oona(backend, signing_key=KEY, options=OPTIONS, group="tamiyo", consumer="tamiyo-1", source="tamiyo")
    built: TamiyoService = registry.build(registry.service("tamiyo"), config=config, signing_key=KEY, bus=bus)
    stop = threading.Event()
    worker = threading.Thread(target=built.run, args=(stop,), daemon=True)
    worker.start()
    yield built
    stop.set()
    worker.join(60)
    assert not worker.is_alive(), "the service did not stop"


def client(backend: MemoryBackend, group: str) -> Oona:
    return Oona(backend, signing_key=KEY, options=OPTIONS, group=group, consumer=group)


def state(run_id: str, epoch: int) -> SystemStatePacket:
    made = packet(epoch, 0.5, [slot("a")])
    made.training_run_id, made.packet_id = run_id, f"{run_id}-{epoch}"
    return made


def watch(backend: MemoryBackend) -> Callable[[], list[TelemetryPacket]]:
    """A reader of the telemetry streams, subscribed now; each call returns everything seen so far."""
    watcher = client(backend, "watcher")
    streams = [STREAMS.telemetry, STREAMS.emergency]
    watcher.subscribe(streams)
    seen: list[TelemetryPacket] = []

    def read() -> list[TelemetryPacket]:
        messages = watcher.poll(streams, count=100)
        watcher.ack_many(messages)
        seen.extend(m.payload for m in messages if isinstance(m.payload, TelemetryPacket))
        return seen

    return read


def events_of(packets: list[TelemetryPacket], run_id: str) -> list[str]:
    return [event.name for p in packets if p.training_run_id == run_id for event in p.events]


def test_a_decision_comes_back_signed_then_the_controllers_telemetry_and_all_is_acknowledged(
    service: TamiyoService, backend: MemoryBackend
) -> None:
    telemetry = watch(backend)
    remote = RemoteController(client(backend, "tolaria-run"), training_run_id="run", timeout_s=60)
    command = remote.decide(state("run", 4))
    assert CommandVerifier(KEY).verify(command).accepted
    assert command.training_run_id == "run" and command.issued_by == "tamiyo"
    # The controller's telemetry about that decision, held back while the run waited, follows with the next read.
    wait_until(lambda: "decision" in events_of(telemetry(), "run"), what="the controller's decision event")
    wait_until(lambda: backend.pending_count(STREAMS.decisions, "tamiyo") == 0, what="the state packet acknowledged")
    assert service.counters["decisions"] == 1
    remote.close()
    with pytest.raises(LookupError):  # the run's own group is gone with it
        backend.pending_count(STREAMS.commands, "tolaria-run")


def test_a_state_packet_delivered_twice_gets_the_same_command(service: TamiyoService, backend: MemoryBackend) -> None:
    run = client(backend, "tolaria-twice")
    run.subscribe([STREAMS.commands])
    sent = state("twice", 7)
    run.publish(sent, stream=STREAMS.decisions, correlation_id=sent.packet_id)
    run.publish(sent, stream=STREAMS.decisions, correlation_id=sent.packet_id)  # a retried publish, say
    commands: list[BusMessage] = []

    def both() -> bool:
        commands.extend(run.poll([STREAMS.commands], block_ms=100))
        return len(commands) >= 2

    wait_until(both, what="two answers")
    first, second = (message.payload for message in commands)
    assert isinstance(first, AdaptationCommand) and isinstance(second, AdaptationCommand)
    assert first.command_id == second.command_id and first.security.nonce == second.security.nonce
    assert {message.envelope.correlation_id for message in commands} == {sent.packet_id}
    assert (service.counters["decisions"], service.counters["repeated"]) == (1, 1)


def test_every_runs_controller_gets_each_policy_update(service: TamiyoService, backend: MemoryBackend) -> None:
    telemetry = watch(backend)
    runs = {run_id: RemoteController(client(backend, f"tolaria-{run_id}"), training_run_id=run_id, timeout_s=60)
            for run_id in ("a", "b")}  # fmt: skip
    for run_id, remote in runs.items():
        remote.decide(state(run_id, 4))  # each run's controller exists
    client(backend, "simic").publish(PolicyUpdate(policy_id="u1", policy_name="heuristic"))
    wait_until(lambda: service.counters["policy_updates"] == 1, what="the update read by the service")
    for run_id, remote in runs.items():
        remote.decide(state(run_id, 5))  # applied before this decision
    for run_id in runs:  # the heuristic takes no weights: each controller refuses it, and says so
        wait_until(
            lambda run_id=run_id: "policy_update_rejected" in events_of(telemetry(), run_id),
            what=f"run {run_id}'s controller handed the update",
        )
    assert service.counters["decisions"] == 4
    late = RemoteController(client(backend, "tolaria-late"), training_run_id="late", timeout_s=60)
    late.decide(state("late", 1))  # a run first seen after the update gets it before its first decision
    wait_until(lambda: "policy_update_rejected" in events_of(telemetry(), "late"), what="the late run handed it")
    late.close()


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "/absolute", ".hidden"])
def test_a_run_id_that_is_not_a_plain_directory_name_is_refused(run_id: str, tmp_path: Path) -> None:
    """Even in a correctly signed packet: the service keeps a run's state in data_dir/<run id>, nowhere else."""
    registry = Registry.create(env={})
    data_dir = tmp_path / "data"
    config = registry.load_config(env={}, overrides=[f"tamiyo.service.data_dir={data_dir}"])
    bus = Oona(MemoryBackend(), signing_key=KEY, options=OPTIONS, group="tamiyo", consumer="tamiyo-1", source="tamiyo")
    built: TamiyoService = registry.build(registry.service("tamiyo"), config=config, signing_key=KEY, bus=bus)
    with pytest.raises(EsperError, match="cannot name a directory"):
        built.controller_for(run_id)
    assert not any(path.name == "escape" for path in tmp_path.rglob("*"))
    assert built.controller_for("fashion-mnist-20261203-0800") is not None
