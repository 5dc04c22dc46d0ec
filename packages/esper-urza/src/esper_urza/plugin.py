"""Registers esper-urza with Esper through the ``esper`` entry-point group.

- blueprint catalog ``karn``: Esper's default catalog (``urza.catalogs = ["karn"]``);
- artifact store ``urza``: the artifact library (``urza.store = "urza"``), options in ``[urza]``;
- artifact store ``urza-prefetch``: asks ``esper serve urza`` for artifacts over the bus and opens them from the
  shared ``urza.root`` (``urza.store = "urza-prefetch"``), options in ``[urza.prefetch]``;
- service ``urza``: ``esper serve urza`` answers prefetch requests from the library at ``urza.root``;
- command ``esper urabrask bench``: measures blueprints and stores their signed safety data sheets under ``urza.root``.

Importing this module is cheap (no torch): factories import what they need when a run builds its components.

The ``urza`` store is given the run's bus, and publishes its events there itself (a corrupt artifact evicted, a
refused build, a repair when it opened), so that Tolaria relays them to the run's sinks with everything else on the
telemetry stream. What it reports while the run is being assembled (the repairs of opening) waits until someone
listens: this plugin publishes it when the run starts (``esper_tolaria_run_started``), after Tolaria subscribed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_core import hookimpl
from esper_core.errors import ConfigError, EsperError
from esper_core.plugins import (
    ArtifactStoreSpec,
    BlueprintCatalogSpec,
    BuildContext,
    CliCommandSpec,
    RunInfo,
    ServiceSpec,
)
from esper_urza.options import PrefetchOptions, UrzaOptions

if TYPE_CHECKING:
    from esper_core.leyline import AdaptationCommand, CommandResult, SystemStatePacket
    from esper_urza.library import UrzaLibrary

#: The libraries built for runs, by run id, while the run lives: their telemetry is published when the run starts
#: (what opening them repaired) and at each decision point.
_RUN_LIBRARIES: weakref.WeakValueDictionary[str, UrzaLibrary] = weakref.WeakValueDictionary()


def build_karn(context: BuildContext) -> Any:
    from esper_urza.karn import KarnCatalog

    return KarnCatalog()


def library_root(options: UrzaOptions, run_dir: Path | None) -> Path:
    if options.root is not None:
        return Path(options.root)
    if run_dir is not None:
        return Path(run_dir) / "urza"
    raise ConfigError(
        "the Urza artifact library needs a directory: set urza.root (e.g. --set urza.root=/var/esper/urza or "
        "ESPER_URZA__ROOT); only inside a run does it default to the run's directory (<run>/urza), so "
        "`esper serve urza` always needs it"
    )


def build_library(context: BuildContext) -> Any:
    from esper_urza.library import UrzaLibrary

    options = context.options if isinstance(context.options, UrzaOptions) else UrzaOptions()
    run_id = str(context.services.get("training_run_id") or "")
    library = UrzaLibrary(
        library_root(options, context.run_dir),
        context.blueprint_catalogs(),
        options=options,
        bus=context.bus,
        training_run_id=run_id,
    )
    if run_id and context.bus is not None:
        _RUN_LIBRARIES[run_id] = library
    library.sheets = sheet_rater(context, library.root, options)
    return library


def sheet_rater(context: BuildContext, root: Path, options: UrzaOptions) -> Any:
    """Urabrask's rater of the run's catalogs: sheets signed with the shared secret (or, without one, a key of this
    process's own, so that no other process's sheet is trusted), versioned by the providing distribution."""
    from esper_core.plugins.selectors import UrzaSelection
    from esper_core.security_options import SecurityOptions
    from esper_core.signing import SigningKey
    from esper_urza.urabrask.rating import SheetRater, catalog_version

    config = context.config
    secret_env = config.get(SecurityOptions).secret_env if config is not None else SecurityOptions().secret_env
    key = SigningKey.resolve(required=False, var=secret_env)
    names = config.get(UrzaSelection).catalogs if config is not None else []
    versions = {name: catalog_version(context.registry, name) for name in names}
    return SheetRater(root, key, context.blueprint_catalogs(), versions=versions, options=options.urabrask)


def build_prefetch_store(context: BuildContext) -> Any:
    from esper_urza.prefetch import build_prefetch_store

    return build_prefetch_store(context)


def build_service(context: BuildContext) -> Any:
    from esper_urza.service import build_service

    return build_service(context)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def service_preflight(context: BuildContext) -> Iterator[str]:
    """What ``esper serve urza`` checks before starting: a usable ``urza.root`` and installed catalogs. Creates
    nothing (``--check`` must not)."""
    options = context.options if isinstance(context.options, UrzaOptions) else UrzaOptions()
    root = options.root
    if root is None:
        yield (
            "urza.root is not set: the service stores artifacts in a library directory that the training processes "
            "fetching through it (urza.store = 'urza-prefetch') open too; give both the same path, e.g. "
            "--set urza.root=/var/esper/urza or ESPER_URZA__ROOT"
        )
    elif root.exists() and not root.is_dir():
        yield f"urza.root = {str(root)!r} is not a directory"
    else:
        existing = _nearest_existing(root.absolute())
        if not os.access(existing, os.W_OK | os.X_OK):
            where = "it" if existing == root.absolute() else f"{str(existing)!r}, where it would be created,"
            yield f"urza.root = {str(root)!r} is not writable: {where} is not writable by this user"
    if context.config is not None:
        from esper_core.plugins.selectors import UrzaSelection

        for name in context.config.get(UrzaSelection).catalogs:
            try:
                context.registry.blueprint_catalog(name)
            except EsperError as error:
                yield f"urza.catalogs names {name!r}: {error}"


@hookimpl
def esper_tolaria_run_started(run: RunInfo) -> None:
    """Publish what the run's library reported while the run was assembled (the repairs of opening it): Tolaria
    subscribes to the telemetry stream only after it built the store, so that is the first moment it is heard."""
    library = _RUN_LIBRARIES.get(run.run_id)
    if library is not None:
        library.publish_telemetry()


@hookimpl
def esper_tolaria_decision(state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> None:
    """Publish the run's library telemetry once per decision point, if it fetched or reported anything since: the
    fetch latencies of this decision point's germination reach the sinks with it (never a publication per fetch)."""
    library = _RUN_LIBRARIES.get(state.training_run_id)
    if library is not None:
        library.publish_telemetry()


@hookimpl
def esper_tolaria_run_finished(run: RunInfo, summary: Mapping[str, float]) -> None:
    _RUN_LIBRARIES.pop(run.run_id, None)


@hookimpl
def esper_core_cli_commands() -> Iterator[CliCommandSpec]:
    from esper_urza.urabrask.cli import HELP, configure_urabrask, run_urabrask

    yield CliCommandSpec(name="urabrask", help=HELP, configure=configure_urabrask, run=run_urabrask)


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
    yield ArtifactStoreSpec(
        name="urza-prefetch",
        factory=build_prefetch_store,
        options=PrefetchOptions,
        description=(
            "Asks `esper serve urza` for artifacts over the bus (oona.backend shared with it) and opens them, "
            "checksum-verified, from the library directory it shares with the service (urza.root)."
        ),
    )


@hookimpl
def esper_weatherlight_services() -> Iterator[ServiceSpec]:
    yield ServiceSpec(
        name="urza",
        factory=build_service,
        options=UrzaOptions,
        requires=("torch",),
        preflight=service_preflight,
        description=(
            "Answers kernel prefetch requests: fetches (building on a miss) from the library at urza.root and "
            "replies with the stored artifact's key and SHA-256, or with the reason it could not."
        ),
    )
