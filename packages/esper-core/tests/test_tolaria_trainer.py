"""Tolaria's trainer, piece by piece, on a tiny synthetic run: the controller under a timeout and conservative mode,
divergence, and what a checkpoint brings back (counters, sinks, clocks)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.leyline import AdaptationCommand, CommandType, SystemStatePacket, TelemetryPacket
from esper_core.plugins import Registry
from esper_core.testing.clock import FakeClock
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.history import EpochStats
from esper_core.tolaria.trainer import Trainer

TINY = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=512",
    "run.synthetic.widths=[8]",
    "run.batch_size=64",
    "run.epochs=3",
    "nissa.sinks=[]",
    "tolaria.failures_to_conservative=2",
    "tolaria.conservative_for=2",
]


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[Trainer]:
    registry = Registry.create()
    config = registry.load_config(env={}, overrides=[*TINY, f"run.runs_dir={tmp_path}"])
    built = Trainer(start_run(registry, config))
    yield built
    built.close()


class Controller:
    """A stand-in controller: waits (a no-op), raises, or blocks until released, as a test asks."""

    def __init__(self, behaviour: str = "wait") -> None:
        self.behaviour = behaviour
        self.asked = 0
        self.release = threading.Event()

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        self.asked += 1
        if self.behaviour == "raise":
            raise RuntimeError("policy bug")
        if self.behaviour == "block":
            self.release.wait(30)
        return AdaptationCommand(command_type=CommandType.COMMAND_NOOP)

    def observe(self, *args: Any) -> list[Any]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.asked = state["asked"]

    def close(self) -> None:
        self.release.set()


class RememberingSink:
    """A resumable sink that keeps packets in memory."""

    def __init__(self) -> None:
        self.packets: list[TelemetryPacket] = []

    def emit(self, packet: TelemetryPacket) -> None:
        self.packets.append(packet)

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {"count": len(self.packets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del self.packets[state["count"] :]


def stats() -> EpochStats:
    return EpochStats(train_loss=1.0, train_accuracy=0.5, seconds=0.1, samples=448)


def test_a_failing_controller_is_a_no_op_and_repeated_failures_enter_conservative_mode(trainer: Trainer) -> None:
    controller = Controller("raise")
    trainer.run.controller = controller  # type: ignore[assignment]
    for epoch in (1, 2):
        _, command, _ = trainer.decision_point(epoch, stats())
        assert command.command_type == CommandType.COMMAND_NOOP and "policy bug" in command.decision.rationale
    assert trainer.history.conservative_left == 2, "two failures in a row put the loop in conservative mode"
    for epoch in (3, 4):
        _, command, _ = trainer.decision_point(epoch, stats())
        assert "conservative mode" in command.decision.rationale
    assert controller.asked == 2, "in conservative mode the controller is not consulted"
    failures = [entry for entry in trainer.run.record.entries() if entry["kind"] == "failure"]
    assert [entry["conservative"] for entry in failures] == [False, True]


def test_a_late_decision_is_abandoned_as_a_no_op(trainer: Trainer) -> None:
    controller = Controller("block")
    trainer.run.controller = controller  # type: ignore[assignment]
    trainer.run.tolaria = attrs.evolve(trainer.run.tolaria, decision_timeout_s=0.05)
    _, command, _ = trainer.decision_point(1, stats())
    controller.release.set()
    assert command.command_type == CommandType.COMMAND_NOOP and "timed out" in command.decision.rationale
    assert trainer.history.failures == 1


@pytest.mark.parametrize(
    ("losses", "new", "problem"),
    [([], math.nan, "the training loss is nan"), ([0.5], 0.6, None), ([0.5], 10.0, "spiked to 10")],
)
def test_divergence(trainer: Trainer, losses: list[float], new: float, problem: str | None) -> None:
    trainer.history.train_losses = losses
    found = trainer._divergence(EpochStats(new, 0.0, 1.0, 1))
    assert found == problem if problem is None else problem in (found or "")


def test_a_checkpoint_brings_back_the_counters_and_where_each_sink_stood(trainer: Trainer) -> None:
    sink = RememberingSink()
    trainer.run.sinks.append(sink)
    trainer.decision_point(1, stats())
    trainer.history.epoch = 1
    trainer.checkpoint()
    kept = len(sink.packets)
    decisions = dict(trainer.recorder.decisions)
    trainer.decision_point(2, stats())  # the work a crash would lose
    assert len(sink.packets) > kept and trainer.recorder.decisions != decisions
    assert trainer.restore_latest() is not None
    assert len(sink.packets) == kept, "the resumed run will emit these again: the sink forgets them"
    assert trainer.recorder.decisions == decisions
    assert [entry["epoch"] for entry in trainer.run.record.entries() if entry["kind"] == "epoch"] == [1]


def test_the_time_a_run_was_down_is_not_running_time(tmp_path: Path) -> None:
    registry = Registry.create()
    config = registry.load_config(env={}, overrides=[*TINY, f"run.runs_dir={tmp_path}"])
    clock = FakeClock()
    trainer = Trainer(start_run(registry, config), clock=clock)
    try:
        clock.advance(5.0)  # five seconds of work
        trainer.checkpoint()
        clock.advance(3600.0)  # killed, and down for an hour
        trainer.restore_latest()
        clock.advance(2.0)  # two more seconds of work after the resume
        assert trainer.finish().wall_seconds == pytest.approx(7.0)
    finally:
        trainer.close()


def test_each_run_reads_the_bus_in_a_group_of_its_own_and_leaves_it_when_done(trainer: Trainer) -> None:
    """Runs sharing a Redis each receive every telemetry packet and policy update; a finished run's group goes."""
    bus = trainer.run.bus
    assert bus.group == f"tolaria-{trainer.run.run_id}"
    assert bus.streams.telemetry in bus.subscriptions
    trainer.finish()
    assert bus.subscriptions == []
