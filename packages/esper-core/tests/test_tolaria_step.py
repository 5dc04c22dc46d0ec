"""Tolaria's training step on its own (esper_core.tolaria.step): the default step is the plain loop bit for bit;
accumulation equals one batch k times larger; bf16 autocast on the CPU; fp16 refused off CUDA; the learning-rate
schedules and the bases of groups added while they run."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

from esper_core.errors import ConfigError
from esper_core.protocols import BASE_LR_KEY, SCHEDULED_LR_KEY
from esper_core.tolaria.options import TolariaOptions
from esper_core.tolaria.step import LearningRateSchedule, TrainingStep, check_precision, micro_batch_sizes

CPU = torch.device("cpu")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def data(count: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable: the class is the largest of three fixed linear views of the input."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 6, generator=generator)
    return inputs, (inputs @ torch.randn(6, 3, generator=torch.Generator().manual_seed(7))).argmax(dim=1)


def correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).sum()


def step_of(model: nn.Module, optimizer: torch.optim.Optimizer, **options: object) -> TrainingStep:
    return TrainingStep(model, optimizer, functional.cross_entropy, correct, CPU, **options)  # type: ignore[arg-type]


def test_the_default_step_is_the_plain_loop_bit_for_bit() -> None:
    plain, stepped = mlp(), mlp()
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=0.01)
    step = step_of(stepped, torch.optim.Adam(stepped.parameters(), lr=0.01), gradient_clip=0.5)
    inputs, targets = data(96)
    for number in range(3):
        batch = slice(32 * number, 32 * (number + 1))
        plain_optimizer.zero_grad(set_to_none=True)
        outputs = plain(inputs[batch])
        loss = functional.cross_entropy(outputs, targets[batch])
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        torch.nn.utils.clip_grad_norm_(list(plain.parameters()), 0.5)
        plain_optimizer.step()
        loss_sum, right = step(inputs[batch], targets[batch], number)
        assert torch.equal(loss_sum, loss.detach().double() * 32)
        assert torch.equal(right, correct(outputs.detach(), targets[batch]).double())
    for a, b in zip(plain.parameters(), stepped.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("count", "parts"), [(64, 4), (64, 8), (50, 4), (3, 4)])
def test_accumulation_over_k_micro_batches_equals_one_batch_k_times_larger(
    optimizer: str, count: int, parts: int
) -> None:
    """After three optimizer steps the weights agree within 1e-6 (float32 sums in another order; SGD's update is the
    gradient itself, Adam's first steps are nearly its sign). Uneven micro-batches (50 in 4: 13, 13, 12, 12) and a
    batch smaller than k (3 in 4: three micro-batches of one) are weighted by their share of the batch."""
    whole, accumulated = mlp(), mlp()

    def make(model: nn.Module) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.Adam(model.parameters(), lr=0.01)

    one = step_of(whole, make(whole))
    many = step_of(accumulated, make(accumulated), accumulation_steps=parts)
    inputs, targets = data(count * 3)
    for number in range(3):
        batch = slice(count * number, count * (number + 1))
        loss_one, correct_one = one(inputs[batch], targets[batch], number)
        loss_many, correct_many = many(inputs[batch], targets[batch], number)
        assert torch.allclose(loss_one, loss_many, rtol=1e-6)
        assert torch.equal(correct_one, correct_many)
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
    assert not all(torch.equal(a, b) for a, b in zip(mlp().parameters(), accumulated.parameters(), strict=True))


def test_micro_batches_are_consecutive_and_never_empty() -> None:
    assert micro_batch_sizes(128, 4) == [32, 32, 32, 32]
    assert micro_batch_sizes(50, 4) == [13, 13, 12, 12]
    assert micro_batch_sizes(3, 4) == [1, 1, 1]
    assert micro_batch_sizes(1, 1) == [1]


def test_bf16_autocast_on_the_cpu_runs_the_forward_in_bfloat16_and_still_trains() -> None:
    model = mlp()
    step = step_of(model, torch.optim.Adam(model.parameters(), lr=0.01), precision="bf16")
    seen: list[torch.dtype] = []
    handle = model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    inputs, targets = data(256)
    losses = []
    for number in range(60):
        batch = slice(64 * (number % 4), 64 * (number % 4 + 1))
        loss_sum, _ = step(inputs[batch], targets[batch], number)
        losses.append(float(loss_sum) / 64)
    handle.remove()
    assert set(seen) == {torch.bfloat16}, "autocast runs the linear layers in bfloat16"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "the weights stay fp32"
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses


def test_bf16_on_a_cpu_without_bfloat16_instructions_runs_with_a_note(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("esper_core.tolaria.step._native_cpu_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="esper.tolaria"):
        check_precision(TolariaOptions(precision="bf16"), CPU)
    assert "emulated, and is likely slower than 'fp32'" in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gradient_micro_batches": 1}, r"gradient_micro_batches must be 0 \(no gradient measurements\) or at least 2"),
        ({"gradient_micro_batches": 65}, r"gradient_micro_batches \(65\) cannot exceed probe_size \(64\)"),
        ({"accumulation_steps": 0}, "accumulation_steps must be at least 1"),
        ({"lr_step_gamma": 1.0}, "lr_step_gamma must lie strictly between 0 and 1"),
        ({"lr_min_fraction": 1.5}, "lr_min_fraction must be between 0 and 1"),
    ],
)
def test_bad_loop_settings_are_refused_naming_the_key(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TolariaOptions(**settings)  # type: ignore[arg-type]


def test_fp16_is_refused_off_cuda_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"tolaria.precision = 'fp16' needs a CUDA device.*'bf16'"):
        check_precision(TolariaOptions(precision="fp16"), CPU)
    check_precision(TolariaOptions(precision="bf16"), CPU)  # runs (with a note on a CPU without bf16 instructions)
    check_precision(TolariaOptions(), CPU)


def schedule(kind: str, **options: float) -> LearningRateSchedule:
    return LearningRateSchedule(kind, total_steps=110, **options)  # type: ignore[arg-type]


def test_each_schedule_gives_its_factor_at_chosen_steps() -> None:
    warm = schedule("constant", warmup_steps=10)
    assert [warm.factor(t) for t in (0, 4, 9, 10, 500)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cosine = schedule("cosine", warmup_steps=10, min_fraction=0.1)
    assert cosine.factor(0) == pytest.approx(0.1)
    assert cosine.factor(10) == pytest.approx(1.0)  # the warm-up's end: the cosine starts at the base
    assert cosine.factor(60) == pytest.approx(0.55)  # halfway through the 100 steps after it: (1 + 0.1) / 2
    assert cosine.factor(110) == pytest.approx(0.1)  # the run's end: lr_min_fraction of the base
    assert cosine.factor(10_000) == pytest.approx(0.1)  # and it stays there
    decay = schedule("step", warmup_steps=0, step_every=25, gamma=0.5)
    assert [decay.factor(t) for t in (0, 24, 25, 49, 50, 100)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.0625]
    assert LearningRateSchedule.of(TolariaOptions(), 100) is None, "constant without warm-up leaves the rates alone"


def test_the_schedule_multiplies_each_groups_own_base_including_a_group_added_while_it_runs() -> None:
    host, seed = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.SGD(host.parameters(), lr=0.1)
    cosine = schedule("cosine", warmup_steps=10)
    for t in range(30):
        cosine.apply(optimizer, t)
    assert optimizer.param_groups[0]["lr"] == 0.1 * cosine.factor(29)
    optimizer.add_param_group({"params": list(seed.parameters()), "lr": 0.5})  # a seed germinates at step 30
    cosine.apply(optimizer, 30)
    host_group, seed_group = optimizer.param_groups
    assert host_group["lr"] == 0.1 * cosine.factor(30) and host_group[BASE_LR_KEY] == 0.1
    assert seed_group["lr"] == 0.5 * cosine.factor(30) and seed_group[BASE_LR_KEY] == 0.5
    # Someone sets the seed's rate (a FINE_TUNE): the new rate is its base from the next step on.
    seed_group["lr"] = 0.2
    cosine.apply(optimizer, 31)
    assert seed_group["lr"] == 0.2 * cosine.factor(31) and seed_group[BASE_LR_KEY] == 0.2
    # Even a rate equal to the last scheduled one, when the mark is removed with it (as Kasmina does).
    seed_group["lr"] = seed_group[SCHEDULED_LR_KEY]
    seed_group.pop(SCHEDULED_LR_KEY)
    cosine.apply(optimizer, 32)
    assert seed_group[BASE_LR_KEY] == pytest.approx(0.2 * cosine.factor(31))


def test_the_schedules_state_is_in_the_optimizers_state_dict() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    warm = schedule("step", warmup_steps=5, step_every=3, gamma=0.5)
    for t in range(12):
        warm.apply(optimizer, t)
    saved = copy.deepcopy(optimizer.state_dict())
    fresh = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.01)
    fresh.load_state_dict(saved)
    warm.apply(optimizer, 12)
    warm.apply(fresh, 12)
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.01 * 0.5 ** math.floor(7 / 3)
