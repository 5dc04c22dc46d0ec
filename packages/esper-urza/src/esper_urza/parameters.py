"""Blueprint parameters and slots: validation against a descriptor, and the canonical form artifact keys use.

Any catalog can use these (they depend only on Leyline): parameters arrive as floats (Leyline maps are double);
a missing one takes its bound's ``default_value``; an integer-bounded one is rounded; an unknown name or an
out-of-bounds value is a ``ValueError`` naming the blueprint, the parameter, the value and the bounds; a slot kind
the blueprint does not grow in is a ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, SlotKind
from esper_core.protocols import SlotShape

#: Dimensions of a slot's shape (batch excluded) for each kind.
SLOT_RANKS: dict[SlotKind.ValueType, int] = {
    SlotKind.SLOT_KIND_CONV2D: 3,
    SlotKind.SLOT_KIND_VECTOR: 1,
    SlotKind.SLOT_KIND_SEQUENCE: 2,
}

_TOLERANCE = 1e-9


def kind_name(kind: SlotKind.ValueType) -> str:
    """``"conv2d"``, ``"vector"`` or ``"sequence"``."""
    return SlotKind.Name(kind).removeprefix("SLOT_KIND_").lower()


def kind_from_name(name: str) -> SlotKind.ValueType:
    try:
        return SlotKind.Value("SLOT_KIND_" + name.strip().upper())
    except ValueError:
        known = ", ".join(kind_name(kind) for kind in SLOT_RANKS)
        raise ValueError(f"unknown slot kind {name!r}; known: {known}") from None


def tier_name(tier: BlueprintTier.ValueType) -> str:
    """``"SAFE"``, ``"EXPERIMENTAL"`` or ``"HIGH_RISK"``."""
    return BlueprintTier.Name(tier).removeprefix("BLUEPRINT_TIER_")


def tier_from_name(name: str | int) -> BlueprintTier.ValueType:
    if isinstance(name, int):
        return BlueprintTier.ValueType(name)
    try:
        return BlueprintTier.Value("BLUEPRINT_TIER_" + name.strip().upper())
    except ValueError:
        raise ValueError(f"unknown blueprint tier {name!r}; known: SAFE, EXPERIMENTAL, HIGH_RISK") from None


def select_descriptors(
    descriptors: Iterable[BlueprintDescriptor],
    *,
    tiers: Iterable[str | BlueprintTier.ValueType] | None = None,
    slot_kind: SlotKind.ValueType | None = None,
    max_risk: float | None = None,
) -> list[BlueprintDescriptor]:
    """The descriptors in one of ``tiers`` (names or enum values), growing in ``slot_kind``, no riskier than
    ``max_risk``; a filter left as ``None`` passes everything. Catalogs and the library query with it."""
    wanted = None if tiers is None else {tier_from_name(tier) for tier in tiers}
    return [
        descriptor
        for descriptor in descriptors
        if (wanted is None or descriptor.tier in wanted)
        and (slot_kind is None or slot_kind in descriptor.slot_kinds)
        and (max_risk is None or descriptor.risk <= max_risk)
    ]


def describe_blueprint(descriptor: BlueprintDescriptor) -> str:
    return f"{descriptor.blueprint_id} ({descriptor.name})" if descriptor.name else descriptor.blueprint_id


def describe_bounds(bound: BlueprintParameterBounds) -> str:
    kind = "integer " if bound.integer else ""
    return f"{kind}[{bound.min_value:g}, {bound.max_value:g}]"


def resolve_parameters(descriptor: BlueprintDescriptor, parameters: Mapping[str, float]) -> dict[str, float]:
    """Every declared parameter of ``descriptor`` with its value: given ones checked, missing ones defaulted,
    integer ones rounded. Keys come out sorted."""
    bounds = descriptor.allowed_parameters
    where = describe_blueprint(descriptor)
    for name in parameters:
        if name not in bounds:
            declared = ", ".join(f"{n} {describe_bounds(bounds[n])}" for n in sorted(bounds)) or "none"
            raise ValueError(
                f"{where} has no parameter {name!r} (given {parameters[name]!r}); its parameters: {declared}"
            )
    resolved: dict[str, float] = {}
    for name in sorted(bounds):
        bound = bounds[name]
        if name in parameters:
            raw = parameters[name]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: parameter {name!r} = {raw!r} is not a number") from None
            slack = _TOLERANCE * max(1.0, abs(bound.min_value), abs(bound.max_value))
            if not math.isfinite(value) or not bound.min_value - slack <= value <= bound.max_value + slack:
                raise ValueError(
                    f"{where}: parameter {name!r} = {value!r} is outside its bounds {describe_bounds(bound)}"
                )
            value = min(max(value, bound.min_value), bound.max_value)
        else:
            value = float(bound.default_value)
        if bound.integer:
            value = float(min(max(round(value), math.ceil(bound.min_value)), math.floor(bound.max_value)))
        resolved[name] = value
    return resolved


def check_slot(descriptor: BlueprintDescriptor, slot: SlotShape) -> None:
    """Raise ``ValueError`` unless ``descriptor`` grows in ``slot``'s kind and the shape is well formed."""
    rank = SLOT_RANKS.get(slot.kind)
    if rank is None:
        raise ValueError(f"{describe_blueprint(descriptor)}: unsupported slot kind {slot.kind}")
    if slot.kind not in descriptor.slot_kinds:
        supported = ", ".join(kind_name(kind) for kind in descriptor.slot_kinds) or "none"
        raise ValueError(
            f"{describe_blueprint(descriptor)} does not grow in {kind_name(slot.kind)} slots "
            f"(asked for {slot.describe()}); it supports: {supported}"
        )
    if len(slot.shape) != rank or any(int(size) < 1 for size in slot.shape):
        raise ValueError(
            f"{describe_blueprint(descriptor)}: a {kind_name(slot.kind)} slot has {rank} positive dimensions "
            f"(batch excluded), got {list(slot.shape)}"
        )


def artifact_key(catalog: str, blueprint_id: str, parameters: Mapping[str, float], slot: SlotShape) -> str:
    """The SHA-256 (hex) naming one artifact: catalog, blueprint, canonical parameters, slot kind and shape."""
    canonical = json.dumps(
        {
            "catalog": catalog,
            "blueprint": blueprint_id,
            "parameters": {name: float(parameters[name]) for name in sorted(parameters)},
            "kind": kind_name(slot.kind),
            "shape": [int(size) for size in slot.shape],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
