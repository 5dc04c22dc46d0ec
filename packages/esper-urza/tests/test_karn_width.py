"""Karn's width blueprints: new channels or neurons between two layers, exactly what widening the host would add,
starting at exactly zero, learning from there, and refused where they do not fit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from esper_core.leyline import BlueprintTier, GrowthMode, SlotKind
from esper_core.protocols import SlotShape, WidthSeed
from esper_core.tasks.hosts import ConvHost, MlpHost
from esper_urza.karn import KarnCatalog

CONV = SlotKind.SLOT_KIND_CONV2D
VECTOR = SlotKind.SLOT_KIND_VECTOR
SEQUENCE = SlotKind.SLOT_KIND_SEQUENCE

#: Each width blueprint, the kinds it reads and writes, and its default width.
WIDTH_BLUEPRINTS = {
    "BP057": ("channel_growth", CONV, CONV, 8),
    "BP058": ("head_channel_growth", CONV, VECTOR, 8),
    "BP059": ("neuron_growth", VECTOR, VECTOR, 32),
    "BP060": ("feedforward_growth", SEQUENCE, SEQUENCE, 64),
}
#: A width slot each blueprint grows in, and another with other sizes (a non-integer resampling, an odd map).
SLOTS = {
    "BP057": [
        SlotShape(CONV, (16, 7, 7), read_kind=CONV, read_shape=(8, 14, 14)),
        SlotShape(CONV, (5, 4, 6), read_kind=CONV, read_shape=(3, 9, 5)),
    ],
    "BP058": [
        SlotShape(VECTOR, (10,), read_kind=CONV, read_shape=(16, 14, 14)),
        SlotShape(VECTOR, (3,), read_kind=CONV, read_shape=(2, 5, 3)),
    ],
    "BP059": [
        SlotShape(VECTOR, (32,), read_kind=VECTOR, read_shape=(64,)),
        SlotShape(VECTOR, (1,), read_kind=VECTOR, read_shape=(5,)),
    ],
    "BP060": [
        SlotShape(SEQUENCE, (10, 24), read_kind=SEQUENCE, read_shape=(10, 16)),
        SlotShape(SEQUENCE, (1, 3), read_kind=SEQUENCE, read_shape=(1, 7)),
    ],
}
ALL_SLOTS = [(blueprint_id, slot) for blueprint_id, slots in SLOTS.items() for slot in slots]
IDS = [f"{blueprint_id}-{index}" for blueprint_id, slots in SLOTS.items() for index in range(len(slots))]


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


def randomize(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Every weight drawn at random (no zero start): the seed as it might be after learning."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, scale)
    return module


# -- the descriptors ------------------------------------------------------------------------------------------------
def test_the_width_blueprints_are_safe_width_blueprints_with_a_width(karn: KarnCatalog) -> None:
    width = {d.blueprint_id: d for d in karn.descriptors() if d.growth_mode == GrowthMode.GROWTH_MODE_WIDTH}
    assert set(width) == set(WIDTH_BLUEPRINTS)
    for blueprint_id, (name, reads, writes, default) in WIDTH_BLUEPRINTS.items():
        d = width[blueprint_id]
        assert d.name == name and d.tier == BlueprintTier.BLUEPRINT_TIER_SAFE and not d.approval_required
        assert list(d.read_kinds) == [reads] and list(d.slot_kinds) == [writes]
        bound = d.allowed_parameters["width"]
        assert (bound.min_value, bound.max_value, bound.default_value, bound.integer) == (1, 256, default, True)
    residual = [d for d in karn.descriptors() if d.blueprint_id not in WIDTH_BLUEPRINTS]
    assert all(d.growth_mode == GrowthMode.GROWTH_MODE_RESIDUAL and not d.read_kinds for d in residual)


def test_query_by_slot_offers_what_fits(karn: KarnCatalog) -> None:
    conv_to_conv, conv_to_vector = SLOTS["BP057"][0], SLOTS["BP058"][0]
    assert [d.blueprint_id for d in karn.query(slot=conv_to_conv)] == ["BP057"]
    assert [d.blueprint_id for d in karn.query(slot=conv_to_vector)] == ["BP058"]
    residual = {d.blueprint_id for d in karn.query(slot=SlotShape(VECTOR, (32,)))}
    assert "BP052" in residual and not residual & set(WIDTH_BLUEPRINTS)
    assert {d.blueprint_id for d in karn.query(slot_kind=VECTOR)} >= {"BP052", "BP058", "BP059"}  # what they write


# -- the modules ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("blueprint_id", "slot"), ALL_SLOTS, ids=IDS)
def test_a_width_module_maps_the_read_shape_to_the_written_one_from_exactly_zero(
    karn: KarnCatalog, blueprint_id: str, slot: SlotShape
) -> None:
    module = karn.build(blueprint_id, slot, {"width": 5})
    a = torch.randn(4, *slot.read_shape)
    out = module(a)
    assert tuple(out.shape) == (4, *slot.shape)
    assert torch.count_nonzero(out) == 0
    assert karn.parameter_count(blueprint_id, slot, {"width": 5}) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("blueprint_id", "slot"), ALL_SLOTS, ids=IDS)
def test_a_width_module_is_a_width_seed(karn: KarnCatalog, blueprint_id: str, slot: SlotShape) -> None:
    """``grow_in`` computes the new units, ``grow_out`` (zero) maps them into the written activation, and
    ``hidden`` is what ``grow_out`` reads, so an executor can initialise the units from the host's statistics."""
    module: Any = karn.build(blueprint_id, slot, {"width": 5})
    assert isinstance(module, WidthSeed)
    assert isinstance(module.grow_in, (nn.Conv2d, nn.Linear)) and isinstance(module.grow_out, (nn.Conv2d, nn.Linear))
    grown = module.grow_in.out_channels if isinstance(module.grow_in, nn.Conv2d) else module.grow_in.out_features
    assert grown == 5
    assert all(torch.count_nonzero(p) == 0 for p in module.grow_out.parameters())
    randomize(module)
    a = torch.randn(3, *slot.read_shape)
    hidden = module.hidden(a)
    assert torch.equal(module.grow_out(hidden), module(a))
    assert bool((hidden >= 0).all()) == (blueprint_id != "BP060")  # ReLU units; GELU ones may be negative


