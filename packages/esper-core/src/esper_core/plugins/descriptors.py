"""Frozen descriptors that provider hooks contribute: a unique, normalized ``name`` plus a ``factory``.

A run configuration selects implementations by name; the registry calls the chosen factory once, at setup, with a
:class:`BuildContext`, and the training loop then holds the plain object it returned. Descriptors never do work
when created, so listing plugins (``esper plugins``) is cheap and imports no heavy libraries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from esper_core.config import EsperConfig
    from esper_core.plugins.registry import Registry

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def normalize_name(name: str) -> str:
    """Lower-case, trimmed, with ``_`` read as ``-``: ``"Fixed_Schedule "`` and ``"fixed-schedule"`` are one name."""
    return name.strip().lower().replace("_", "-")


def _validated_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a component name must be a string, got {type(name).__name__}")
    normalized = normalize_name(name)
    if not _NAME_PATTERN.match(normalized):
        raise ValueError(
            f"invalid component name {name!r}: use letters, digits, '-' or '_', starting with a letter or digit"
        )
    return normalized


@attrs.frozen(kw_only=True)
class BuildContext:
    """What a factory receives: the registry, the resolved configuration, and the run's shared services.

    Fields other than ``registry`` may be ``None`` when a component is built outside a run (in tests, or by
    ``esper blueprints``); factories that need one raise a clear error when it is missing.
    """

    registry: Registry
    config: EsperConfig | None = None
    #: The validated options of the component being built (an instance of its descriptor's ``options`` class).
    options: Any = None
    run_dir: Path | None = None
    #: The run's :class:`esper_core.signing.SigningKey`.
    signing_key: Any = None
    #: The run's :class:`esper_core.oona.Oona` bus.
    bus: Any = None
    #: Named services shared within one run (for example the seed executor for a controller that needs it).
    services: dict[str, Any] = attrs.field(factory=dict)

    def blueprint_catalogs(self) -> list[Any]:
        """The run's blueprint catalogs: those the run passed (``services["catalogs"]``) when it built them once
        for every component, else those named by ``urza.catalogs``, built through the registry."""
        catalogs = self.services.get("catalogs")
        if catalogs is not None:
            return list(catalogs)
        from esper_core.plugins.selectors import UrzaSelection

        selection = self.config.get(UrzaSelection) if self.config is not None else UrzaSelection()
        return [
            self.registry.build(self.registry.blueprint_catalog(name), config=self.config)
            for name in selection.catalogs
        ]


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """Base of every descriptor."""

    name: str = attrs.field(converter=_validated_name)
    factory: Callable[[BuildContext], Any]
    description: str = ""
    #: An attrs class decorated with :func:`esper_core.config.section` holding this component's options, or None.
    options: type | None = None

    def kind(self) -> str:
        """What this descriptor provides, in words: ``"policy"``, ``"telemetry sink"``."""
        from esper_core.plugins.points import point_of

        return point_of(type(self)).kind


@attrs.frozen(kw_only=True)
class PolicySpec(ComponentSpec):
    """A Tamiyo policy; the factory returns an :class:`esper_core.protocols.TamiyoPolicy`."""


@attrs.frozen(kw_only=True)
class ControllerSpec(ComponentSpec):
    """A controller that turns state packets into signed commands (Tamiyo in-process, or remote over the bus); the
    factory returns an :class:`esper_core.protocols.Controller`."""


@attrs.frozen(kw_only=True)
class BlueprintCatalogSpec(ComponentSpec):
    """A blueprint catalog; the factory returns an :class:`esper_core.protocols.BlueprintCatalog`."""


@attrs.frozen(kw_only=True)
class ArtifactStoreSpec(ComponentSpec):
    """A blueprint artifact store; the factory returns an :class:`esper_core.protocols.ArtifactStore`."""


@attrs.frozen(kw_only=True)
class TelemetrySinkSpec(ComponentSpec):
    """A telemetry sink; the factory returns an :class:`esper_core.protocols.TelemetrySink`."""


@attrs.frozen(kw_only=True)
class BusBackendSpec(ComponentSpec):
    """An Oona bus backend; the factory returns an :class:`esper_core.oona.BusBackend`.

    ``url_schemes`` lets a configuration select the backend by URL (``oona.backend = "redis://host:6379/0"``).
    """

    url_schemes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class TaskSpec(ComponentSpec):
    """A task (host model, data, loss and metric); the factory returns an :class:`esper_core.protocols.Task`."""


@attrs.frozen(kw_only=True)
class SeedExecutorSpec(ComponentSpec):
    """A seed executor (Kasmina); the factory returns an :class:`esper_core.protocols.SeedExecutor`."""


@attrs.frozen(kw_only=True)
class SimicTrainerSpec(ComponentSpec):
    """A Simic training algorithm; the factory returns an :class:`esper_core.protocols.SimicTrainer`."""


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class ServiceSpec(ComponentSpec):
    """A long-lived service for ``esper serve NAME``; the factory returns an :class:`esper_core.protocols.Service`.

    Weatherlight's preflight checks what a service declares here before it starts anything, and reports every
    problem at once: ``requires`` names Python modules the service imports (``("torch",)``); ``preflight`` is
    called with the service's :class:`BuildContext` (configuration, options, signing key; no bus yet) and returns
    a description of each problem it finds (nothing when the service is ready to start).
    """

    requires: tuple[str, ...] = attrs.field(default=(), converter=_names)
    preflight: Callable[[BuildContext], Iterable[str]] | None = None


@attrs.frozen(kw_only=True)
class CliCommandSpec:
    """A subcommand added to the ``esper`` command line.

    ``configure`` receives the subcommand's ``argparse.ArgumentParser``; ``run`` receives the parsed namespace and
    returns the exit status.
    """

    name: str = attrs.field(converter=_validated_name)
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]
