"""Behaviour cloning makes a fresh policy decide like its demonstrator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_simic.cloning import clone_behaviour
from esper_simic.ppo import NonFiniteLoss
from esper_simic.scoring import logits_scorer


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.Tanh())
        self.policy = nn.Linear(16, 3)
        self.value = nn.Linear(16, 1)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(observations)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


def demonstrator(observations: torch.Tensor) -> torch.Tensor:
    """A rule-based 'heuristic': the action is which of the first three features is largest."""
    return observations[:, :3].argmax(dim=1)


def test_cloning_reaches_the_demonstrators_decisions() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    observations = torch.randn(512, 5, generator=generator)
    actions = demonstrator(observations)
    score = logits_scorer(model, observations, actions)
    before = clone_behaviour(model, optimizer, 512, score, epochs=1, generator=generator)
    after = clone_behaviour(model, optimizer, 512, score, epochs=20, generator=generator)
    assert after.loss < before.loss and after.likelihood > before.likelihood and after.likelihood >= 0.9
    fresh = torch.randn(256, 5, generator=generator)
    with torch.no_grad():
        agreement = float((model(fresh)[0].argmax(dim=1) == demonstrator(fresh)).double().mean())
    assert agreement >= 0.9  # it learned the rule, not the samples


def test_bad_input_and_non_finite_losses_change_nothing() -> None:
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(1)
    with pytest.raises(ValueError, match="at least one demonstrated decision"):
        clone_behaviour(
            model, optimizer, 0, logits_scorer(model, torch.zeros(0, 5), torch.zeros(0)), generator=generator
        )
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    poisoned = torch.full((8, 5), float("nan"))
    with pytest.raises(NonFiniteLoss, match="as they were"):
        clone_behaviour(model, optimizer, 8, logits_scorer(model, poisoned, torch.zeros(8)), generator=generator)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
