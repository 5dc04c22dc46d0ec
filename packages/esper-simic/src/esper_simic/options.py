"""Options of Simic's trainer, apart from the trainer so that Esper reads the configuration without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative, open_fraction, positive

if TYPE_CHECKING:
    from esper_simic.ppo import PPOOptions

__all__ = ["TrainOptions"]


@section("simic.train")
@attrs.frozen
class TrainOptions:
    """How ``esper simic train`` trains (docs/simic.md)."""

    #: Seeds the minibatch order: the same episodes and options give the same weights.
    seed: int = 0
    #: Start from the live policy's weights (``"live"``) or from a fresh, untrained network (``"fresh"``).
    start: Literal["live", "fresh"] = "live"
    #: Passes of behaviour cloning over the demonstrated decisions before PPO (0: none).
    clone_epochs: int = attrs.field(default=60, validator=not_negative)
    #: PPO iterations (each re-scores every step, then ``ppo_epochs`` passes of minibatches).
    iterations: int = attrs.field(default=20, validator=not_negative)
    #: Adam's step size while cloning...
    learning_rate: float = attrs.field(default=3e-3, validator=positive)
    #: ...and during PPO (smaller: PPO's updates must stay near the policy that scored the rollout).
    ppo_learning_rate: float = attrs.field(default=3e-4, validator=positive)
    #: PPO stops an update's epochs once the approximate KL passes 1.5 x this (0: never).
    target_kl: float = attrs.field(default=0.02, validator=not_negative)
    minibatch: int = attrs.field(default=64, validator=at_least(1))
    ppo_epochs: int = attrs.field(default=4, validator=at_least(1))
    clip: float = attrs.field(default=0.2, validator=open_fraction)
    value_coef: float = attrs.field(default=0.5, validator=not_negative)
    entropy_coef: float = attrs.field(default=0.01, validator=not_negative)
    max_grad_norm: float = attrs.field(default=0.5, validator=positive)
    #: Discount over decision points (1: the run's final accuracy counts as much as the next epoch's).
    gamma: float = attrs.field(default=1.0, validator=not_negative)
    #: V-trace's truncation of the importance ratios (Espeholt et al., 2018).
    rho_bar: float = attrs.field(default=1.0, validator=positive)
    c_bar: float = attrs.field(default=1.0, validator=positive)
    #: Scale of the rewards for the value loss (validation accuracy fractions are small numbers).
    reward_scale: float = attrs.field(default=10.0, validator=positive)

    def ppo(self) -> PPOOptions:
        from esper_simic.ppo import PPOOptions

        return PPOOptions(
            clip=self.clip,
            value_coef=self.value_coef,
            entropy_coef=self.entropy_coef,
            epochs=self.ppo_epochs,
            minibatch=self.minibatch,
            max_grad_norm=self.max_grad_norm,
            gamma=self.gamma,
            target_kl=self.target_kl,
        )
