"""Karn: Esper's default blueprint catalog (an :class:`esper_core.protocols.BlueprintCatalog`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from esper_core.leyline import BlueprintDescriptor, BlueprintTier, SlotKind
from esper_core.protocols import SlotShape
from esper_urza.karn.table import Blueprint, default_blueprints
from esper_urza.parameters import check_slot, resolve_parameters, select_descriptors

if TYPE_CHECKING:
    from torch import nn


def copy_descriptor(descriptor: BlueprintDescriptor) -> BlueprintDescriptor:
    copied = BlueprintDescriptor()
    copied.CopyFrom(descriptor)
    return copied


class KarnCatalog:
    """Blueprints of genuinely different seed modules from a zero start: residual ones, each mapping its slot's shape
    to itself, and width ones, each mapping a width slot's read shape to its written shape (new channels or neurons
    between two layers, :class:`esper_core.protocols.WidthSeed` modules).

    ``descriptors()`` lists them all, HIGH_RISK stressors included: what a run may germinate is decided by
    ``urza.allowed_tiers`` (default ``["SAFE"]``) where the controller and the seed executor read it.
    """

    name = "karn"

    def __init__(self, blueprints: Iterable[Blueprint] | None = None) -> None:
        self._blueprints: dict[str, Blueprint] = {}
        for item in default_blueprints() if blueprints is None else blueprints:
            blueprint_id = item.descriptor.blueprint_id
            if blueprint_id in self._blueprints:
                raise ValueError(f"blueprint id {blueprint_id} is declared twice")
            self._blueprints[blueprint_id] = item

    def __repr__(self) -> str:
        return f"KarnCatalog({len(self._blueprints)} blueprints)"

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        """Copies of every descriptor, in id order."""
        return [copy_descriptor(item.descriptor) for _, item in sorted(self._blueprints.items())]

    def descriptor(self, blueprint_id: str) -> BlueprintDescriptor:
        return copy_descriptor(self.blueprint(blueprint_id).descriptor)

    def blueprint(self, blueprint_id: str) -> Blueprint:
        try:
            return self._blueprints[blueprint_id]
        except KeyError:
            known = ", ".join(sorted(self._blueprints))
            raise KeyError(f"catalog 'karn' has no blueprint {blueprint_id!r}; it has {known}") from None

    def query(
        self,
        *,
        tiers: Iterable[str | BlueprintTier.ValueType] | None = None,
        slot_kind: SlotKind.ValueType | None = None,
        max_risk: float | None = None,
        slot: SlotShape | None = None,
    ) -> list[BlueprintDescriptor]:
        """Descriptors filtered by tier (names or enum values), the slot kind they write into, maximum risk, and the
        slot they must fit (``slot``: its growth mode, and for a width slot the kinds it reads and writes)."""
        return select_descriptors(self.descriptors(), tiers=tiers, slot_kind=slot_kind, max_risk=max_risk, slot=slot)

    def resolve(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> dict[str, float]:
        """The full, checked parameter set for building ``blueprint_id`` at ``slot`` (raises like ``build``)."""
        descriptor = self.blueprint(blueprint_id).descriptor
        resolved = resolve_parameters(descriptor, parameters)
        check_slot(descriptor, slot)
        return resolved

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        """A new module for ``slot`` whose output starts at zero. ``KeyError`` for an unknown id; ``ValueError`` for
        a bad parameter or a slot the blueprint does not grow in (another growth mode, a kind it does not write or
        read, shapes it cannot map)."""
        resolved = self.resolve(blueprint_id, slot, parameters)
        return self._blueprints[blueprint_id].builder(slot, resolved)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        """The exact number of trainable parameters ``build`` would create, computed without building."""
        resolved = self.resolve(blueprint_id, slot, parameters)
        return int(self._blueprints[blueprint_id].counter(slot, resolved))
