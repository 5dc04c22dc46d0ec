"""Registers esper-urza with Esper through the ``esper`` entry-point group.

- blueprint catalog ``karn``: Esper's default catalog (``urza.catalogs = ["karn"]``);
- artifact store ``urza``: the artifact library (``urza.store = "urza"``), options in ``[urza]``.

Importing this module is cheap (no torch): factories import what they need when a run builds its components.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from esper_core import hookimpl
from esper_core.errors import ConfigError
from esper_core.plugins import ArtifactStoreSpec, BlueprintCatalogSpec, BuildContext
from esper_urza.options import UrzaOptions


def build_karn(context: BuildContext) -> Any:
    from esper_urza.karn import KarnCatalog

    return KarnCatalog()


def run_catalogs(context: BuildContext) -> list[Any]:
    """The run's catalogs: ``context.services["catalogs"]`` when the run built them, else those named by
    ``urza.catalogs``, built through the registry."""
    catalogs = context.services.get("catalogs")
    if catalogs is not None:
        return list(catalogs)
    from esper_core.components import UrzaSelection

    selection = context.config.get(UrzaSelection) if context.config is not None else UrzaSelection()
    registry = context.registry
    return [registry.build(registry.blueprint_catalog(name), config=context.config) for name in selection.catalogs]


def library_root(options: UrzaOptions, run_dir: Path | None) -> Path:
    if options.root is not None:
        return Path(options.root)
    if run_dir is not None:
        return Path(run_dir) / "urza"
    raise ConfigError(
        "the Urza artifact library needs a directory: set urza.root (e.g. --set urza.root=/var/esper/urza or "
        "ESPER_URZA__ROOT) or build it inside a run, whose directory it then uses (<run>/urza)"
    )


def build_library(context: BuildContext) -> Any:
    from esper_urza.library import UrzaLibrary

    options = context.options if isinstance(context.options, UrzaOptions) else UrzaOptions()
    return UrzaLibrary(library_root(options, context.run_dir), run_catalogs(context), options=options)


@hookimpl
def esper_urza_blueprint_catalogs() -> Iterator[BlueprintCatalogSpec]:
    yield BlueprintCatalogSpec(
        name="karn",
        factory=build_karn,
        description=(
            "Esper's default catalog: genuinely different seed modules (convolutional, attention, MLP, adapter, "
            "normalization and sequence blueprints) plus quarantine-only HIGH_RISK stressors."
        ),
    )


@hookimpl
def esper_urza_artifact_stores() -> Iterator[ArtifactStoreSpec]:
    yield ArtifactStoreSpec(
        name="urza",
        factory=build_library,
        options=UrzaOptions,
        description=(
            "The artifact library: SQLite catalog + SHA-256-checked artifact files, crash-safe writes, an "
            "in-memory LRU cache, and Tezzeret building on a miss."
        ),
    )
