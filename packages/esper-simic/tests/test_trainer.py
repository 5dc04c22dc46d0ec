"""Simic's trainer on real episodes of the training ground: it re-encodes them with the policy Tamiyo serves,
clones the heuristic, improves with PPO, is deterministic given its seed, resumes exactly from its checkpoint, and
stops on a non-finite loss with the last good weights."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
import torch

from esper_core.plugins import Registry
from esper_core.protocols import DecisionEpisode
from esper_simic.collect import collect
from esper_simic.ground import GroundOptions, heuristic_exploration, plan
from esper_simic.options import TrainOptions
from esper_simic.trainer import UnusableEpisode, prepare, train
from esper_simic.workbench import Workbench, open_workbench

pytestmark = pytest.mark.slow

QUICK = GroundOptions(families=["synthetic-mlp"], widths=[3, 4], blocks=[1, 2], epochs=[6, 7], samples=512)
FAST = TrainOptions(clone_epochs=3, iterations=3, minibatch=32, ppo_epochs=2)


@pytest.fixture(scope="module")
def workbench(tmp_path_factory: pytest.TempPathFactory) -> Workbench:
    workspace = tmp_path_factory.mktemp("simic")
    return open_workbench(Registry.create(env={}), None, [f"simic.workspace={workspace}"])


@pytest.fixture(scope="module")
def episodes(workbench: Workbench) -> list[DecisionEpisode]:
    with workbench.replay() as store:
        summary = collect(plan(QUICK, seed=0, count=4), heuristic_exploration, store, workbench.workspace / "runs")
        assert not summary.failed
        return [
            prepare(episode, workbench.policy_under(episode.outcome["budget"]), workbench.catalog)
            for episode in store.episodes()
        ]


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_heuristic_decisions_are_re_encoded_as_demonstrations(episodes: list[DecisionEpisode]) -> None:
    steps = [step for episode in episodes for step in episode.steps]
    assert len(steps) >= 4 * 6 and all(step.demonstrated and step.behaviour_log_prob == 0.0 for step in steps)
    assert any(step.action.operation != 0 for step in steps), "the heuristic grew somewhere"
    assert math.isclose(sum(s.reward for s in steps), sum(sum(s.reward for s in e.steps) for e in episodes))


def test_cloning_then_ppo_makes_the_heuristics_decisions_likely(
    workbench: Workbench, episodes: list[DecisionEpisode]
) -> None:
    result = train(workbench.policy, episodes, attrs.evolve(FAST, clone_epochs=40))
    clone = [row for row in result.curves if row["phase"] == 0.0]
    assert clone[-1]["clone_loss"] < clone[0]["clone_loss"] / 3
    assert clone[0]["likelihood"] < 0.3 and clone[-1]["likelihood"] > 0.75  # geometric mean over the decisions
    assert clone[-1]["agreement"] > 0.9
    ppo = [row for row in result.curves if row["phase"] == 1.0]
    assert len(ppo) == 3 and all(math.isfinite(row["value_loss"]) and row["approx_kl"] >= -1e-6 for row in ppo)
    assert result.stopped is None


def test_training_is_deterministic_given_its_seed(workbench: Workbench, episodes: list[DecisionEpisode]) -> None:
    first = train(workbench.policy, episodes, FAST).state_dict
    assert weights_equal(first, train(workbench.policy, episodes, FAST).state_dict)
    assert not weights_equal(first, train(workbench.policy, episodes, attrs.evolve(FAST, seed=1)).state_dict)


def test_a_killed_training_resumes_exactly_from_its_checkpoint(
    workbench: Workbench, episodes: list[DecisionEpisode], tmp_path: Path
) -> None:
    whole = train(workbench.policy, episodes, FAST)
    checkpoint = tmp_path / "checkpoint.pt"
    train(workbench.policy, episodes, attrs.evolve(FAST, iterations=1), checkpoint=checkpoint)  # "killed" here
    resumed = train(workbench.policy, episodes, FAST, checkpoint=checkpoint)
    assert weights_equal(whole.state_dict, resumed.state_dict) and resumed.curves == whole.curves


def test_a_non_finite_loss_stops_training_with_the_last_good_weights(
    workbench: Workbench, episodes: list[DecisionEpisode]
) -> None:
    poisoned = [*episodes[:-1], attrs.evolve(episodes[-1], steps=tuple(
        attrs.evolve(step, reward=float("nan")) for step in episodes[-1].steps
    ))]  # fmt: skip
    result = train(workbench.policy, poisoned, FAST)
    assert result.stopped is not None and "last good weights" in result.stopped
    assert all(torch.isfinite(tensor).all() for tensor in result.state_dict.values())


def test_an_episode_the_policy_cannot_encode_is_refused_with_where(workbench: Workbench) -> None:
    with workbench.replay() as store:
        episode = store.episodes()[0]
    broken = attrs.evolve(episode, steps=({**episode.steps[0], "packet": "not base64!"},))
    with pytest.raises(UnusableEpisode, match=f"episode {episode.episode_id}, decision point 0"):
        prepare(broken, workbench.policy, workbench.catalog)
    no_offer = dict(episode.steps[0])
    with pytest.raises(UnusableEpisode, match="not in the catalogs"):
        prepare(attrs.evolve(episode, steps=(no_offer,)), workbench.policy, {})


def test_a_damaged_replay_store_trains_on_what_survives_and_says_where(
    workbench: Workbench, episodes: list[DecisionEpisode], tmp_path: Path
) -> None:
    import shutil

    from esper_simic.rounds import train_candidate

    with workbench.replay() as store:
        kept = len(store.episodes())
    copy = tmp_path / "simic"
    shutil.copytree(workbench.workspace / "replay", copy / "replay")
    log = copy / "replay" / "episodes.log"
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside one episode's record
    log.write_bytes(bytes(data))
    damaged = open_workbench(Registry.create(env={}), None, [f"simic.workspace={copy}", "simic.train.clone_epochs=2",
                                                           "simic.train.iterations=1"])  # fmt: skip
    summary = train_candidate(damaged, "after-damage")
    assert str(log) in summary["replay_damage"] and "damaged from byte" in summary["replay_damage"]
    assert summary["episodes"] == kept - 1 and (copy / "candidates" / "after-damage" / "candidate.update").exists()
