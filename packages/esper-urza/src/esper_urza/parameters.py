"""Blueprint parameters and slots: validation against a descriptor, and the canonical form artifact keys use.

Any catalog can use these (they depend only on Leyline): parameters arrive as floats (Leyline maps are double);
a missing one takes its bound's ``default_value``; an integer-bounded one is rounded; an unknown name or an
out-of-bounds value is a ``ValueError`` naming the blueprint, the parameter, the value and the bounds; a slot the
blueprint does not grow in (another growth mode, a kind it does not write or read, a malformed shape) is a
``ValueError``.

A width slot's artifacts are distinct from a residual slot's: the key and the guard name the read side too. A
residual slot's key is computed exactly as before width slots existed, so stored residual artifacts keep their keys.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, SlotKind, growth
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
    slot: SlotShape | None = None,
) -> list[BlueprintDescriptor]:
    """The descriptors in one of ``tiers`` (names or enum values), writing into ``slot_kind`` activations (residual
    and width blueprints alike), no riskier than ``max_risk``, and fitting ``slot`` (its growth mode and the kinds
    it writes and reads: :func:`esper_core.leyline.growth.fits`); a filter left as ``None`` passes everything.
    Catalogs and the library query with it."""
    wanted = None if tiers is None else {tier_from_name(tier) for tier in tiers}
    return [
        descriptor
        for descriptor in descriptors
        if (wanted is None or descriptor.tier in wanted)
        and (slot_kind is None or slot_kind in descriptor.slot_kinds)
        and (max_risk is None or descriptor.risk <= max_risk)
        and (slot is None or growth.fits(descriptor, slot))
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
    """Raise ``ValueError`` unless ``descriptor`` grows in ``slot``: the same growth mode (a width blueprint only in
    a width slot, a residual one only in a residual slot), a kind it writes into (and, for a width slot, a kind it
    reads; an empty list of kinds means any), and well-formed shapes on both sides."""
    where = describe_blueprint(descriptor)
    _check_shape(where, slot.kind, slot.shape, "slot")
    mode, wanted = growth.mode_of(descriptor), growth.slot_mode(slot)
    if mode != wanted:
        if mode == growth.WIDTH:
            hint = (
                "a width blueprint reads one activation and writes into a later one: name a width slot "
                "(READ->WRITE, e.g. 'blocks.0:input->blocks.1.0'), or choose a residual blueprint"
            )
        else:
            hint = "a residual blueprint maps one activation to itself: choose a width blueprint for a width slot"
        raise ValueError(f"{growth.misfit(descriptor, slot)}; {hint}")
    if descriptor.slot_kinds and slot.kind not in descriptor.slot_kinds:
        supported = ", ".join(kind_name(kind) for kind in descriptor.slot_kinds)
        raise ValueError(
            f"{where} does not grow in {kind_name(slot.kind)} slots (asked for {slot.describe()}); it supports: "
            f"{supported}"
        )
    if slot.is_width:
        _check_shape(where, slot.read_kind, slot.read_shape, "read")
        if descriptor.read_kinds and slot.read_kind not in descriptor.read_kinds:
            supported = ", ".join(kind_name(kind) for kind in descriptor.read_kinds)
            raise ValueError(
                f"{where} does not read {kind_name(slot.read_kind)} activations (asked for {slot.describe()}); it "
                f"reads: {supported}"
            )


def _check_shape(where: str, kind: SlotKind.ValueType, shape: tuple[int, ...], side: str) -> None:
    rank = SLOT_RANKS.get(kind)
    if rank is None:
        known = ", ".join(kind_name(known) for known in SLOT_RANKS)
        raise ValueError(f"{where}: unsupported {side} kind {kind} (known: {known})")
    if len(shape) != rank or any(int(size) < 1 for size in shape):
        what = f"a {kind_name(kind)} slot" if side == "slot" else f"a {kind_name(kind)} read activation"
        raise ValueError(f"{where}: {what} has {rank} positive dimensions (batch excluded), got {list(shape)}")


def artifact_key(catalog: str, blueprint_id: str, parameters: Mapping[str, float], slot: SlotShape) -> str:
    """The SHA-256 (hex) naming one artifact: catalog, blueprint, canonical parameters, slot kind and shape, and for
    a width slot the read kind and shape (a residual slot's key leaves them out, as it did before width slots)."""
    fields: dict[str, object] = {
        "catalog": catalog,
        "blueprint": blueprint_id,
        "parameters": {name: float(parameters[name]) for name in sorted(parameters)},
        "kind": kind_name(slot.kind),
        "shape": [int(size) for size in slot.shape],
    }
    if slot.is_width:
        fields["read_kind"] = kind_name(slot.read_kind)
        fields["read_shape"] = [int(size) for size in slot.read_shape]
    canonical = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
