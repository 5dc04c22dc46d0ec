"""How a learner asks a policy about recorded decisions: one function from a minibatch to log-probabilities, values
and entropies.

PPO and behaviour cloning never look at observations themselves. They hand a minibatch's indices to a
:data:`Scorer`, which returns the log-probability of each step's recorded action under the network being trained
(with gradients), its value estimate and the policy's entropy there. Tamiyo's learned policy scores through its own
factored, masked distributions (:class:`esper_core.protocols.TrainablePolicy.evaluate_actions`); a plain network with
one softmax over actions scores through :func:`logits_scorer` (the tests' small environments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Scorer", "Scores", "logits_scorer"]


class Scores(NamedTuple):
    """Per step of a minibatch: ``log_prob`` of the recorded action, ``value`` and the policy's ``entropy``."""

    log_prob: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


#: Scores the steps at the given indices (a 1-D ``int64`` tensor) under the network being trained, with gradients.
Scorer = Callable[[torch.Tensor], Scores]


def logits_scorer(model: nn.Module, observations: torch.Tensor, actions: torch.Tensor) -> Scorer:
    """A :data:`Scorer` for a module mapping observations to action logits ``(B, A)`` and values ``(B,)``."""

    def score(index: torch.Tensor) -> Scores:
        logits, values = model(observations[index])
        every = torch.log_softmax(logits, dim=-1)
        log_prob = every.gather(1, actions[index].long().unsqueeze(1)).squeeze(1)
        return Scores(log_prob, values, -(every.exp() * every).sum(dim=-1))

    return score
