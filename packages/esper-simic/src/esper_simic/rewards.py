"""What a decision earns: the one place Simic's rewards are defined.

A decision at decision point ``t`` is judged by what happened until the next decision point ``t + 1`` (for the last
one, until the run finished):

    reward_t = (val_accuracy[t+1] - val_accuracy[t])
               - parameter_cost * (parameters[t+1] - parameters[t]) / host_parameters
               - compute_cost * extra_t

    extra_t = (flops[t+1] - flops[t] - host_epoch_flops * (epochs[t+1] - epochs[t])) / host_epoch_flops

- **Accuracy** is validation accuracy, as a fraction: never test data, which no learner may see.
- **Parameters** are charged in units of the host's own size: adding a host's worth costs ``parameter_cost``.
- **Compute** is the run's counted FLOPs (training, validation, counterfactual measurement) beyond what the bare
  host would have spent over the same epochs, in units of one bare-host epoch: a seed that doubles the step's cost
  for an epoch costs ``compute_cost``.

The rewards of an episode add up to the final validation accuracy gained over the first decision point, less the
costs of everything grown: growth is rewarded only where it pays for itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs

from esper_core.config import section
from esper_core.config.validators import not_negative


@attrs.frozen
class Progress:
    """Where a run stood at a decision point (or at its end)."""

    epoch: int
    val_accuracy: float
    parameters: int
    total_flops: int


@section("simic.rewards")
@attrs.frozen
class RewardWeights:
    """The costs a decision's reward is charged (``[simic.rewards]``)."""

    #: Reward given up per host's worth of added parameters.
    parameter_cost: float = attrs.field(default=0.01, validator=not_negative)
    #: Reward given up per bare-host epoch of extra compute.
    compute_cost: float = attrs.field(default=0.0005, validator=not_negative)


def rewards(
    points: Sequence[Progress],
    host_parameters: int,
    host_epoch_flops: float,
    weights: RewardWeights | None = None,
) -> list[float]:
    """One reward per decision point of ``points[:-1]``; ``points[-1]`` is where the run ended (see the module)."""
    if host_parameters < 1:
        raise ValueError(f"host_parameters must be positive, got {host_parameters}")
    weights = weights or RewardWeights()
    charge_compute = weights.compute_cost > 0 and host_epoch_flops > 0
    result = []
    for now, then in itertools.pairwise(points):
        gained = then.val_accuracy - now.val_accuracy
        grown = (then.parameters - now.parameters) / host_parameters
        extra = 0.0
        if charge_compute:
            spent = then.total_flops - now.total_flops
            extra = (spent - host_epoch_flops * (then.epoch - now.epoch)) / host_epoch_flops
        reward = gained - weights.parameter_cost * grown - weights.compute_cost * extra
        if not math.isfinite(reward):
            raise ValueError(f"the reward between epochs {now.epoch} and {then.epoch} is not finite ({reward})")
        result.append(reward)
    return result
