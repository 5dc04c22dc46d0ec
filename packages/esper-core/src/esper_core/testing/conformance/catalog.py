"""Every blueprint of a catalog builds a module that a seed slot can safely hold.

For hypothesis-drawn slot shapes of each kind a blueprint supports, and in-bounds parameters: the module maps the
slot's shape to itself; its outputs are finite; its initial output is near zero (so grafting never jolts the host);
gradients reach its parameters; and the catalog's parameter-count estimate is exact.

Subclass :class:`BlueprintCatalogConformance`, provide a ``catalog`` fixture, and override :meth:`exemptions` for
blueprints built to break a property (safety stressors), which must then be shown to break it elsewhere.
Requires torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, SlotKind
from esper_core.protocols import BlueprintCatalog, SlotShape

#: Every property the suite checks; exemptions name a subset.
PROPERTIES = frozenset({"shape", "finite", "near_zero", "gradients", "parameter_count"})

#: The initial output's RMS may be at most this fraction of the input's RMS.
NEAR_ZERO_RATIO = 1e-3


def small_shapes(kind: SlotKind.ValueType) -> st.SearchStrategy[tuple[int, ...]]:
    """Slot shapes small enough to build and run quickly on a CPU."""
    if kind == SlotKind.SLOT_KIND_CONV2D:
        return st.tuples(st.integers(1, 24), st.integers(2, 12), st.integers(2, 12))
    if kind == SlotKind.SLOT_KIND_VECTOR:
        return st.tuples(st.integers(1, 96))
    if kind == SlotKind.SLOT_KIND_SEQUENCE:
        return st.tuples(st.integers(1, 12), st.integers(2, 48))
    raise ValueError(f"no shapes for slot kind {kind}")


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
    inputs = torch.randn(batch, *slot.shape)
    outputs = module(inputs)
    if "shape" not in exempt:
        assert tuple(outputs.shape) == tuple(inputs.shape), f"{where}: output shape {tuple(outputs.shape)}"
    if "finite" not in exempt:
        assert torch.isfinite(outputs).all(), f"{where}: non-finite outputs"
    if "near_zero" not in exempt:
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
                kind = data.draw(st.sampled_from(list(descriptor.slot_kinds)), label=f"{descriptor.blueprint_id} kind")
                shape = data.draw(small_shapes(kind), label=f"{descriptor.blueprint_id} shape")
                parameters = data.draw(parameter_values(descriptor.allowed_parameters), label="parameters")
                check_blueprint(
                    catalog, descriptor, SlotShape(kind, shape), parameters, exempt=self.exemptions(descriptor)
                )

        run()
