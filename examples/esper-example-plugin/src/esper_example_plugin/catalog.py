"""The ``example`` blueprint catalog: one blueprint, ``EX001`` (``gated_bottleneck``).

A seed slot adds its seed's output to the host's activation, so a blueprint builds only the *delta*: here a
bottleneck over the features whose output passes through a learned, input-dependent gate::

    h = gelu(down(x))                       # features -> width = max(1, features // reduction)
    delta = sigmoid(gate(h)) * up(h)        # width -> features, twice; ``up`` starts at exactly zero

``up`` starting at zero makes the initial output exactly zero, so grafting the seed never jolts the host; the gate
lets each sample open or close each feature's correction once the seed has learned something. On vector slots the
layers are linear maps of the last dimension; on conv2d slots they are 1x1 convolutions over the channels.

Listing descriptors and counting parameters import no torch (Esper lists catalogs at every start and in
``esper blueprints``); only :meth:`ExampleCatalog.build` does, through :mod:`esper_example_plugin.modules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, SlotKind
from esper_core.protocols import SlotShape

if TYPE_CHECKING:
    from torch import nn

CATALOG_NAME = "example"
BLUEPRINT_ID = "EX001"

#: The shape of a slot of each kind this blueprint grows in, without the batch dimension.
_SHAPE_LENGTH = {SlotKind.SLOT_KIND_VECTOR: 1, SlotKind.SLOT_KIND_CONV2D: 3}


def gated_bottleneck_descriptor() -> BlueprintDescriptor:
    """A fresh descriptor of EX001 (callers may mutate what they get)."""
    return BlueprintDescriptor(
        blueprint_id=BLUEPRINT_ID,
        name="gated_bottleneck",
        tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
        risk=0.2,
        stage=1,
        description="A bottleneck over the features, gated per sample and feature; the output starts at zero.",
        slot_kinds=[SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_CONV2D],
        catalog=CATALOG_NAME,
        allowed_parameters={
            "reduction": BlueprintParameterBounds(
                min_value=1,
                max_value=8,
                default_value=4,
                integer=True,
                description="features per bottleneck unit: width = max(1, features // reduction)",
            ),
            "gate_bias": BlueprintParameterBounds(
                min_value=-4,
                max_value=4,
                default_value=0,
                description="the gate's initial logit: sigmoid(gate_bias) is how open every gate starts",
            ),
        },
    )


def bottleneck_width(features: int, reduction: float) -> int:
    return max(1, features // int(reduction))


class ExampleCatalog:
    """The one-blueprint catalog. Stateless: every call returns fresh descriptors or a fresh module."""

    name = CATALOG_NAME

    def __repr__(self) -> str:
        return "ExampleCatalog(EX001)"

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        return [gated_bottleneck_descriptor()]

    def resolve(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> dict[str, float]:
        """The complete, checked parameters for ``blueprint_id`` at ``slot``: a missing parameter takes its
        default, an integer one is rounded. ``KeyError`` for an unknown id; ``ValueError`` (naming the blueprint,
        the parameter, the value and the bounds) for an unknown or out-of-bounds parameter, or for a slot this
        blueprint cannot grow in."""
        if blueprint_id != BLUEPRINT_ID:
            raise KeyError(f"catalog {CATALOG_NAME!r} has no blueprint {blueprint_id!r}; it has {BLUEPRINT_ID}")
        descriptor = gated_bottleneck_descriptor()
        where = f"{descriptor.blueprint_id} ({descriptor.name})"
        bounds = descriptor.allowed_parameters
        unknown = sorted(set(parameters) - set(bounds))
        if unknown:
            raise ValueError(f"{where} has no parameter {unknown[0]!r}; its parameters are {', '.join(sorted(bounds))}")
        resolved: dict[str, float] = {}
        for name in sorted(bounds):
            bound = bounds[name]
            value = float(parameters.get(name, bound.default_value))
            if not (math.isfinite(value) and bound.min_value <= value <= bound.max_value):
                raise ValueError(
                    f"{where}: parameter {name} = {value:g} is outside its bounds [{bound.min_value:g}, "
                    f"{bound.max_value:g}]"
                )
            resolved[name] = float(round(value)) if bound.integer else value
        if slot.kind not in descriptor.slot_kinds:
            kinds = ", ".join(SlotKind.Name(kind) for kind in descriptor.slot_kinds)
            raise ValueError(f"{where} does not grow in {slot.describe()} slots; it grows in {kinds}")
        if len(slot.shape) != _SHAPE_LENGTH[slot.kind] or min(slot.shape) < 1:
            raise ValueError(f"{where}: {slot.describe()} is not a valid shape for its slot kind")
        return resolved

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        """A new module mapping ``slot``'s shape to itself, whose output is exactly zero until it trains."""
        resolved = self.resolve(blueprint_id, slot, parameters)
        from esper_example_plugin.modules import GatedBottleneck

        features = slot.shape[0]  # the width of a vector slot, the channels of a conv2d slot
        return GatedBottleneck(
            features,
            bottleneck_width(features, resolved["reduction"]),
            gate_bias=resolved["gate_bias"],
            conv=slot.kind == SlotKind.SLOT_KIND_CONV2D,
        )

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        """Exactly what :meth:`build` creates, without building it: ``down`` (F x W + W), ``gate`` and ``up``
        (W x F + F each); a 1x1 convolution has as many parameters as the linear map it applies per position."""
        resolved = self.resolve(blueprint_id, slot, parameters)
        features = slot.shape[0]
        width = bottleneck_width(features, resolved["reduction"])
        return 3 * features * width + width + 2 * features
