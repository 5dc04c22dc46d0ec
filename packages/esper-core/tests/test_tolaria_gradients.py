"""The gradient measurements of a decision point (esper_core.tolaria.gradients): each number against its definition on
models whose gradients are known in closed form, the conflict of a seed that trades examples off against the host,
and that measuring leaves nothing of the training changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_core.leyline import SeedState, lifecycle
from esper_core.protocols import SEED_GROUP_KEY
from esper_core.tolaria.gradients import ewma, measure_gradients, split_parameters


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs - targets) ** 2).mean()


class HostAndSeed(nn.Module):
    """``a * x0 + b * x1``: ``a`` is the host's parameter, ``b`` a seed's."""

    def __init__(self, a: float = 0.0, b: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x[:, 0] + self.b * x[:, 1]


def test_norm_and_variance_are_what_their_definitions_say() -> None:
    """A linear model under squared error: one example's gradient is ``(x_j . w - y_j) x_j``, so ``g`` and the
    variance follow in closed form."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False)
    inputs, targets = torch.randn(60, 5), torch.randn(60)

    def loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return squared_error(outputs.squeeze(-1), y)

    measured = measure_gradients(model, inputs, targets, loss, list(model.parameters()), {}, micro_batches=8)
    assert measured is not None and measured.micro_batches == 8
    w = model.weight.detach().double().squeeze(0)
    x, y = inputs.double(), targets.double()
    per_example = (x @ w - y)[:, None] * x
    g = per_example.mean(dim=0)
    sizes = [8, 8, 8, 8, 7, 7, 7, 7]  # 60 in 8 consecutive micro-batches
    parts = torch.split(per_example, sizes)
    variance = sum(m * float(((part.mean(dim=0) - g) ** 2).sum()) for m, part in zip(sizes, parts, strict=True)) / 7
    assert measured.norm == pytest.approx(float(g.norm()), rel=1e-5)
    assert measured.variance == pytest.approx(variance, rel=1e-4)
    assert measured.conflict_rate is None and measured.pairs == 0, "no seed: nothing to compare"


def test_a_seed_that_trades_examples_off_against_the_host_conflicts() -> None:
    """Two examples per micro-batch, residuals (1, 0.5): the host's step (reading x0 = (1, -1)) lowers the first
    example's loss and raises the second's; the seed's (reading x1 = (-0.2, 1)) does the opposite. Reading the same
    feature as the host, a seed agrees with it."""
    model = HostAndSeed()
    targets = torch.tensor([-1.0, -0.5] * 4)
    opposed = torch.tensor([[1.0, -0.2], [-1.0, 1.0]] * 4)
    measured = measure_gradients(model, opposed, targets, squared_error, [model.a], {"s": [model.b]}, 4)
    assert measured is not None
    assert (measured.pairs, measured.conflicts, measured.conflict_rate) == (4, 4, 1.0)
    aligned = torch.tensor([[1.0, 1.0], [-1.0, -1.0]] * 4)
    measured = measure_gradients(model, aligned, targets, squared_error, [model.a], {"s": [model.b]}, 4)
    assert measured is not None and (measured.pairs, measured.conflict_rate) == (4, 0.0)


def test_a_seed_whose_step_changes_nothing_is_not_counted() -> None:
    model = HostAndSeed()
    targets = torch.tensor([-1.0, -0.5] * 4)
    inputs = torch.tensor([[1.0, 0.0], [-1.0, 0.0]] * 4)  # the seed reads zeros: its gradient is zero
    measured = measure_gradients(model, inputs, targets, squared_error, [model.a], {"s": [model.b]}, 4)
    assert measured is not None and measured.pairs == 0 and measured.conflict_rate is None


def test_measuring_leaves_the_training_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    inputs, targets = torch.randn(16, 4), torch.randint(0, 3, (16,))
    rng = torch.get_rng_state()
    host = list(model[0].parameters())
    measured = measure_gradients(
        model, inputs, targets, nn.functional.cross_entropy, host, {"s": list(model[4].parameters())}, 4
    )
    assert measured is not None and measured.norm is not None and measured.norm > 0
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state()), "no dropout was drawn"
    assert model.training and model[1].training, "every module's mode is restored"


def test_fossilized_seeds_count_as_host_and_only_seeds_in_the_value_are_compared() -> None:
    modules = {name: nn.Linear(1, 1) for name in ("host", "fossil", "blending", "training", "paused")}
    optimizer = torch.optim.SGD(modules["host"].parameters(), lr=0.1)
    for name in ("fossil", "blending", "training", "paused"):
        optimizer.add_param_group({"params": list(modules[name].parameters()), SEED_GROUP_KEY: name})
    for parameter in modules["paused"].parameters():
        parameter.requires_grad_(False)
    seeds = [
        SeedState(slot_id="fossil", stage=lifecycle.FOSSILIZED),
        SeedState(slot_id="blending", stage=lifecycle.BLENDING),
        SeedState(slot_id="training", stage=lifecycle.TRAINING),
        SeedState(slot_id="paused", stage=lifecycle.PROBATIONARY, paused=True),
    ]
    host, measured = split_parameters(optimizer, seeds)
    assert host == [*modules["host"].parameters(), *modules["fossil"].parameters()]
    assert list(measured) == ["blending"] and measured["blending"] == list(modules["blending"].parameters())


def test_the_moving_average_of_the_norm() -> None:
    assert ewma(None, 2.0) == 2.0
    assert ewma(2.0, 1.0) == pytest.approx(0.3 * 1.0 + 0.7 * 2.0)


def test_every_examples_loss_change_at_once_equals_one_example_at_a_time() -> None:
    """The double-backward path (all examples of a micro-batch in one pass) against one forward and backward per
    example, the fallback for outputs that are not one tensor or operations without a second derivative."""
    from esper_core.tolaria.gradients import _directional, _directional_one_by_one

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4))
    model.eval()
    inputs, targets = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    groups = [list(model[0].parameters()), list(model[4].parameters())]
    steps = [[torch.randn_like(p) for p in group] for group in groups]
    at_once = _directional(model(inputs), targets, nn.functional.cross_entropy, groups, steps)
    assert at_once is not None
    one_by_one = _directional_one_by_one(model, inputs, targets, nn.functional.cross_entropy, groups, steps)
    for fast, slow in zip(at_once, one_by_one, strict=True):
        assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    assert _directional((model(inputs),), targets, nn.functional.cross_entropy, groups, steps) is None
