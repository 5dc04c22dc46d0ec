"""Rating on first use: the sheet of a blueprint at a slot of this run, from the sheet store or measured now.

A run's artifact store answers Tamiyo's :class:`esper_core.safety.SafetySheetSource` questions through a
:class:`SheetRater`. The first time a blueprint is asked about at a slot, the rater reads its stored sheet (signed,
of this catalog version); without one it measures the blueprint there (the crucible, a few hundred milliseconds at
most for an ordinary blueprint), signs the sheet with the run's key and stores it for later runs. The answer is then
remembered for the run.

Measuring happens at the decision point that asks, synchronously, so a run decides the same way whenever it is
resumed or repeated (the sheets it measured are stored by then). ``first_use_budget_s`` bounds the whole run's
measuring: once spent, blueprints without a stored sheet are answered None, and the risk engine falls back to their
declared risk (and says so). A stored sheet that cannot be trusted (another secret signed it: a run without
``ESPER_LEYLINE_SECRET`` signs with a key of its own) is measured again and replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from esper_core.leyline import BSDS, BlueprintDescriptor
from esper_core.plugins import Registry
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_core.signing import SigningKey
from esper_urza.options import UrabraskOptions
from esper_urza.parameters import artifact_key, resolve_parameters
from esper_urza.urabrask.store import SheetRefused, SheetStore

__all__ = ["SheetRater", "catalog_version"]

log = logging.getLogger("esper.urza.urabrask")


def catalog_version(registry: Registry, name: str) -> str:
    """The version a sheet of catalog ``name`` is valid for: the distribution that provides the catalog and its
    version (``"esper-urza 0.1.0"``), or the plugin's name when it was registered directly."""
    provider = registry.provider_of(registry.blueprint_catalog(name))
    return f"{provider.distribution or provider.name} {provider.version or ''}".strip()


class SheetRater:
    """Sheets of ``catalogs``' blueprints at this run's slots (see the module); ``versions`` maps a catalog's name to
    its version (the providing distribution and version)."""

    def __init__(
        self,
        root: Path,
        key: SigningKey,
        catalogs: Iterable[BlueprintCatalog],
        *,
        versions: Mapping[str, str] | None = None,
        options: UrabraskOptions | None = None,
    ) -> None:
        self.store = SheetStore(root, key)
        self.key = key
        self.options = options or UrabraskOptions()
        self.versions = dict(versions or {})
        self._blueprints: dict[str, tuple[BlueprintCatalog, BlueprintDescriptor]] = {}
        for catalog in catalogs:
            for descriptor in catalog.descriptors():
                self._blueprints.setdefault(descriptor.blueprint_id, (catalog, descriptor))
        self._known: dict[str, BSDS | None] = {}
        #: Seconds spent measuring in this run, and the sheets measured (not read from the store).
        self.spent_s = 0.0
        self.measured = 0

    def _keyed(self, blueprint_id: str, slot: SlotShape) -> tuple[BlueprintCatalog, str] | None:
        """The blueprint's catalog and the artifact key of its default parameters at ``slot`` (what a sheet is stored
        under); None for a blueprint no catalog of the run offers, or whose defaults do not resolve."""
        found = self._blueprints.get(blueprint_id)
        if found is None:
            return None
        catalog, descriptor = found
        try:
            parameters = resolve_parameters(descriptor, {})
        except ValueError:
            return None
        return catalog, artifact_key(catalog.name, blueprint_id, parameters, slot)

    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        keyed = self._keyed(blueprint_id, slot)
        if keyed is None:
            return None
        catalog, key = keyed
        if key not in self._known:
            self._known[key] = self._stored(key, catalog.name) or self._measure(catalog, blueprint_id, slot)
        return self._known[key]

    def stored_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The sheet :meth:`safety_sheet` gives without measuring: the one this run already has, or the stored one
        (then remembered for the run); None otherwise, and for a stored sheet that cannot be trusted
        (:class:`esper_core.safety.StoredSheetSource`)."""
        keyed = self._keyed(blueprint_id, slot)
        if keyed is None:
            return None
        catalog, key = keyed
        if key in self._known:
            return self._known[key]
        try:
            sheet = self.store.get(key, self.versions.get(catalog.name, ""))
        except SheetRefused:  # measured again when the risk engine asks for it (safety_sheet)
            return None
        if sheet is not None:
            self._known[key] = sheet
        return sheet

    def stored_sheets(self, blueprint_id: str) -> tuple[list[BSDS], list[str]]:
        """The trusted stored sheets of ``blueprint_id``, and why the others were refused
        (:class:`esper_core.safety.StoredSheets`)."""
        sheets, refused = [], []
        for _, found in self.store.sheets():
            if isinstance(found, SheetRefused):
                refused.append(str(found))
            elif found.blueprint_id == blueprint_id:
                sheets.append(found)
        return sheets, refused

    def _stored(self, key: str, catalog: str) -> BSDS | None:
        try:
            return self.store.get(key, self.versions.get(catalog, ""))
        except SheetRefused as refused:
            log.info("urabrask: measuring again: %s", refused)
            return None

    def _measure(self, catalog: BlueprintCatalog, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        if not self.options.rate_on_first_use or self.spent_s >= self.options.first_use_budget_s:
            return None
        from esper_urza.urabrask.crucible import measure_blueprint
        from esper_urza.urabrask.sheet import safety_data_sheet, sign_sheet

        try:
            result = measure_blueprint(catalog, blueprint_id, slot)
        except (KeyError, ValueError):  # a slot this blueprint does not grow in: nothing to rate
            return None
        self.spent_s += result.elapsed_s
        self.measured += 1
        sheet = sign_sheet(safety_data_sheet(result, catalog_version=self.versions.get(catalog.name, "")), self.key)
        self.store.put(sheet)
        log.info("urabrask: rated %s at %s: %s", blueprint_id, slot.describe(), sheet.recommendation)
        return sheet
