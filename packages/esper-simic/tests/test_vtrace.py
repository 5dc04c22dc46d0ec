"""V-trace against its definition, and on-policy data left as it is."""

from __future__ import annotations

import math

import pytest
import torch

from esper_simic.ppo import generalized_advantages
from esper_simic.vtrace import vtrace


def by_definition(
    rewards: list[float],
    values: list[float],
    mu: list[float],
    pi: list[float],
    bootstrap: float,
    gamma: float,
    rho_bar: float,
    c_bar: float,
) -> tuple[list[float], list[float]]:
    """v_s = V(x_s) + sum_t gamma^(t-s) (prod_{i<t} c_i) rho_t delta_t, summed term by term."""
    n = len(rewards)
    ratio = [math.exp(p - m) for p, m in zip(pi, mu, strict=True)]
    rho = [min(rho_bar, r) for r in ratio]
    c = [min(c_bar, r) for r in ratio]
    after = [*values[1:], bootstrap]
    targets = []
    for s in range(n):
        total = values[s]
        for t in range(s, n):
            trace = math.prod(c[s:t])
            total += gamma ** (t - s) * trace * rho[t] * (rewards[t] + gamma * after[t] - values[t])
        targets.append(total)
    following = [*targets[1:], bootstrap]
    advantages = [rho[s] * (rewards[s] + gamma * following[s] - values[s]) for s in range(n)]
    return targets, advantages


def test_vtrace_matches_its_definition_off_policy() -> None:
    torch.manual_seed(0)
    rewards = torch.randn(7).tolist()
    values = torch.randn(7).tolist()
    mu = torch.log_softmax(torch.randn(7, 3), dim=1)[:, 0].tolist()
    pi = torch.log_softmax(torch.randn(7, 3), dim=1)[:, 0].tolist()
    for rho_bar, c_bar in ((1.0, 1.0), (2.0, 0.5), (10.0, 10.0)):
        targets, advantages = vtrace(rewards, values, mu, pi, bootstrap=0.4, gamma=0.9, rho_bar=rho_bar, c_bar=c_bar)
        expected_targets, expected_advantages = by_definition(rewards, values, mu, pi, 0.4, 0.9, rho_bar, c_bar)
        assert targets.tolist() == pytest.approx(expected_targets, rel=1e-5, abs=1e-5)
        assert advantages.tolist() == pytest.approx(expected_advantages, rel=1e-5, abs=1e-5)


def test_on_policy_targets_are_the_returns_to_go() -> None:
    rewards, values = [1.0, 0.0, 2.0, 0.5], [0.3, -0.2, 0.8, 0.1]
    same = [-0.7, -1.2, -0.1, -2.0]
    targets, _ = vtrace(rewards, values, same, same, bootstrap=0.5, gamma=0.9)
    returns_to_go = [sum(0.9**k * r for k, r in enumerate(rewards[s:])) + 0.9 ** (4 - s) * 0.5 for s in range(4)]
    assert targets.tolist() == pytest.approx(returns_to_go, rel=1e-6)
    _, gae_targets = generalized_advantages(rewards, values, bootstrap=0.5, gamma=0.9, lam=1.0)
    assert targets.tolist() == pytest.approx(gae_targets.tolist(), rel=1e-6)  # GAE with lam = 1, the same thing


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="equal 1-D sequences"):
        vtrace([1.0], [0.0, 0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="must be positive"):
        vtrace([1.0], [0.0], [0.0], [0.0], rho_bar=0.0)
