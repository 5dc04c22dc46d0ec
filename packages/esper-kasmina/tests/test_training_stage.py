"""TRAINING's straight-through path: the host's value and gradients are untouched, and the seed's gradient is the
task loss's plus ``training_curvature`` times its own output per sample, so it settles instead of overshooting."""

from __future__ import annotations

import torch
from torch import nn

from esper_kasmina.slot import _StraightThrough


def gradients(curvature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    host = torch.randn(4, 3, requires_grad=True)
    seed = (torch.randn(4, 3) * 2).requires_grad_(True)
    weights = torch.randn(3, 2)
    output = _StraightThrough.apply(host, seed, curvature)
    assert torch.equal(output, host)  # the value is the host's, bit for bit
    loss = nn.functional.cross_entropy(output @ weights, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert host.grad is not None and seed.grad is not None
    return host.grad, seed.grad, seed.detach()


def test_without_curvature_the_seed_gets_the_host_gradient_exactly() -> None:
    host_grad, seed_grad, _ = gradients(0.0)
    assert torch.equal(host_grad, seed_grad)


def test_curvature_adds_a_per_sample_pull_towards_zero_and_leaves_the_host_alone() -> None:
    plain_host, plain_seed, _ = gradients(0.0)
    host_grad, seed_grad, seed = gradients(2.0)
    assert torch.equal(host_grad, plain_host)
    assert torch.allclose(seed_grad, plain_seed + 2.0 * seed / 4)  # mean loss over 4 samples: 1/4 per sample


def test_with_curvature_straight_through_training_settles_at_a_bounded_step() -> None:
    """A seed trained on a fixed gradient (the straight-through case: its output never changes the loss) grows
    without limit alone, and stops at -gradient / curvature with the pull."""
    target_gradient = torch.tensor([[0.5, -0.25]])

    def train(curvature: float) -> torch.Tensor:
        seed = torch.zeros(1, 2, requires_grad=True)
        optimizer = torch.optim.Adam([seed], lr=0.05)
        for _ in range(2000):
            optimizer.zero_grad()
            output = _StraightThrough.apply(torch.zeros(1, 2), seed, curvature)
            (output * target_gradient).sum().backward()
            optimizer.step()
        return seed.detach()

    assert train(0.0).abs().max() > 50  # keeps walking along -gradient
    assert torch.allclose(train(1.0), -target_gradient, atol=0.02)
