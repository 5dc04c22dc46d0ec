"""Every Simic trainer returns weights the policy loads, learns what its rewards say, and never harms what is live.

Subclass :class:`SimicTrainerConformance` and provide a ``trainer`` fixture. The suite trains it on small episodes of
Tamiyo's ``learned`` policy (built through the registry; override the ``policy`` and ``episodes`` fixtures to use
another trainable policy) and checks what ``esper simic`` relies on:

- the weights it returns load into the policy through a ``PolicyUpdate`` (same architecture, finite values);
- the live network is not trained in place;
- the same inputs give the same weights;
- no episodes is a ``ValueError`` that says so, not an empty or untouched result passed off as trained;
- rewards that are not finite stop training with ``stopped`` saying why, and finite weights;
- it learns: where germinating earned a reward and waiting earned none, germinating becomes more likely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from esper_core.leyline import (
    AdaptationCommand,
    BlendSchedule,
    BlueprintDescriptor,
    CommandSeedOperation,
    CommandType,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    growth,
    lifecycle,
)
from esper_core.protocols import DecisionEpisode, DecisionStep, SimicTrainer, SlotShape, TrainablePolicy

SLOT = "layers.0"
SHAPE = (16,)


def _packet(epoch: int) -> SystemStatePacket:
    metrics = TrainingMetrics(epoch=epoch, epochs_total=8, parameter_count=20_000, val_accuracy=0.5 + 0.01 * epoch,
                              val_loss=1.0 - 0.02 * epoch, train_loss=1.0 - 0.02 * epoch)  # fmt: skip
    seed = SeedState(slot_id=SLOT, stage=lifecycle.DORMANT, slot_kind=SlotKind.SLOT_KIND_VECTOR, slot_shape=SHAPE)
    return SystemStatePacket(current_epoch=epoch, training_run_id="conformance", metrics=metrics, seeds=[seed])


def _germinate(blueprint: BlueprintDescriptor) -> AdaptationCommand:
    operation = CommandSeedOperation(
        operation=SeedOperation.SEED_OP_GERMINATE,
        blueprint_id=blueprint.blueprint_id,
        blend_schedule=BlendSchedule.BLEND_SCHEDULE_LINEAR,
    )
    for name in sorted(blueprint.allowed_parameters):
        operation.parameters[name] = blueprint.allowed_parameters[name].default_value
    return AdaptationCommand(command_type=CommandType.COMMAND_SEED, target_slot_id=SLOT, seed_operation=operation)


class SimicTrainerConformance:
    """Subclasses provide a ``trainer`` fixture (a fresh :class:`~esper_core.protocols.SimicTrainer`)."""

    @pytest.fixture
    def policy(self) -> TrainablePolicy:
        """Tamiyo's ``learned`` policy, as ``esper simic`` builds it."""
        from esper_core.plugins import Registry

        registry = Registry.create(env={})
        config = registry.load_config(env={})
        built = registry.build(registry.policy("learned"), config=config)
        assert isinstance(built, TrainablePolicy)
        return built

    @pytest.fixture
    def blueprints(self) -> list[BlueprintDescriptor]:
        """The built-in catalog's blueprints that fit the episodes' slot."""
        from esper_core.plugins import Registry

        registry = Registry.create(env={})
        catalog = registry.build(registry.blueprint_catalog("karn"), config=registry.load_config(env={}))
        shape = SlotShape(SlotKind.SLOT_KIND_VECTOR, SHAPE)
        return [d for d in catalog.descriptors() if growth.misfit(d, shape) is None][:4]

    @pytest.fixture
    def episodes(self, policy: TrainablePolicy, blueprints: Sequence[BlueprintDescriptor]) -> list[DecisionEpisode]:
        """Eight episodes of four decision points: germinating at the second earns 1, waiting earns nothing."""
        chosen = blueprints[0]
        made = []
        for number in range(8):
            steps = []
            for epoch in range(1, 5):
                encoded = policy.encode(_packet(epoch), blueprints)
                germinate = epoch == 2 and number % 2 == 0
                command = _germinate(chosen) if germinate else AdaptationCommand(command_type=CommandType.COMMAND_NOOP)
                action = policy.action_from_command(command, encoded)
                steps.append(DecisionStep(encoded, action, 0.0, 1.0 if germinate else 0.0, True))
            made.append(DecisionEpisode(f"conformance-{number}", tuple(steps)))
        return made

    @staticmethod
    def _network(policy: TrainablePolicy, state_dict: Any) -> torch.nn.Module:
        network = policy.new_network()
        network.load_state_dict(state_dict)
        return network

    def test_the_trainer_satisfies_the_protocol(self, trainer: SimicTrainer) -> None:
        assert isinstance(trainer, SimicTrainer) and isinstance(trainer.name, str) and trainer.name

    def test_its_weights_load_into_the_policy_through_an_update(
        self, trainer: SimicTrainer, policy: TrainablePolicy, episodes: list[DecisionEpisode]
    ) -> None:
        outcome = trainer.train(policy, episodes)
        assert outcome.stopped is None, outcome.stopped
        assert all(torch.isfinite(tensor).all() for tensor in outcome.state_dict.values())
        update = policy.export_update(policy_version="conformance", state_dict=outcome.state_dict)
        verdict = policy.load_update(update)
        assert verdict.accepted, f"{verdict.reason}: {verdict.detail}"
        assert all(isinstance(row, dict) and all(math.isfinite(v) for v in row.values()) for row in outcome.curves)

    def test_the_live_network_is_not_trained_in_place(
        self, trainer: SimicTrainer, policy: TrainablePolicy, episodes: list[DecisionEpisode]
    ) -> None:
        live = policy.clone_network()
        trainer.train(policy, episodes)
        after = policy.clone_network().state_dict()
        assert all(torch.equal(tensor, after[name]) for name, tensor in live.state_dict().items())

    def test_the_same_inputs_give_the_same_weights(
        self, trainer: SimicTrainer, policy: TrainablePolicy, episodes: list[DecisionEpisode]
    ) -> None:
        first = trainer.train(policy, episodes).state_dict
        second = trainer.train(policy, episodes).state_dict
        assert all(torch.equal(tensor, second[name]) for name, tensor in first.items())

    def test_no_episodes_is_an_error_that_says_so(self, trainer: SimicTrainer, policy: TrainablePolicy) -> None:
        with pytest.raises(ValueError, match="nothing to train on"):
            trainer.train(policy, [])

    def test_rewards_that_are_not_finite_stop_it_with_finite_weights(
        self, trainer: SimicTrainer, policy: TrainablePolicy, episodes: list[DecisionEpisode]
    ) -> None:
        poisoned = [
            DecisionEpisode(
                e.episode_id, tuple(DecisionStep(s.encoded, s.action, 0.0, math.nan, True) for s in e.steps)
            )
            for e in episodes
        ]
        outcome = trainer.train(policy, poisoned)
        assert outcome.stopped, "a non-finite reward must stop training and say so"
        assert all(torch.isfinite(tensor).all() for tensor in outcome.state_dict.values())

    def test_it_learns_where_germinating_paid(
        self, trainer: SimicTrainer, policy: TrainablePolicy, episodes: list[DecisionEpisode]
    ) -> None:
        germination = next(step for step in episodes[0].steps if step.reward > 0)
        batch = policy.collate([germination.encoded])

        def probability(network: torch.nn.Module) -> float:
            with torch.no_grad():
                log_prob, _value, _entropy = policy.evaluate_actions(batch, [germination.action], network)
            return float(log_prob.exp()[0])

        before = probability(policy.clone_network())
        after = probability(self._network(policy, trainer.train(policy, episodes).state_dict))
        assert after > before + 0.05, f"germinating where it paid went from p={before:.3f} to p={after:.3f}"
