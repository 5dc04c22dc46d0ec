"""The built-in ``ppo`` trainer passes the Simic trainer conformance suite that third-party trainers run."""

from __future__ import annotations

import pytest

from esper_core.plugins import Registry
from esper_core.testing.conformance import SimicTrainerConformance
from esper_simic.options import TrainOptions
from esper_simic.trainer import PPOTrainer


class TestPPOTrainer(SimicTrainerConformance):
    @pytest.fixture
    def trainer(self) -> PPOTrainer:
        return PPOTrainer(TrainOptions(clone_epochs=10, iterations=3, minibatch=16))


def test_the_registry_builds_the_configured_trainer() -> None:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=["simic.train.iterations=7"])
    trainer = registry.build(registry.simic_trainer("ppo"), config=config)
    assert isinstance(trainer, PPOTrainer) and trainer.options.iterations == 7