@pytest.mark.parametrize(("blueprint_id", "slot"), ALL_SLOTS, ids=IDS)
def test_every_width_blueprint_learns_from_its_zero_start(
    karn: KarnCatalog, blueprint_id: str, slot: SlotShape
) -> None:
    """A zero start must not be a dead start: the gradient reaches the zero ``grow_out`` first, then ``grow_in``,
    and a few Adam steps move the seed well towards what a randomly weighted copy of itself computes."""
    inputs = torch.randn(8, *slot.read_shape, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    teacher = randomize(karn.build(blueprint_id, slot, {}))
    with torch.no_grad():
        target = teacher(inputs)
    student: Any = karn.build(blueprint_id, slot, {})
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    with torch.no_grad():
        initial = float((student(inputs) - target).pow(2).mean())
    first_in = student.grow_in.weight.detach().clone()
    for _ in range(30):
        optimizer.zero_grad()
        loss = (student(inputs) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    final = float(loss.detach())
    assert final < 0.8 * initial, f"{blueprint_id}: loss {initial:.4f} -> {final:.4f}"
    assert not torch.equal(student.grow_in.weight, first_in), f"{blueprint_id}: its new units never learned"


def test_channel_growth_resamples_like_the_host_or_adaptively(karn: KarnCatalog) -> None:
    """Max-pooling by the integer factor where the sides divide (a factor of 1 is no pooling), adaptive max pooling
    otherwise; ``kernel`` sets the first convolution (an even value is the next odd one, keeping the map's size)."""
    module: Any = randomize(karn.build("BP057", SLOTS["BP057"][0], {"width": 2, "kernel": 5}))
    assert module.grow_in.kernel_size == (5, 5) and module.grow_in.padding == (2, 2)
    a = torch.randn(2, 8, 14, 14)
    units = torch.relu(module.grow_in(a))
    torch.testing.assert_close(module.hidden(a), nn.functional.max_pool2d(units, 2))
    same: Any = karn.build("BP057", SlotShape(CONV, (4, 14, 14), read_kind=CONV, read_shape=(8, 14, 14)), {})
    torch.testing.assert_close(same.hidden(a), torch.relu(same.grow_in(a)))
    odd: Any = karn.build("BP057", SLOTS["BP057"][1], {"kernel": 4})
    assert odd.grow_in.kernel_size == (5, 5)
    b = torch.randn(2, 3, 9, 5)
    torch.testing.assert_close(odd.hidden(b), nn.functional.adaptive_max_pool2d(torch.relu(odd.grow_in(b)), (4, 6)))


@pytest.mark.parametrize(("pool", "features"), [(0, 6), (1, 6 * 14 * 14), (2, 6 * 7 * 7), (3, 6 * 4 * 4)])
def test_head_channel_growth_pools_like_the_head(karn: KarnCatalog, pool: int, features: int) -> None:
    slot = SLOTS["BP058"][0]
    module: Any = karn.build("BP058", slot, {"width": 6, "pool": pool})
    assert module.grow_out.in_features == features
    assert karn.parameter_count("BP058", slot, {"width": 6, "pool": pool}) == (6 * 16 * 9 + 6 + features * 10 + 10)


def test_head_channel_growth_lowers_its_pool_to_the_map(karn: KarnCatalog) -> None:
    slot = SlotShape(VECTOR, (3,), read_kind=CONV, read_shape=(2, 3, 7))
    module: Any = karn.build("BP058", slot, {"width": 4, "pool": 8})
    assert module.pool == 3 and module.grow_out.in_features == 4 * 1 * 2
    assert module(torch.randn(2, 2, 3, 7)).shape == (2, 3)


# -- widening the host ----------------------------------------------------------------------------------------------
def test_channel_growth_is_the_host_with_more_channels_in_a_block(karn: KarnCatalog) -> None:
    """``blocks.0:input->blocks.1.0`` of the built-in conv host: the seed's output added to the next block's
    convolution equals the host with ``width`` more channels in block 0 (the seed's weights copied in)."""
    torch.manual_seed(0)
    host, wide = ConvHost(1, [4, 6], 10, side=12), ConvHost(1, [4 + 3, 6], 10, side=12)
    slot = SlotShape(CONV, (6, 6, 6), read_kind=CONV, read_shape=(1, 12, 12))
    seed: Any = randomize(karn.build("BP057", slot, {"width": 3}))
    with torch.no_grad():
        copy_rows(wide.blocks[0][0], host.blocks[0][0], seed.grow_in)
        copy_columns(wide.blocks[1][0], host.blocks[1][0], seed.grow_out)
        wide.head.load_state_dict(host.head.state_dict())
    x = torch.randn(5, 1, 12, 12)
    grown = host.blocks[1][0](host.blocks[0](x)) + seed(x)
    expected = host.head(host.pool(host.blocks[1][1:](grown)))
    torch.testing.assert_close(wide(x), expected)


@pytest.mark.parametrize(("head", "pool"), [("flatten", 2), ("gap", 0)])
def test_head_channel_growth_is_the_host_with_more_channels_in_its_last_block(
    karn: KarnCatalog, head: str, pool: int
) -> None:
    """``blocks.1:input->head``: the seed's output added to the logits equals the host with ``width`` more channels
    in its last block, whichever head it has (``pool`` 2 for the flatten head's max-pool, 0 for a gap head)."""
    torch.manual_seed(1)
    host = ConvHost(1, [4, 6], 10, side=12, head=head)  # type: ignore[arg-type]
    wide = ConvHost(1, [4, 6 + 3], 10, side=12, head=head)  # type: ignore[arg-type]
    slot = SlotShape(VECTOR, (10,), read_kind=CONV, read_shape=(4, 6, 6))
    seed: Any = randomize(karn.build("BP058", slot, {"width": 3, "pool": pool}))
    with torch.no_grad():
        wide.blocks[0].load_state_dict(host.blocks[0].state_dict())
        copy_rows(wide.blocks[1][0], host.blocks[1][0], seed.grow_in)
        copy_columns(wide.head, host.head, seed.grow_out)
    x = torch.randn(5, 1, 12, 12)
    read = host.blocks[0](x)
    torch.testing.assert_close(wide(x), host(x) + seed(read))


def test_neuron_growth_is_the_mlp_with_more_neurons_in_a_layer(karn: KarnCatalog) -> None:
    """``layers.0:input->layers.1.0`` of the built-in MLP host."""
    torch.manual_seed(2)
    host, wide = MlpHost(20, [16, 12], 10), MlpHost(20, [16 + 5, 12], 10)
    slot = SlotShape(VECTOR, (12,), read_kind=VECTOR, read_shape=(20,))
    seed: Any = randomize(karn.build("BP059", slot, {"width": 5}))
    with torch.no_grad():
        copy_rows(wide.layers[0][0], host.layers[0][0], seed.grow_in)
        copy_columns(wide.layers[1][0], host.layers[1][0], seed.grow_out)
        wide.head.load_state_dict(host.head.state_dict())
    x = torch.randn(5, 20)
    expected = host.head(torch.relu(host.layers[1][0](host.layers[0](x)) + seed(x)))
    torch.testing.assert_close(wide(x), expected)


def test_feedforward_growth_is_a_wider_feed_forward(karn: KarnCatalog) -> None:
    """Reading a feed-forward block's input and writing its output: the block with ``width`` more hidden neurons."""
    torch.manual_seed(3)
    ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    wide = nn.Sequential(nn.Linear(8, 16 + 4), nn.GELU(), nn.Linear(16 + 4, 8))
    seed: Any = randomize(
        karn.build("BP060", SlotShape(SEQUENCE, (7, 8), read_kind=SEQUENCE, read_shape=(7, 8)), {"width": 4})
    )
    with torch.no_grad():
        copy_rows(wide[0], ffn[0], seed.grow_in)
        copy_columns(wide[2], ffn[2], seed.grow_out)
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(wide(x), ffn(x) + seed(x))


def copy_rows(wide: Any, host: Any, grown: Any) -> None:
    """The wide layer's outputs: the host layer's, then the new units (the seed's ``grow_in``)."""
    wide.weight.copy_(torch.cat([host.weight, grown.weight], dim=0))
    wide.bias.copy_(torch.cat([host.bias, grown.bias], dim=0))


def copy_columns(wide: Any, host: Any, grown: Any) -> None:
    """The next layer's inputs: the host's, then the new units' (the seed's ``grow_out``, whose bias adds)."""
    wide.weight.copy_(torch.cat([host.weight, grown.weight], dim=1))
    wide.bias.copy_(host.bias + grown.bias)


# -- refusals -------------------------------------------------------------------------------------------------------
def test_a_width_blueprint_refuses_a_residual_slot_and_the_other_way_round(karn: KarnCatalog) -> None:
    with pytest.raises(ValueError, match=r"BP057 is a width blueprint .* residual slot.*name a width slot"):
        karn.build("BP057", SlotShape(CONV, (8, 14, 14)), {})
    with pytest.raises(ValueError, match=r"BP009 is a residual blueprint .* width slot"):
        karn.parameter_count("BP009", SLOTS["BP057"][0], {})


def test_a_width_blueprint_refuses_kinds_it_does_not_read_or_write(karn: KarnCatalog) -> None:
    with pytest.raises(ValueError, match=r"BP059 \(neuron_growth\) does not read conv2d activations.*reads: vector"):
        karn.build("BP059", SlotShape(VECTOR, (8,), read_kind=CONV, read_shape=(2, 4, 4)), {})
    with pytest.raises(ValueError, match=r"BP057 \(channel_growth\) does not grow in vector slots"):
        karn.build("BP057", SlotShape(VECTOR, (8,), read_kind=CONV, read_shape=(2, 4, 4)), {})
    with pytest.raises(ValueError, match=r"a conv2d read activation has 3 positive dimensions.*\[2, 4\]"):
        karn.build("BP057", SlotShape(CONV, (8, 4, 4), read_kind=CONV, read_shape=(2, 4)), {})


def test_feedforward_growth_refuses_two_sequence_lengths(karn: KarnCatalog) -> None:
    slot = SlotShape(SEQUENCE, (10, 24), read_kind=SEQUENCE, read_shape=(9, 16))
    for call in (karn.build, karn.parameter_count):
        with pytest.raises(ValueError, match="reads 9 tokens and writes 10"):
            call("BP060", slot, {})


@pytest.mark.parametrize("width", [0, 257, 2.5e3])
def test_width_is_bounded(karn: KarnCatalog, width: float) -> None:
    with pytest.raises(ValueError, match=r"'width' = .* outside its bounds integer \[1, 256\]"):
        karn.build("BP059", SLOTS["BP059"][0], {"width": width})
