"""V-trace (Espeholt et al., 2018): value targets and advantages for experience gathered by an older policy.

Episodes in the replay store were decided by whatever policy was live when they ran. V-trace corrects for that with
truncated importance ratios of the learner's policy ``pi`` over the behaviour policy ``mu`` at each step,
``rho_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t))`` and ``c_t = min(c_bar, pi / mu)``:

    v_s = V(x_s) + sum_{t >= s} gamma^(t-s) (c_s ... c_{t-1}) rho_t delta_t,   delta_t = r_t + gamma V(x_{t+1}) - V(x_t)

computed backwards as ``v_s = V(x_s) + rho_s delta_s + gamma c_s (v_{s+1} - V(x_{s+1}))``. The policy-gradient
advantage is ``rho_s (r_s + gamma v_{s+1} - V(x_s))``. When ``pi = mu`` and ``rho_bar = c_bar = 1`` the targets are
the discounted returns to go (bootstrapped after the last step): on-policy data is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esper_simic.returns import discounted_backward, shifted

__all__ = ["vtrace"]


def vtrace(
    rewards: Sequence[float] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    behaviour_log_probs: Sequence[float] | torch.Tensor,
    target_log_probs: Sequence[float] | torch.Tensor,
    bootstrap: float = 0.0,
    gamma: float = 1.0,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace value targets ``v_s`` and policy-gradient advantages of one episode's steps (see the module)."""
    reward = torch.as_tensor(rewards, dtype=torch.float64)
    value = torch.as_tensor(values, dtype=torch.float64)
    log_ratio = torch.as_tensor(target_log_probs, dtype=torch.float64) - torch.as_tensor(
        behaviour_log_probs, dtype=torch.float64
    )
    if not (reward.shape == value.shape == log_ratio.shape) or reward.dim() != 1:
        raise ValueError("rewards, values and both log-probabilities must be equal 1-D sequences")
    if rho_bar <= 0 or c_bar <= 0:
        raise ValueError(f"rho_bar and c_bar must be positive, got {rho_bar} and {c_bar}")
    ratio = log_ratio.exp()
    rho = ratio.clamp(max=rho_bar)
    c = ratio.clamp(max=c_bar)
    delta = rho * (reward + gamma * shifted(value, bootstrap) - value)
    targets = value + discounted_backward(delta, gamma * c)  # v_s - V(x_s), accumulated backwards
    advantages = rho * (reward + gamma * shifted(targets, bootstrap) - value)
    return targets.float(), advantages.float()
