"""Tolaria's trainer, piece by piece, on a tiny synthetic run: the controller under a timeout and conservative mode,
divergence, what a checkpoint brings back (counters, sinks, clocks), and the run's counted compute."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.flops import count_training_step
from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    SeedOperation,
    SystemStatePacket,
    TelemetryPacket,
)
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


# -- compute ------------------------------------------------------------------------------------------------------
#: The TINY host (16 -> 8 -> 4) per sample, a multiply-add being 2 FLOPs: forward 2 (16*8 + 8*4); backward the first
#: layer's weight gradient (the input needs none) and the head's input and weight gradients.
HOST_FORWARD = 2 * (16 * 8 + 8 * 4)
HOST_STEP = HOST_FORWARD + 2 * 16 * 8 + 2 * 2 * 8 * 4


def seed_command(trainer: Trainer, operation: SeedOperation.ValueType, blueprint: str = "") -> CommandResult:
    parameters = {"hidden_multiple": 1.0} if blueprint else {}
    command = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="layers.0",
        seed_operation=CommandSeedOperation(operation=operation, blueprint_id=blueprint, parameters=parameters),
    )
    result = trainer.run.executor.apply(trainer.signer.sign(command))
    assert result.status == CommandStatus.COMMAND_STATUS_APPLIED, result.detail
    return result


def test_training_compute_is_counted_once_and_multiplied_by_the_samples(
    trainer: Trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = []

    def counting(*args: Any) -> Any:
        counts.append(args)
        return count_training_step(*args)

    monkeypatch.setattr("esper_core.tolaria.trainer.count_training_step", counting)
    samples = len(trainer.run.data.train[0])  # 461: the last batch of 64 is partial, and counts its own samples
    first = trainer.train_epoch(1)
    trainer.decision_point(1, first)
    second = trainer.train_epoch(2)
    assert first.training_flops == second.training_flops == HOST_STEP * samples
    assert trainer.history.training_flops == 2 * HOST_STEP * samples
    assert len(counts) == 1, "nothing changed what a step computes: one count, not one per epoch or batch"


def test_a_decision_point_counts_its_validation_pass(trainer: Trainer) -> None:
    trainer.decision_point(1, stats())
    assert trainer.history.validation_flops == HOST_FORWARD * len(trainer.run.data.val[0])
    assert trainer.history.measurement_flops == 0  # no seed to measure
    (entry,) = [e for e in trainer.run.record.entries() if e["kind"] == "epoch"]
    assert entry["validation_flops"] == trainer.history.validation_flops == entry["total_flops"]


def test_a_seed_in_the_forward_pass_raises_the_step_count_and_a_cull_lowers_it(trainer: Trainer) -> None:
    assert trainer.training_flops_per_sample() == HOST_STEP
    seed_command(trainer, SeedOperation.SEED_OP_GERMINATE, "BP052")  # 8 -> 8 -> 8, not in the forward pass yet
    trainer.refresh_step_cost()
    assert trainer.training_flops_per_sample() == HOST_STEP
    seed_command(trainer, SeedOperation.SEED_OP_START_TRAINING)
    trainer.refresh_step_cost()
    # TRAINING: the seed's forward 2 (8*8 + 8*8); backward its two weight gradients and its second layer's input
    # gradient (it reads a detached activation), 2*8*8 each.
    assert trainer.training_flops_per_sample() == HOST_STEP + 256 + 3 * 128
    seed_command(trainer, SeedOperation.SEED_OP_CULL)
    trainer.refresh_step_cost()
    assert trainer.training_flops_per_sample() == HOST_STEP


def test_compute_totals_survive_a_checkpoint(trainer: Trainer) -> None:
    stats = trainer.train_epoch(1)
    trainer.decision_point(1, stats)
    trainer.history.epoch = 1
    trainer.checkpoint()
    saved = attrs.asdict(trainer.history)
    trainer.decision_point(2, trainer.train_epoch(2))  # the work a crash would lose
    assert trainer.history.total_flops > saved["training_flops"] + saved["validation_flops"]
    assert trainer.restore_latest() is not None
    restored = attrs.asdict(trainer.history)
    for name in ("training_flops", "validation_flops", "measurement_flops"):
        assert restored[name] == saved[name], name
    assert saved["training_flops"] > 0 and saved["validation_flops"] > 0
    summary = trainer.finish()  # adds the final validation and test passes, and keeps the parts' sum
    assert summary.training_flops == saved["training_flops"]
    assert summary.total_flops == summary.training_flops + summary.validation_flops + summary.measurement_flops
    assert summary.validation_flops > saved["validation_flops"]
