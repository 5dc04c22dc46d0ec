"""Which blueprint can grow in which slot: the contract facts of residual and width growth, on the Leyline messages.

A residual slot reads and writes one activation (``h <- h + s(h)``); a width slot reads an earlier activation and
adds to a later one (``z_B <- z_B + s(a_A)``: new channels or neurons between two layers). A slot is a width slot
exactly when its ``read_shape`` is set. A blueprint declares its :class:`GrowthMode` and, as ``slot_kinds``, the kinds
of activation it can write into (and, for width blueprints, ``read_kinds``, the kinds it can read); an empty list
means any kind. Tamiyo's policies, Kasmina's G0 and the conformance suites all decide with :func:`fits`.
"""

from __future__ import annotations

import attrs

from esper_core.leyline import BlueprintDescriptor, GrowthMode, SlotKind, value_name
from esper_core.protocols import SlotShape

RESIDUAL = GrowthMode.GROWTH_MODE_RESIDUAL
WIDTH = GrowthMode.GROWTH_MODE_WIDTH

#: Separates a width slot point's read point from its write point: ``"blocks.0:input->blocks.1.0"``.
ARROW = "->"
SIDES = ("input", "output")


@attrs.frozen
class SlotPoint:
    """Where a slot grows, as a task names it.

    ``"path"`` is a residual slot at a module's output. ``"READ->WRITE"`` is a width slot: the seed reads ``READ``
    (``"path"``, a module's output, or ``"path:input"``, its input) and adds to ``WRITE``'s output; ``READ`` must run
    before ``WRITE`` in the forward pass.
    """

    write: str
    read: str | None = None
    read_side: str = "output"

    @classmethod
    def parse(cls, text: str) -> SlotPoint:
        """The slot point ``text`` names; ``ValueError`` saying how to write it when it is malformed."""
        if ARROW not in text:
            if not text.strip():
                raise ValueError("an empty slot point: name a module path such as 'blocks.1'")
            return cls(text.strip())
        read_text, _, write = (part.strip() for part in text.partition(ARROW))
        path, _, side = read_text.partition(":")
        side = side.strip() or "output"
        if not path.strip() or not write or ARROW in write or side not in SIDES:
            raise ValueError(
                f"slot point {text!r} is not READ->WRITE: write it as 'module.path->later.module' or "
                "'module.path:input->later.module' (READ's output or its input; WRITE's output)"
            )
        return cls(write, path.strip(), side)

    @property
    def is_width(self) -> bool:
        return self.read is not None

    @property
    def modules(self) -> tuple[str, ...]:
        """The module paths it names."""
        return (self.write,) if self.read is None else (self.read, self.write)

    def slot_id(self) -> str:
        """Its canonical text, the slot's id (spaces dropped; the read side spelled out only for an input)."""
        if self.read is None:
            return self.write
        return f"{self.read}{':input' if self.read_side == 'input' else ''}{ARROW}{self.write}"


def mode_of(descriptor: BlueprintDescriptor) -> GrowthMode.ValueType:
    """The blueprint's growth mode (an unset mode is RESIDUAL: every blueprint was, before width seeds)."""
    return WIDTH if descriptor.growth_mode == WIDTH else RESIDUAL


def slot_mode(slot: SlotShape) -> GrowthMode.ValueType:
    return WIDTH if slot.is_width else RESIDUAL


def misfit(descriptor: BlueprintDescriptor, slot: SlotShape) -> str | None:
    """Why ``descriptor`` cannot grow in ``slot`` (``None`` when it can)."""
    blueprint, wanted = mode_of(descriptor), slot_mode(slot)
    if blueprint != wanted:
        return (
            f"{descriptor.blueprint_id} is a {_mode_name(blueprint)} blueprint and {slot.describe()} is a "
            f"{_mode_name(wanted)} slot"
        )
    if descriptor.slot_kinds and slot.kind not in descriptor.slot_kinds:
        kinds = ", ".join(_kind_name(kind) for kind in descriptor.slot_kinds)
        return f"{descriptor.blueprint_id} writes into {kinds} activations, not {_kind_name(slot.kind)}"
    if wanted == WIDTH and descriptor.read_kinds and slot.read_kind not in descriptor.read_kinds:
        kinds = ", ".join(_kind_name(kind) for kind in descriptor.read_kinds)
        return f"{descriptor.blueprint_id} reads {kinds} activations, not {_kind_name(slot.read_kind)}"
    return None


def fits(descriptor: BlueprintDescriptor, slot: SlotShape) -> bool:
    """Whether ``descriptor`` can grow in ``slot``: the same growth mode, and kinds it can read and write."""
    return misfit(descriptor, slot) is None


def _mode_name(mode: GrowthMode.ValueType) -> str:
    return value_name(GrowthMode, mode, "GROWTH_MODE_").lower()


def _kind_name(kind: SlotKind.ValueType) -> str:
    return value_name(SlotKind, kind, "SLOT_KIND_").lower()
