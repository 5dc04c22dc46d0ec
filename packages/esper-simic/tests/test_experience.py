"""Episodes from run directories: every decision point with its exact packet and command, the field reports that
judged it, rewards as documented, and clear errors for records that cannot give one."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_core.leyline import AdaptationCommand, SystemStatePacket
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import decode_message, read_record
from esper_core.tolaria.trainer import Trainer
from esper_simic.experience import RunDamaged, episode_from_run, rewards_of
from esper_simic.replay import ReplayStore
from esper_simic.rewards import Progress, RewardWeights, rewards

from tolaria_runs import BASE

pytestmark = pytest.mark.slow

OVERRIDES = [
    *BASE,  # the synthetic task, quick and with lenient budgets, as the Tolaria run tests use it
    "run.epochs=5",
    "nissa.report.automatic=false",
    "kasmina.max_regression=1e9",
    "tamiyo.policy=fixed-schedule",
    "tamiyo.fixed-schedule.germinations=[{epoch = 1}]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*OVERRIDES, f"run.runs_dir={root}", "run.name=grown"])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return root / "grown"


def test_every_decision_point_becomes_a_step_with_its_exact_packet_and_command(run_dir: Path) -> None:
    found = episode_from_run(run_dir, "digest-1")
    record = read_record(run_dir)
    decisions = [e for e in record if e["kind"] == "decision"]
    steps = found.episode.steps
    assert found.finished and found.damage is None
    assert [s["command_id"] for s in steps] == [d["command_id"] for d in decisions]
    packet = decode_message(steps[1]["packet"], SystemStatePacket)
    command = decode_message(steps[1]["command"], AdaptationCommand)
    assert packet.current_epoch == steps[1]["epoch"] and len(packet.seeds) >= 1
    assert command.command_id == steps[1]["command_id"]
    germinated = next(s for s in steps if s["operation"] == "germinate")
    assert germinated["field_reports"], "the germination's field report is attached to its step"
    assert found.episode.schema_digest == "digest-1"


def test_rewards_add_up_to_the_accuracy_gained_less_the_costs(run_dir: Path) -> None:
    found = episode_from_run(run_dir, "digest-1", RewardWeights(parameter_cost=0.0, compute_cost=0.0))
    steps, outcome = found.episode.steps, found.episode.outcome
    assert sum(s["reward"] for s in steps) == pytest.approx(outcome["val_accuracy"] - steps[0]["val_accuracy"])
    charged = episode_from_run(run_dir, "digest-1", RewardWeights(parameter_cost=1.0, compute_cost=0.0))
    grown = (outcome["parameters"] - steps[0]["parameters"]) / outcome["host_parameters"]
    assert grown > 0
    assert charged.episode.outcome["return"] == pytest.approx(outcome["return"] - grown)
    # A learner recharges an episode with the weights it is configured with, from what the episode keeps.
    assert rewards_of(found.episode, RewardWeights(parameter_cost=1.0, compute_cost=0.0)) == pytest.approx(
        [step["reward"] for step in charged.episode.steps]
    )


def test_an_episode_goes_into_the_replay_store(run_dir: Path, tmp_path: Path) -> None:
    with ReplayStore(tmp_path, "digest-1") as store:
        store.add(episode_from_run(run_dir, "digest-1").episode)
    assert len(ReplayStore(tmp_path, "digest-1").episodes()[0].steps) == 5


def test_a_damaged_record_is_read_around_the_damage_and_says_where(run_dir: Path, tmp_path: Path) -> None:
    data = bytearray((run_dir / "record.log").read_bytes())
    data[len(data) - 40] ^= 0xFF  # inside run_finished
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "record.log").write_bytes(bytes(data))
    found = episode_from_run(damaged, "digest-1")
    assert not found.finished and found.damage is not None
    assert str(damaged / "record.log") in found.damage and "damaged from byte" in found.damage
    with pytest.raises(RunDamaged, match="no run record here"):
        episode_from_run(tmp_path / "nowhere", "digest-1")


def test_the_reward_function_on_hand_made_numbers() -> None:
    points = [Progress(1, 0.50, 100, 10), Progress(2, 0.60, 150, 30), Progress(3, 0.62, 150, 40)]
    # host epoch 10 FLOPs: the second interval spends exactly a bare epoch, the first one 2 epochs' extra
    assert rewards(points, 100, 10.0, RewardWeights(parameter_cost=0.1, compute_cost=0.01)) == pytest.approx(
        [0.10 - 0.1 * 0.5 - 0.01 * 1.0, 0.02]
    )
    with pytest.raises(ValueError, match="host_parameters must be positive"):
        rewards(points, 0, 10.0)
