"""Every blueprint of a catalog builds a module that a seed slot can safely hold.

For hypothesis-drawn slot shapes of each kind a blueprint supports, and in-bounds parameters: the module maps what
the slot reads to what it writes; its outputs are finite; its initial output is near zero (so grafting never jolts
the host); gradients reach its parameters; and the catalog's parameter-count estimate is exact.

A residual blueprint (``growth_mode`` RESIDUAL or unset) is drawn residual slots of its ``slot_kinds`` and must map
the slot's shape to itself, its initial output RMS at most :data:`NEAR_ZERO_RATIO` of the input's. A width blueprint
(``growth_mode`` WIDTH) is drawn width slots: a read activation of one of its ``read_kinds`` and a written one of its
``slot_kinds`` (an empty list: any kind), with independent shapes, except that a sequence read and a sequence write
share their length (a token-wise model keeps it). It must map the read shape to the written shape, and its initial
output must be exactly zero: a width seed is new units between two host layers, whose outgoing weights start at
zero so the host's function is preserved exactly.

Subclass :class:`BlueprintCatalogConformance`, provide a ``catalog`` fixture, and override :meth:`exemptions` for
blueprints built to break a property (safety stressors), which must then be shown to break it elsewhere.
Requires torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, SlotKind, growth
from esper_core.protocols import BlueprintCatalog, SlotShape

#: Every property the suite checks; exemptions name a subset.
PROPERTIES = frozenset({"shape", "finite", "near_zero", "gradients", "parameter_count"})

#: The initial output's RMS may be at most this fraction of the input's RMS (a width seed's must be exactly zero).
NEAR_ZERO_RATIO = 1e-3
#: Every slot kind, for a blueprint whose list of kinds is empty (any kind).
ALL_KINDS = (SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_SEQUENCE)


def small_shapes(kind: SlotKind.ValueType) -> st.SearchStrategy[tuple[int, ...]]:
    """Slot shapes small enough to build and run quickly on a CPU."""
    if kind == SlotKind.SLOT_KIND_CONV2D:
        return st.tuples(st.integers(1, 24), st.integers(2, 12), st.integers(2, 12))
    if kind == SlotKind.SLOT_KIND_VECTOR:
        return st.tuples(st.integers(1, 96))
    if kind == SlotKind.SLOT_KIND_SEQUENCE:
        return st.tuples(st.integers(1, 12), st.integers(2, 48))
    raise ValueError(f"no shapes for slot kind {kind}")


def slots_for(descriptor: BlueprintDescriptor) -> st.SearchStrategy[SlotShape]:
    """Slots ``descriptor`` grows in: residual slots of its kinds, or for a width blueprint width slots reading one of
    its ``read_kinds`` and writing one of its ``slot_kinds`` (see the module's docstring)."""
    writes = list(descriptor.slot_kinds) or list(ALL_KINDS)
    if growth.mode_of(descriptor) != growth.WIDTH:
        return st.sampled_from(writes).flatmap(
            lambda kind: small_shapes(kind).map(lambda shape: SlotShape(kind, shape))
        )
    reads = list(descriptor.read_kinds) or list(ALL_KINDS)
    return st.tuples(st.sampled_from(reads), st.sampled_from(writes)).flatmap(lambda kinds: _width_slots(*kinds))


def _width_slots(read_kind: SlotKind.ValueType, kind: SlotKind.ValueType) -> st.SearchStrategy[SlotShape]:
    def slot(read_shape: tuple[int, ...], shape: tuple[int, ...]) -> SlotShape:
        if read_kind == kind == SlotKind.SLOT_KIND_SEQUENCE:
            shape = (read_shape[0], *shape[1:])  # one sequence length on both sides
        return SlotShape(kind, shape, read_kind=read_kind, read_shape=read_shape)

    return st.builds(slot, small_shapes(read_kind), small_shapes(kind))


def parameter_values(bounds: Mapping[str, BlueprintParameterBounds]) -> st.SearchStrategy[dict[str, float]]:
    """In-bounds values for every declared parameter (whole numbers where the bound says so)."""
    strategies: dict[str, st.SearchStrategy[float]] = {}
    for name, bound in bounds.items():
        if bound.integer:
            low, high = math.ceil(bound.min_value), math.floor(bound.max_value)
            strategies[name] = st.integers(low, high).map(float)
        else:
            strategies[name] = st.floats(bound.min_value, bound.max_value, allow_nan=False)
    return st.fixed_dictionaries(strategies)


def check_descriptor(descriptor: BlueprintDescriptor) -> None:
    assert descriptor.blueprint_id, "a blueprint needs an id"
    assert descriptor.name, f"{descriptor.blueprint_id} has no name"
    assert descriptor.tier != 0, f"{descriptor.blueprint_id} has no tier"
    assert 0.0 <= descriptor.risk <= 1.0, f"{descriptor.blueprint_id} risk {descriptor.risk} is outside [0, 1]"
    assert descriptor.slot_kinds, f"{descriptor.blueprint_id} supports no slot kind"
    for name, bound in descriptor.allowed_parameters.items():
        low, default, high = bound.min_value, bound.default_value, bound.max_value
        assert low <= default <= high, f"{descriptor.blueprint_id}.{name}: default {default} outside [{low}, {high}]"


def check_blueprint(
    catalog: BlueprintCatalog,
    descriptor: BlueprintDescriptor,
    slot: SlotShape,
    parameters: Mapping[str, float],
    *,
    exempt: frozenset[str] = frozenset(),
    batch: int = 3,
    seed: int = 0,
) -> None:
    """Assert every non-exempt property for one build (raises AssertionError naming the blueprint otherwise)."""
    import torch

    where = f"{descriptor.blueprint_id} ({descriptor.name}) at {slot.describe()} with {dict(parameters)}"
    torch.manual_seed(seed)
    module = catalog.build(descriptor.blueprint_id, slot, parameters)
    assert isinstance(module, torch.nn.Module), f"{where}: build returned {type(module).__name__}"
    module.train()
    inputs = torch.randn(batch, *slot.input.shape)  # a width slot's seed reads the earlier activation
    outputs = module(inputs)
    if "shape" not in exempt:
        expected = (batch, *slot.shape)
        assert tuple(outputs.shape) == expected, f"{where}: output shape {tuple(outputs.shape)}, not {expected}"
    if "finite" not in exempt:
        assert torch.isfinite(outputs).all(), f"{where}: non-finite outputs"
    if "near_zero" not in exempt:
        if slot.is_width:
            largest = outputs.detach().abs().max().item() if outputs.numel() else 0.0
            assert largest == 0.0, f"{where}: a width seed's initial output must be exactly zero, not up to {largest}"
        else:
            ratio = (outputs.detach().pow(2).mean().sqrt() / inputs.pow(2).mean().sqrt().clamp_min(1e-12)).item()
            assert ratio <= NEAR_ZERO_RATIO, f"{where}: initial output RMS is {ratio:.2e} of the input's"
    trainable = [p for p in module.parameters() if p.requires_grad]
    if "parameter_count" not in exempt:
        estimate = catalog.parameter_count(descriptor.blueprint_id, slot, parameters)
        actual = sum(p.numel() for p in trainable)
        assert estimate == actual, f"{where}: estimated {estimate} parameters, built {actual}"
    if "gradients" not in exempt and trainable:
        (outputs * torch.randn_like(outputs)).sum().backward()
        missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{where}: no gradient reaches {missing}"
        assert all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None), (
            f"{where}: non-finite gradients"
        )
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), f"{where}: all gradients are zero"


