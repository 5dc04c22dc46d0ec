"""What a controller may ask about a blueprint's *measured* safety: Urabrask's safety data sheets (the Leyline
``BSDS``), through whatever the run offers them, usually its artifact store.

A catalog declares a tier and a risk for each blueprint; a third-party catalog can declare anything. A sheet says
what the blueprint was measured to do at a slot. Tamiyo's risk engine prefers the sheet and falls back to the
declared risk only where there is none, and says which it used. Tamiyo's controller also shows its policy a summary
of the sheets already known for the blueprints it offers (:class:`StoredSheetSource`), without measuring anything.
The protocols live in core so that Tamiyo can ask without importing the package that measures (the walls:
subsystems meet only through core).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from esper_core.leyline import BSDS
    from esper_core.protocols import SlotShape


@runtime_checkable
class SafetySheetSource(Protocol):
    """Gives the measured sheet of a blueprint at a slot (with its default parameters), or None."""

    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The sheet if one is known or can be measured now within the source's budget; None otherwise (a
        blueprint it does not know, a slot it does not grow in, the budget spent). Never raises for a blueprint
        that misbehaves: measuring that is the point."""
        ...


@runtime_checkable
class StoredSheetSource(Protocol):
    """Gives the sheet of a blueprint at a slot only when one is already known: what Tamiyo's controller shows its
    policy (``SeedState.measured_blueprints``) must never cost a measurement."""

    def stored_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The sheet :meth:`SafetySheetSource.safety_sheet` would give from what is stored (or was measured earlier
        in this process), None otherwise. Never measures, and never raises for a stored sheet it cannot trust (that
        is None too)."""
        ...


@runtime_checkable
class StoredSheets(Protocol):
    """Lists the sheets kept for a blueprint (``esper blueprints --sheet ID``)."""

    def stored_sheets(self, blueprint_id: str) -> tuple[Sequence[BSDS], Sequence[str]]:
        """Every trusted stored sheet of ``blueprint_id`` (one per slot and parameters it was measured at), and why
        each stored sheet that cannot be trusted was refused (its file named)."""
        ...
