"""The typed registry facade: the only code that calls ``pm.hook``.

It resolves each provider hook once, checks what plugins returned, refuses duplicate names (naming both
distributions), and returns descriptors sorted by name. Run code asks it for components by name and then holds
plain objects; lifecycle notifications go through its typed methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import attrs

from esper_core.config.convert import section_path, suggest
from esper_core.errors import PluginConflictError, PluginError, PluginValidationError, UnknownComponentError
from esper_core.plugins.descriptors import (
    ArtifactStoreSpec,
    BlueprintCatalogSpec,
    BuildContext,
    BusBackendSpec,
    CliCommandSpec,
    ComponentSpec,
    ControllerSpec,
    PolicySpec,
    SeedExecutorSpec,
    ServiceSpec,
    SimicTrainerSpec,
    TaskSpec,
    TelemetrySinkSpec,
    normalize_name,
)
from esper_core.plugins.manager import EsperPluginManager, PluginInfo, create_plugin_manager
from esper_core.plugins.points import PLUGIN_POINTS, PluginPoint, point_of

if TYPE_CHECKING:
    from esper_core.config import EsperConfig
    from esper_core.leyline import (
        AdaptationCommand,
        CommandResult,
        FieldReport,
        SeedLifecycleEvent,
        SystemStatePacket,
    )
    from esper_core.plugins.runinfo import RunInfo

S = TypeVar("S")  # a descriptor type


@attrs.frozen
class Provided:
    """A descriptor and the plugin that provided it."""

    spec: Any
    provider: PluginInfo


class Registry:
    """The typed facade over one plugin manager: what is installed, by plugin point and name."""

    def __init__(self, pm: EsperPluginManager) -> None:
        self.pm = pm
        self._cache: dict[str, dict[str, Provided]] = {}

    @classmethod
    def create(cls, **options: Any) -> Registry:
        """A registry over a new plugin manager; ``options`` go to :func:`create_plugin_manager`."""
        return cls(create_plugin_manager(**options))

    def invalidate(self) -> None:
        """Forget resolved descriptors (after registering or unregistering a plugin)."""
        self._cache.clear()

    # -- provider hooks ---------------------------------------------------------------------------------------
    def _provided(self, point: PluginPoint) -> dict[str, Provided]:
        """Every descriptor of ``point``, by name, each with the plugin that provided it (resolved once)."""
        if point.hook in self._cache:
            return self._cache[point.hook]
        found: dict[str, Provided] = {}
        for info, items in self.pm.call_each(point.hook):
            for item in items:
                if not isinstance(item, point.spec_type):
                    raise PluginValidationError(
                        f"{info.describe()}: {point.hook} yielded {item!r}; it must yield "
                        f"{point.spec_type.__name__} objects"
                    )
                name: str = item.name  # every descriptor type has a validated, normalized name
                if name in found:
                    first = found[name].provider.describe()
                    raise PluginConflictError(
                        f"two plugins provide a {point.kind} named {name!r}: {first} and {info.describe()}. "
                        "Uninstall one, or block one with ESPER_BLOCKED_PLUGINS=<name>."
                    )
                found[name] = Provided(item, info)
        resolved = dict(sorted(found.items()))
        self._cache[point.hook] = resolved
        return resolved

    def available(self, spec_type: type[S]) -> list[S]:
        """Every installed descriptor of the plugin point that yields ``spec_type``, sorted by name."""
        return [cast(S, provided.spec) for provided in self._provided(point_of(spec_type)).values()]

    def get(self, spec_type: type[S], name: str) -> S:
        """The descriptor named ``name`` (normalized: ``Fixed_Schedule`` is ``fixed-schedule``) of a plugin point.

        :raises UnknownComponentError: naming the plugin point's configuration key, a likely fix and what is
            installed.
        """
        point = point_of(spec_type)
        available = self._provided(point)
        wanted = normalize_name(name)
        if wanted in available:
            return cast(S, available[wanted].spec)
        names = ", ".join(available) or "none"
        where = f" ({point.config_key})" if point.config_key else ""
        raise UnknownComponentError(
            f"no installed plugin provides a {point.kind} named {name!r}{where}{suggest(wanted, available) or '.'} "
            f"Available: {names}. Install the package that provides it; `esper plugins` lists what is installed."
        )

    def provider_of(self, spec: ComponentSpec | CliCommandSpec) -> PluginInfo:
        """The plugin that provided ``spec``."""
        for provided in self._provided(point_of(type(spec))).values():
            if provided.spec is spec:
                return provided.provider
        raise LookupError(f"{spec!r} is not provided by any registered plugin")

    def components(self) -> dict[str, list[Any]]:
        """Every descriptor by plugin point kind, in the table's order (for ``esper plugins``)."""
        return {point.kind: self.available(point.spec_type) for point in PLUGIN_POINTS}

    def provided_by(self, info: PluginInfo) -> list[str]:
        """``kind:name`` of every component and command ``info``'s plugin provides."""
        return [
            f"{point.kind}:{name}"
            for point in PLUGIN_POINTS
            for name, provided in self._provided(point).items()
            if provided.provider.plugin is info.plugin
        ]

    # Typed shorthands of :meth:`get` and :meth:`available`, one pair per plugin point.
    def policies(self) -> list[PolicySpec]:
        return self.available(PolicySpec)

    def policy(self, name: str) -> PolicySpec:
        return self.get(PolicySpec, name)

    def controllers(self) -> list[ControllerSpec]:
        return self.available(ControllerSpec)

    def controller(self, name: str) -> ControllerSpec:
        return self.get(ControllerSpec, name)

    def blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return self.available(BlueprintCatalogSpec)

    def blueprint_catalog(self, name: str) -> BlueprintCatalogSpec:
        return self.get(BlueprintCatalogSpec, name)

    def artifact_stores(self) -> list[ArtifactStoreSpec]:
        return self.available(ArtifactStoreSpec)

    def artifact_store(self, name: str) -> ArtifactStoreSpec:
        return self.get(ArtifactStoreSpec, name)

    def telemetry_sinks(self) -> list[TelemetrySinkSpec]:
        return self.available(TelemetrySinkSpec)

    def telemetry_sink(self, name: str) -> TelemetrySinkSpec:
        return self.get(TelemetrySinkSpec, name)

    def bus_backends(self) -> list[BusBackendSpec]:
        return self.available(BusBackendSpec)

    def bus_backend(self, name_or_url: str) -> BusBackendSpec:
        """The backend named ``name_or_url``, or the one declaring the URL's scheme (``redis://...``)."""
        if "://" in name_or_url:
            scheme = urlsplit(name_or_url).scheme.lower()
            for spec in self.bus_backends():
                if scheme in spec.url_schemes:
                    return spec
            schemes = sorted({s for spec in self.bus_backends() for s in spec.url_schemes})
            raise UnknownComponentError(
                f"no installed bus backend handles {scheme}:// URLs (oona.backend = {name_or_url!r}). "
                f"Schemes handled: {', '.join(schemes) or 'none'}; named backends: "
                f"{', '.join(spec.name for spec in self.bus_backends())}."
            )
        return self.get(BusBackendSpec, name_or_url)

    def tasks(self) -> list[TaskSpec]:
        return self.available(TaskSpec)

    def task(self, name: str) -> TaskSpec:
        return self.get(TaskSpec, name)

    def seed_executors(self) -> list[SeedExecutorSpec]:
        return self.available(SeedExecutorSpec)

    def seed_executor(self, name: str) -> SeedExecutorSpec:
        return self.get(SeedExecutorSpec, name)

    def services(self) -> list[ServiceSpec]:
        return self.available(ServiceSpec)

    def service(self, name: str) -> ServiceSpec:
        return self.get(ServiceSpec, name)

    def simic_trainers(self) -> list[SimicTrainerSpec]:
        return self.available(SimicTrainerSpec)

    def simic_trainer(self, name: str) -> SimicTrainerSpec:
        return self.get(SimicTrainerSpec, name)

    def cli_commands(self) -> list[CliCommandSpec]:
        return self.available(CliCommandSpec)

    # -- configuration ----------------------------------------------------------------------------------------
    def config_sections(self) -> list[type]:
        """Every section class: from the ``esper_core_config_sections`` hook and from descriptors' ``options``."""
        sections: dict[type, None] = {}
        for info, contributed in self.pm.call_each("esper_core_config_sections"):
            for cls in contributed:
                try:
                    section_path(cls)
                except TypeError as error:
                    raise PluginValidationError(f"{info.describe()}: esper_core_config_sections: {error}") from error
                sections[cls] = None
        for point in PLUGIN_POINTS:
            for provided in self._provided(point).values():
                options = getattr(provided.spec, "options", None)
                if options is not None:
                    try:
                        section_path(options)
                    except TypeError as error:
                        raise PluginValidationError(
                            f"{provided.provider.describe()}: the options of {point.kind} {provided.spec.name!r}: "
                            f"{error}"
                        ) from error
                    sections[options] = None
        return list(sections)

    def load_config(
        self, path: str | Path | None = None, *, env: Mapping[str, str] | None = None, overrides: Iterable[str] = ()
    ) -> EsperConfig:
        """Load a configuration against every installed section."""
        from esper_core.config import load_config

        return load_config(path, sections=self.config_sections(), env=env, overrides=list(overrides))

    def check_required(self, distributions: Iterable[str]) -> None:
        """Raise naming every required distribution that no loaded plugin comes from."""
        present = {normalize_name(info.distribution) for info in self.pm.plugin_infos() if info.distribution}
        missing = [name for name in distributions if normalize_name(name) not in present]
        if missing:
            raise PluginError(
                f"this configuration requires plugins that are not installed (or are blocked): {', '.join(missing)}. "
                f"Install them, e.g. pip install {' '.join(missing)}"
            )

    def build(self, spec: ComponentSpec, *, config: EsperConfig | None = None, **services: Any) -> Any:
        """Call ``spec``'s factory with its options (from ``config``, or defaults) and the given services.

        ``services`` fill :class:`BuildContext` fields (``run_dir``, ``signing_key``, ``bus``) and otherwise land in
        ``context.services``; an explicit ``options=`` replaces the configured options (a variant of them).
        """
        options = services.pop("options", None)
        if options is None and spec.options is not None:
            options = config.get(spec.options) if config is not None else spec.options()
        fields = {field.name for field in attrs.fields(BuildContext)}
        direct = {key: value for key, value in services.items() if key in fields}
        extra = {key: value for key, value in services.items() if key not in fields}
        context = BuildContext(registry=self, config=config, options=options, services=extra, **direct)
        return spec.factory(context)

    # -- lifecycle notifications ------------------------------------------------------------------------------
    def run_started(self, run: RunInfo) -> None:
        self.pm.hook.esper_tolaria_run_started(run=run)

    def decision(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> None:
        self.pm.hook.esper_tolaria_decision(state=state, command=command, result=result)

    def seed_transition(self, event: SeedLifecycleEvent) -> None:
        self.pm.hook.esper_kasmina_seed_transition(event=event)

    def field_report(self, report: FieldReport) -> None:
        self.pm.hook.esper_tamiyo_field_report(report=report)

    def run_finished(self, run: RunInfo, summary: Mapping[str, float]) -> None:
        self.pm.hook.esper_tolaria_run_finished(run=run, summary=summary)