class BlueprintCatalogConformance:
    """Subclasses provide a ``catalog`` fixture."""

    max_examples = 8

    def exemptions(self, descriptor: BlueprintDescriptor) -> frozenset[str]:
        """Properties ``descriptor`` is built to break (none by default)."""
        return frozenset()

    def test_catalog_satisfies_the_protocol(self, catalog: BlueprintCatalog) -> None:
        assert isinstance(catalog, BlueprintCatalog)

    def test_descriptors_are_well_formed(self, catalog: BlueprintCatalog) -> None:
        descriptors = list(catalog.descriptors())
        assert descriptors, "a catalog offers at least one blueprint"
        ids = [descriptor.blueprint_id for descriptor in descriptors]
        assert len(ids) == len(set(ids)), "blueprint ids are unique within a catalog"
        for descriptor in descriptors:
            check_descriptor(descriptor)

    def test_unknown_blueprint_is_a_key_error(self, catalog: BlueprintCatalog) -> None:
        import pytest

        with pytest.raises(KeyError):
            catalog.build("no-such-blueprint", SlotShape(SlotKind.SLOT_KIND_VECTOR, (4,)), {})

    def test_every_blueprint_keeps_the_contract(self, catalog: BlueprintCatalog) -> None:
        descriptors = list(catalog.descriptors())

        @settings(max_examples=self.max_examples, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            for descriptor in descriptors:
                slot = data.draw(slots_for(descriptor), label=f"{descriptor.blueprint_id} slot")
                parameters = data.draw(parameter_values(descriptor.allowed_parameters), label="parameters")
                check_blueprint(catalog, descriptor, slot, parameters, exempt=self.exemptions(descriptor))

        run()
