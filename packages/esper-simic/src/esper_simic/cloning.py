"""Behaviour cloning: the warm start that makes a fresh policy decide like the heuristic before PPO improves on it.

A policy that starts from random weights decides at random, and episodes of random growth teach little. Cloning fits
the policy's action distribution to the heuristic's decisions (cross-entropy over the actions it took) on the same
observations the learner will see, so PPO starts from a policy as good as the heuristic. Like :mod:`esper_simic.ppo`
it asks a :data:`~esper_simic.scoring.Scorer` for the demonstrated actions' log-probabilities; a non-finite loss raises
:class:`~esper_simic.ppo.NonFiniteLoss` with the model and the optimizer restored.
"""

from __future__ import annotations

import copy
import math

import attrs
import torch
from torch import nn

from esper_simic.ppo import NonFiniteLoss
from esper_simic.scoring import Scorer

__all__ = ["CloningStats", "clone_behaviour"]


@attrs.frozen
class CloningStats:
    loss: float
    #: Geometric mean of the probability the policy gives each demonstrated action, after the update (1: it always
    #: decides alike). Unlike the arithmetic mean, rare decisions (a germination among many waits) weigh in fully.
    likelihood: float
    #: Share of the demonstrated actions the policy now gives at least even odds (those it surely takes greedily).
    agreement: float


def clone_behaviour(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    size: int,
    score: Scorer,
    *,
    epochs: int = 1,
    minibatch: int = 64,
    generator: torch.Generator,
) -> CloningStats:
    """``epochs`` passes of the demonstrated actions' negative log-likelihood over ``size`` steps, scored by
    ``score`` (whose log-probabilities are those of the demonstrated actions)."""
    if size <= 0:
        raise ValueError(f"cloning needs at least one demonstrated decision, got {size}")
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    total = 0.0
    batches = 0
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, minibatch):
            loss = -score(order[start : start + minibatch]).log_prob.mean()
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
        log_prob = score(torch.arange(size)).log_prob
    return CloningStats(
        loss=total / batches,
        likelihood=float(log_prob.mean().exp()),
        agreement=float((log_prob >= math.log(0.5)).double().mean()),
    )
