"""Counted FLOPs (esper_core.flops): a known linear and conv host cost what a hand computation says, the count is
proportional to the batch, attention is counted on the CPU too, and counting leaves no trace in the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_core.flops import count_flops, count_training_step
from esper_core.units import format_flops


def test_a_linear_host_costs_what_the_hand_computation_says() -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    batch = 10
    counted = count_training_step(model, torch.randn(batch, 6), list(model.parameters()))
    # A multiply-add is 2 FLOPs; biases and the ReLU are not counted.
    assert counted.forward == 2 * batch * (6 * 16 + 16 * 4)
    # Backward: the first layer's weight gradient only (the input needs none), the second's input and weight ones.
    assert counted.backward == 2 * batch * 6 * 16 + 2 * 2 * batch * 16 * 4
    assert counted.per_sample() == (counted.forward + counted.backward) / batch


def test_a_conv_host_costs_what_the_hand_computation_says() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 4 x 8 x 8
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4 x 4 x 4
        nn.Conv2d(4, 8, 3, padding=1),  # 8 x 4 x 4
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8 * 4 * 4, 5),
    )
    batch = 3
    counted = count_training_step(model, torch.randn(batch, 1, 8, 8), list(model.parameters()))
    conv1 = 2 * batch * (8 * 8) * 9 * 1 * 4  # output positions x kernel x in x out channels
    conv2 = 2 * batch * (4 * 4) * 9 * 4 * 8
    head = 2 * batch * 128 * 5
    assert counted.forward == conv1 + conv2 + head  # normalization, pooling and dropout are not counted
    assert counted.backward == conv1 + 2 * conv2 + 2 * head  # the first conv needs no input gradient


def test_the_count_is_proportional_to_the_batch_so_one_batch_gives_the_cost_per_sample() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    small = count_training_step(model, torch.randn(3, 2, 6, 6), list(model.parameters()))
    large = count_training_step(model, torch.randn(17, 2, 6, 6), list(model.parameters()))
    assert small.per_sample() == large.per_sample()


def test_attention_is_counted_on_the_cpu_too() -> None:
    query = torch.randn(2, 3, 5, 8, requires_grad=True)  # batch, heads, length, head width

    def attend() -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(query, query, query)

    _, forward = count_flops(attend)
    # Scores (q k^T) and their product with v: two batched products of 5 x 8 by 8 x 5 and 5 x 5 by 5 x 8.
    assert forward == 2 * (2 * 2 * 3 * 5 * 8 * 5)


def test_counting_leaves_no_trace_in_the_model() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[2].eval()  # a submodule in a mode of its own keeps it
    running = model[1].running_mean.clone()  # type: ignore[union-attr]
    inputs = torch.randn(16, 4)
    rng = torch.get_rng_state()
    count_training_step(model, inputs, list(model.parameters()))
    assert torch.equal(model[1].running_mean, running)  # type: ignore[arg-type]  # no batch-norm statistics moved
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout mask drawn from the training's generator
    assert all(p.grad is None for p in model.parameters())  # the training loop's gradients are untouched
    assert model.training and model[1].training and not model[2].training


def test_a_frozen_model_has_a_forward_and_no_backward() -> None:
    model = nn.Linear(3, 2).requires_grad_(False)
    counted = count_training_step(model, torch.randn(4, 3), list(model.parameters()))
    assert (counted.forward, counted.backward) == (2 * 4 * 3 * 2, 0)


@pytest.mark.parametrize(
    ("total", "shown"),
    [(0, "0 FLOP"), (950, "950 FLOP"), (1_490_000_000, "1.49 GFLOP"), (4.2e12, "4.2 TFLOP")],
)
def test_flop_counts_are_shown_with_an_si_prefix(total: float, shown: str) -> None:
    assert format_flops(total) == shown


def test_the_parts_are_shown_in_the_total_s_unit() -> None:
    text = format_flops(1.5e9, [("training", 1.2e9), ("validation", 3e8)])
    assert text == "1.5 GFLOP (training 1.2, validation 0.3)"
