"""Proximal policy optimisation over episodes of decisions: generalised advantages and the clipped update.

Independent of what the policy looks at: the update asks a :data:`~esper_simic.scoring.Scorer` for the log-probability
of each recorded action, the value and the entropy, so the same update trains Tamiyo's learned policy (factored, masked
action heads over encoded state packets) and, in the tests, a small network on an environment whose optimal policy is
known.

- :func:`generalized_advantages` (Schulman et al., 2016): ``A_t = sum_k (gamma lam)^k delta_{t+k}`` with
  ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, over one episode, bootstrapped with the value after its last step
  (0 for an episode that ended); the value targets are ``A_t + V(s_t)``.
- :func:`ppo_update` (Schulman et al., 2017): a few epochs of minibatches of the clipped surrogate
  ``min(rho A, clip(rho, 1 - eps, 1 + eps) A)``, a value loss and an entropy bonus, with normalised advantages and
  clipped gradient norms, stopping early once the approximate KL from the rollout's policy passes 1.5 x
  ``target_kl`` (the clip alone does not stop a shared network from drifting far in many small steps). A non-finite
  loss raises :class:`NonFiniteLoss` with the model and the optimizer restored
  to where the update found them: the last good state is what a caller keeps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import attrs
import torch
from torch import nn

from esper_core.config.validators import at_least, not_negative, open_fraction, positive
from esper_simic.returns import discounted_backward, shifted
from esper_simic.scoring import Scorer

__all__ = [
    "NonFiniteLoss",
    "PPOOptions",
    "Rollout",
    "UpdateStats",
    "generalized_advantages",
    "ppo_update",
]


class NonFiniteLoss(FloatingPointError):
    """The update's loss was NaN or infinite: nothing was changed."""


@attrs.frozen
class PPOOptions:
    clip: float = attrs.field(default=0.2, validator=open_fraction)
    value_coef: float = attrs.field(default=0.5, validator=not_negative)
    entropy_coef: float = attrs.field(default=0.01, validator=not_negative)
    epochs: int = attrs.field(default=4, validator=at_least(1))
    minibatch: int = attrs.field(default=64, validator=at_least(1))
    max_grad_norm: float = attrs.field(default=0.5, validator=positive)
    gamma: float = attrs.field(default=1.0, validator=not_negative)
    lam: float = attrs.field(default=0.95, validator=not_negative)
    #: Stop the epochs of an update once the approximate KL from the rollout's policy exceeds 1.5 x this (0: never).
    target_kl: float = attrs.field(default=0.02, validator=not_negative)


@attrs.frozen
class Rollout:
    """Steps gathered by the behaviour policy, flattened over episodes (the scorer holds what each step observed)."""

    #: The policy's log-probability of each recorded action before this update (the ratio's denominator).
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@attrs.frozen
class UpdateStats:
    policy_loss: float
    value_loss: float
    entropy: float
    #: Mean of ``(rho - 1) - log rho`` (an unbiased estimate of KL(old || new)) over the last epoch.
    approx_kl: float
    #: Share of samples whose ratio was clipped in the last epoch.
    clip_fraction: float
    #: Epochs run (fewer than ``PPOOptions.epochs`` when the KL passed 1.5 x ``target_kl``).
    epochs: int = 0


def generalized_advantages(
    rewards: Sequence[float] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    bootstrap: float = 0.0,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets of one episode's steps (see the module)."""
    reward = torch.as_tensor(rewards, dtype=torch.float64)
    value = torch.as_tensor(values, dtype=torch.float64)
    if reward.shape != value.shape or reward.dim() != 1:
        raise ValueError(f"rewards and values must be two equal 1-D sequences, got {tuple(reward.shape)} and "
                         f"{tuple(value.shape)}")  # fmt: skip
    delta = reward + gamma * shifted(value, bootstrap) - value
    advantages = discounted_backward(delta, gamma * lam)
    return advantages.float(), (advantages + value).float()


def ppo_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    options: PPOOptions,
    generator: torch.Generator,
    score: Scorer,
) -> UpdateStats:
    """Improve ``model`` on ``rollout`` (see the module), scoring minibatches with ``score``; minibatch order comes from
    ``generator``."""
    size = len(rollout.log_probs)
    if size == 0:
        raise ValueError("a PPO update needs at least one step")
    advantages = rollout.advantages
    if size > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    totals = {"policy": 0.0, "value": 0.0, "entropy": 0.0}
    batches = 0
    kl = clipped = 0.0
    epochs_run = 0
    for _ in range(options.epochs):
        order = torch.randperm(size, generator=generator)
        kl_sum = clipped_count = 0.0
        for start in range(0, size, options.minibatch):
            index = order[start : start + options.minibatch]
            log_prob, values, entropies = score(index)
            log_ratio = log_prob - rollout.log_probs[index]
            # Bounded before exp: a ratio of e^20 is clipped like any other, and exp never overflows to inf.
            ratio = log_ratio.clamp(max=20.0).exp()
            advantage = advantages[index]
            surrogate = torch.min(ratio * advantage, ratio.clamp(1 - options.clip, 1 + options.clip) * advantage)
            policy_loss = -surrogate.mean()
            value_loss = (values - rollout.returns[index]).pow(2).mean()
            entropy = entropies.mean()
            loss = policy_loss + options.value_coef * value_loss - options.entropy_coef * entropy
            if not torch.isfinite(loss):
                model.load_state_dict(saved[0])
                optimizer.load_state_dict(saved[1])
                raise NonFiniteLoss(
                    f"the PPO loss is not finite (policy {float(policy_loss.detach())}, value "
                    f"{float(value_loss.detach())}): "
                    "the policy and the optimizer are as they were before this update"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            optimizer.step()
            totals["policy"] += float(policy_loss.detach())
            totals["value"] += float(value_loss.detach())
            totals["entropy"] += float(entropy.detach())
            batches += 1
            with torch.no_grad():
                kl_sum += float(((ratio - 1) - log_ratio).sum())
                clipped_count += float(((ratio - 1).abs() > options.clip).sum())
        epochs_run += 1
        kl, clipped = kl_sum / size, clipped_count / size
        if options.target_kl and kl > 1.5 * options.target_kl:
            break  # the policy moved far enough from the one that scored the rollout: stop before it moves further
    return UpdateStats(
        policy_loss=totals["policy"] / batches,
        value_loss=totals["value"] / batches,
        entropy=totals["entropy"] / batches,
        approx_kl=kl if math.isfinite(kl) else float("nan"),
        clip_fraction=clipped,
        epochs=epochs_run,
    )
