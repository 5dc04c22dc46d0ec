"""Slots in any host: shapes inferred by one probe forward, and DORMANT slots that change nothing at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from esper_core.leyline import SlotKind
from esper_kasmina.host import SlotError, attach_slots, slot_bank

from kasmina_rig import HOSTS, Rig


def _never(*_args: Any) -> nn.Module:
    raise AssertionError("dormant slots build nothing")


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_dormant_slots_are_bit_identical_in_outputs_and_gradients(host: str) -> None:
    factory, points, shape, _ = HOSTS[host]
    torch.manual_seed(3)
    plain = factory()
    slotted = factory()
    slotted.load_state_dict(plain.state_dict())
    inputs = torch.randn(8, *shape)
    attach_slots(slotted, points, inputs[:2], _never)
    for model in (plain, slotted):
        model.train()
    outputs = []
    for model in (plain, slotted):
        torch.manual_seed(11)  # same dropout mask
        output = model(inputs)
        output.square().sum().backward()
        outputs.append(output)
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), slotted.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    assert [name for name, _ in plain.named_parameters()] == [name for name, _ in slotted.named_parameters()]


def test_slot_shapes_kinds_and_order_are_inferred(rig_factory: Callable[..., Rig]) -> None:
    states = rig_factory("conv").kasmina.export_seed_states()
    assert [(s.slot_id, s.slot_kind, list(s.slot_shape), s.layer_depth) for s in states] == [
        ("features.2", SlotKind.SLOT_KIND_CONV2D, [6, 8, 8], 0),
        ("features.5", SlotKind.SLOT_KIND_CONV2D, [8, 8, 8], 1),
        ("head.2", SlotKind.SLOT_KIND_VECTOR, [16], 2),
    ]
    sequence = rig_factory("sequence").kasmina.export_seed_states()
    assert [(s.slot_kind, list(s.slot_shape)) for s in sequence] == [(SlotKind.SLOT_KIND_SEQUENCE, [7, 12])] * 2


def test_attaching_leaves_the_host_state_untouched() -> None:
    torch.manual_seed(0)
    model = HOSTS["conv"][0]()
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    attach_slots(model, ["features.5"], torch.randn(4, 1, 16, 16), _never)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # batch-norm statistics did not move
    assert model.training


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (["features.9"], "is not a module of the host"),
        (["feature.2"], "Did you mean 'features.2'"),
        ([""], "an empty slot point"),
        (["features.2", "features.2"], "repeat"),
        ([], "at least one slot point"),
    ],
)
def test_bad_slot_points_are_explained(points: list[str], message: str) -> None:
    model = HOSTS["conv"][0]()
    with pytest.raises(SlotError, match=message):
        attach_slots(model, points, torch.randn(2, 1, 16, 16), _never)


def test_a_whole_block_can_be_a_slot_point() -> None:
    bank = attach_slots(HOSTS["conv"][0](), ["features"], torch.randn(2, 1, 16, 16), _never)
    assert (bank.ordered()[0].slot_kind, bank.ordered()[0].slot_shape) == (SlotKind.SLOT_KIND_CONV2D, (8, 4, 4))


def test_an_activation_of_another_rank_cannot_hold_a_slot() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lift = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lift(x).sum()  # type: ignore[no-any-return]

    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Flat()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)  # type: ignore[no-any-return]

    with pytest.raises(SlotError, match="slots take"):
        attach_slots(Scalar(), ["inner"], torch.randn(2, 4), _never)


def test_a_module_used_twice_cannot_hold_a_slot() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.shared(x))  # type: ignore[no-any-return]

    with pytest.raises(SlotError, match="runs 2 times"):
        attach_slots(Twice(), ["shared"], torch.randn(2, 4), _never)


def test_a_module_with_a_tuple_output_cannot_hold_a_slot() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x)[0]  # type: ignore[no-any-return]

    with pytest.raises(SlotError, match="outputs a tuple"):
        attach_slots(Attention(), ["attention"], torch.randn(2, 3, 8), _never)


def test_slots_attach_once_and_stay_outside_the_host_module_tree(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    assert slot_bank(rig.model) is rig.kasmina.bank
    assert all("esper" not in name for name, _ in rig.model.named_modules())  # an nn.Sequential host still runs
    rig.model(rig.inputs)
    with pytest.raises(SlotError, match="already has seed slots"):
        attach_slots(rig.model, ["1"], rig.inputs[:2], _never)
