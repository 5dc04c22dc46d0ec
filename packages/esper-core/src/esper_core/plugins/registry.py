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
    TaskSpec,
    TelemetrySinkSpec,
    kind_of,
    normalize_name,
)
from esper_core.plugins.manager import EsperPluginManager, PluginInfo, create_plugin_manager

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

S = TypeVar("S")


@attrs.frozen
class Provided:
    """A descriptor and the plugin that provided it."""

    spec: Any
    provider: PluginInfo


class Registry:
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
    def _provided(self, hook_name: str, spec_type: type, key: str = "name") -> dict[str, Provided]:
        if hook_name in self._cache:
            return self._cache[hook_name]
        found: dict[str, Provided] = {}
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # registration order
            info = self.pm.info_for(impl.plugin)
            try:
                items = list(impl.function() or ())
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(
                    f"{info.describe()} raised in {hook_name}: {type(error).__name__}: {error}"
                ) from error
            for item in items:
                if not isinstance(item, spec_type):
                    raise PluginValidationError(
                        f"{info.describe()}: {hook_name} yielded {item!r}; it must yield {spec_type.__name__} objects"
                    )
                name = getattr(item, key)
                if name in found:
                    kind = kind_of(type(item))
                    raise PluginConflictError(
                        f"two plugins provide a {kind} named {name!r}: {found[name].provider.describe()} and "
                        f"{info.describe()}. Uninstall one, or block one with ESPER_BLOCKED_PLUGINS=<name>."
                    )
                found[name] = Provided(item, info)
        resolved = dict(sorted(found.items()))
        self._cache[hook_name] = resolved
        return resolved

    def _lookup(self, hook_name: str, spec_type: type[S], name: str) -> S:
        available = self._provided(hook_name, spec_type)
        wanted = normalize_name(name)
        if wanted in available:
            return cast(S, available[wanted].spec)
        kind = kind_of(spec_type)
        names = ", ".join(available) or "none"
        raise UnknownComponentError(
            f"no installed plugin provides a {kind} named {name!r}{suggest(wanted, available) or '.'} "
            f"Available: {names}. Install the package that provides it; `esper plugins` lists what is installed."
        )

    def provider_of(self, spec: ComponentSpec | CliCommandSpec) -> PluginInfo:
        for hook_name, spec_type in _HOOKS.items():
            if isinstance(spec, spec_type):
                for provided in self._provided(hook_name, spec_type).values():
                    if provided.spec is spec:
                        return provided.provider
        raise LookupError(f"{spec!r} is not provided by any registered plugin")

    def policies(self) -> list[PolicySpec]:
        return [p.spec for p in self._provided("esper_tamiyo_policies", PolicySpec).values()]

    def policy(self, name: str) -> PolicySpec:
        return self._lookup("esper_tamiyo_policies", PolicySpec, name)

    def controllers(self) -> list[ControllerSpec]:
        return [p.spec for p in self._provided("esper_tamiyo_controllers", ControllerSpec).values()]

    def controller(self, name: str) -> ControllerSpec:
        return self._lookup("esper_tamiyo_controllers", ControllerSpec, name)

    def blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return [p.spec for p in self._provided("esper_urza_blueprint_catalogs", BlueprintCatalogSpec).values()]

    def blueprint_catalog(self, name: str) -> BlueprintCatalogSpec:
        return self._lookup("esper_urza_blueprint_catalogs", BlueprintCatalogSpec, name)

    def artifact_stores(self) -> list[ArtifactStoreSpec]:
        return [p.spec for p in self._provided("esper_urza_artifact_stores", ArtifactStoreSpec).values()]

    def artifact_store(self, name: str) -> ArtifactStoreSpec:
        return self._lookup("esper_urza_artifact_stores", ArtifactStoreSpec, name)

    def telemetry_sinks(self) -> list[TelemetrySinkSpec]:
        return [p.spec for p in self._provided("esper_nissa_telemetry_sinks", TelemetrySinkSpec).values()]

    def telemetry_sink(self, name: str) -> TelemetrySinkSpec:
        return self._lookup("esper_nissa_telemetry_sinks", TelemetrySinkSpec, name)

    def bus_backends(self) -> list[BusBackendSpec]:
        return [p.spec for p in self._provided("esper_oona_bus_backends", BusBackendSpec).values()]

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
        return self._lookup("esper_oona_bus_backends", BusBackendSpec, name_or_url)

    def tasks(self) -> list[TaskSpec]:
        return [p.spec for p in self._provided("esper_tolaria_tasks", TaskSpec).values()]

    def task(self, name: str) -> TaskSpec:
        return self._lookup("esper_tolaria_tasks", TaskSpec, name)

    def seed_executors(self) -> list[SeedExecutorSpec]:
        return [p.spec for p in self._provided("esper_kasmina_seed_executors", SeedExecutorSpec).values()]

    def seed_executor(self, name: str) -> SeedExecutorSpec:
        return self._lookup("esper_kasmina_seed_executors", SeedExecutorSpec, name)

    def services(self) -> list[ServiceSpec]:
        return [p.spec for p in self._provided("esper_weatherlight_services", ServiceSpec).values()]

    def service(self, name: str) -> ServiceSpec:
        return self._lookup("esper_weatherlight_services", ServiceSpec, name)

    def cli_commands(self) -> list[CliCommandSpec]:
        return [p.spec for p in self._provided("esper_core_cli_commands", CliCommandSpec).values()]

    def components(self) -> dict[str, list[ComponentSpec]]:
        """Every component descriptor by kind (for ``esper plugins``)."""
        return {
            kind_of(spec_type): [p.spec for p in self._provided(hook_name, spec_type).values()]
            for hook_name, spec_type in _HOOKS.items()
            if spec_type is not CliCommandSpec
        }

    def provided_by(self, info: PluginInfo) -> list[str]:
        """``kind:name`` of every component and command ``info``'s plugin provides."""
        names = []
        for hook_name, spec_type in _HOOKS.items():
            for name, provided in self._provided(hook_name, spec_type).items():
                if provided.provider.plugin is info.plugin:
                    names.append(f"{kind_of(spec_type)}:{name}")
        return names

    # -- configuration ----------------------------------------------------------------------------------------
    def config_sections(self) -> list[type]:
        """Every section class: from the ``esper_core_config_sections`` hook and from descriptors' ``options``."""
        sections: dict[type, None] = {}
        for impl in reversed(self.pm.hook.esper_core_config_sections.get_hookimpls()):
            contributed = cast(Iterable[type], impl.function() or ())
            for cls in contributed:
                section_path(cls)  # raises a clear TypeError for an unmarked class
                sections[cls] = None
        for hook_name, spec_type in _HOOKS.items():
            for provided in self._provided(hook_name, spec_type).values():
                options = getattr(provided.spec, "options", None)
                if options is not None:
                    section_path(options)
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
        ``context.services``.
        """
        options = None
        if spec.options is not None:
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


_HOOKS: dict[str, type] = {
    "esper_tamiyo_policies": PolicySpec,
    "esper_tamiyo_controllers": ControllerSpec,
    "esper_urza_blueprint_catalogs": BlueprintCatalogSpec,
    "esper_urza_artifact_stores": ArtifactStoreSpec,
    "esper_nissa_telemetry_sinks": TelemetrySinkSpec,
    "esper_oona_bus_backends": BusBackendSpec,
    "esper_tolaria_tasks": TaskSpec,
    "esper_kasmina_seed_executors": SeedExecutorSpec,
    "esper_weatherlight_services": ServiceSpec,
    "esper_core_cli_commands": CliCommandSpec,
}
