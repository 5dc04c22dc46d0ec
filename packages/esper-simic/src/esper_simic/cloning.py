"""Behaviour cloning: the warm start that makes a fresh policy decide like the heuristic before PPO improves on it.

A policy that starts from random weights decides at random, and episodes of random growth teach little. Cloning fits
the policy's action distribution to the heuristic's decisions (cross-entropy over the actions it took) on the same
observations the learner will see, so PPO starts from a policy as good as the heuristic. Like :mod:`esper_simic.ppo`
it works on any module mapping observations to action logits and values; a non-finite loss raises
:class:`~esper_simic.ppo.NonFiniteLoss` with the model and the optimizer restored.
"""

from __future__ import annotations

import copy

import attrs
import torch
from torch import nn

from esper_simic.ppo import NonFiniteLoss

__all__ = ["CloningStats", "clone_behaviour"]


@attrs.frozen
class CloningStats:
    loss: float
    #: Share of the observations on which the policy's most likely action is the one demonstrated, after the update.
    agreement: float


def clone_behaviour(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    observations: torch.Tensor,
    actions: torch.Tensor,
    *,
    epochs: int = 1,
    minibatch: int = 64,
    generator: torch.Generator,
) -> CloningStats:
    """``epochs`` passes of cross-entropy between the policy's logits and the demonstrated ``actions``."""
    size = len(actions)
    if size == 0 or len(observations) != size:
        raise ValueError(f"cloning needs as many observations as actions, and some: got {len(observations)}, {size}")
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    total = 0.0
    batches = 0
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, minibatch):
            index = order[start : start + minibatch]
            logits, _values = model(observations[index])
            loss: torch.Tensor = nn.functional.cross_entropy(logits, actions[index].long())
            if not torch.isfinite(loss):
                model.load_state_dict(saved[0])
                optimizer.load_state_dict(saved[1])
                raise NonFiniteLoss("the cloning loss is not finite: the policy and the optimizer are as they were")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            optimizer.step()
            total += float(loss.detach())
            batches += 1
    with torch.no_grad():
        logits, _values = model(observations)
        agreement = float((logits.argmax(dim=-1) == actions.long()).double().mean())
    return CloningStats(loss=total / batches, agreement=agreement)
