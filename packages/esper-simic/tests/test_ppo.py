"""PPO as Simic runs it: advantages against a direct computation, learning an environment whose optimal policy is
known within a bound, and a non-finite loss that leaves the policy untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_simic.ppo import NonFiniteLoss, PPOOptions, Rollout, generalized_advantages, ppo_update
from esper_simic.scoring import Scorer, logits_scorer


def test_generalized_advantages_match_the_definition() -> None:
    rewards, values, gamma, lam = [1.0, 0.0, 2.0], [0.5, 0.4, 1.0], 0.9, 0.8
    deltas = [1.0 + 0.9 * 0.4 - 0.5, 0.0 + 0.9 * 1.0 - 0.4, 2.0 + 0.9 * 0.3 - 1.0]  # bootstrap 0.3 after the last
    expected = [
        deltas[0] + (gamma * lam) * deltas[1] + (gamma * lam) ** 2 * deltas[2],
        deltas[1] + (gamma * lam) * deltas[2],
        deltas[2],
    ]
    advantages, returns = generalized_advantages(rewards, values, bootstrap=0.3, gamma=gamma, lam=lam)
    assert advantages.tolist() == pytest.approx(expected)
    assert returns.tolist() == pytest.approx([a + v for a, v in zip(expected, values, strict=True)])
    # lam = 1, gamma = 1, an ended episode: the advantage is the return to go less the value
    advantages, _ = generalized_advantages([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], gamma=1.0, lam=1.0)
    assert advantages.tolist() == pytest.approx([6.0, 5.0, 3.0])
    with pytest.raises(ValueError, match="two equal 1-D sequences"):
        generalized_advantages([1.0], [0.0, 0.0])


class Tiny(nn.Module):
    def __init__(self, states: int, actions: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(states, 16), nn.Tanh())
        self.policy = nn.Linear(16, actions)
        self.value = nn.Linear(16, 1)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(observations)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


STATES, ACTIONS, LENGTH = 4, 3, 6


def best_action(state: int) -> int:
    return (2 * state + 1) % ACTIONS


def collect(
    model: Tiny, episodes: int, generator: torch.Generator, gamma: float, lam: float
) -> tuple[Rollout, Scorer, float]:
    """Episodes of a contextual chain: each step shows a random state; only the state's best action earns 1, and
    every earning is paid at the episode's end (so credit has to flow back through the advantages)."""
    observations, actions, log_probs, advantages, returns = [], [], [], [], []
    total = 0.0
    for _ in range(episodes):
        states = torch.randint(STATES, (LENGTH,), generator=generator)
        seen = nn.functional.one_hot(states, STATES).float()
        with torch.no_grad():
            logits, values = model(seen)
            distribution = torch.distributions.Categorical(logits=logits)
            chosen = torch.multinomial(distribution.probs, 1, generator=generator).squeeze(-1)
        earned = sum(int(a) == best_action(int(s)) for a, s in zip(chosen, states, strict=True))
        rewards = [0.0] * (LENGTH - 1) + [float(earned)]
        advantage, target = generalized_advantages(rewards, values, gamma=gamma, lam=lam)
        observations.append(seen)
        actions.append(chosen)
        log_probs.append(distribution.log_prob(chosen))
        advantages.append(advantage)
        returns.append(target)
        total += earned
    rollout = Rollout(torch.cat(log_probs), torch.cat(advantages), torch.cat(returns))
    return rollout, logits_scorer(model, torch.cat(observations), torch.cat(actions)), total / episodes


def test_ppo_learns_the_known_optimal_policy_within_a_bound() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Tiny(STATES, ACTIONS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    options = PPOOptions(minibatch=64, epochs=4, gamma=1.0, lam=0.95)
    returns = []
    for _ in range(40):  # the bound: 40 iterations of 32 episodes
        rollout, score, mean_return = collect(model, 32, generator, options.gamma, options.lam)
        returns.append(mean_return)
        stats = ppo_update(model, optimizer, rollout, options, generator, score)
        assert stats.approx_kl >= -1e-6 and 0.0 <= stats.clip_fraction <= 1.0
    with torch.no_grad():
        logits, _ = model(torch.eye(STATES))
    assert logits.argmax(dim=1).tolist() == [best_action(s) for s in range(STATES)]
    assert returns[0] < 0.5 * LENGTH  # it started near chance (a third of the steps)
    assert sum(returns[-5:]) / 5 >= 0.9 * LENGTH  # and ends near the optimum of 6


def test_a_non_finite_loss_leaves_the_policy_and_optimizer_as_they_were() -> None:
    torch.manual_seed(1)
    model = Tiny(STATES, ACTIONS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(1)
    rollout, score, _ = collect(model, 4, generator, 1.0, 0.95)
    ppo_update(model, optimizer, rollout, PPOOptions(epochs=1), generator, score)  # the optimizer now has state
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    steps = [state["step"].clone() for state in optimizer.state.values()]
    poisoned = Rollout(
        rollout.log_probs, rollout.advantages, torch.cat([rollout.returns[:-1], torch.tensor([float("nan")])])
    )
    with pytest.raises(NonFiniteLoss, match="as they were before this update"):
        ppo_update(model, optimizer, poisoned, PPOOptions(epochs=2, minibatch=4), generator, score)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [state["step"] for state in optimizer.state.values()] == steps
