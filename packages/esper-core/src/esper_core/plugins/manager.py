"""Creating the plugin manager of one run: hookspecs, the essential core plugin, then entry points.

Nothing is discovered at import time and there is no global manager: each run (or command, or test) calls
:func:`create_plugin_manager` and wraps the result in a :class:`~esper_core.plugins.registry.Registry`.

Switches (arguments win over the environment):

- ``ESPER_DISABLE_PLUGIN_AUTOLOAD=1`` / ``autoload=False``: load no entry points (only the core plugin).
- ``ESPER_BLOCKED_PLUGINS=a,b`` / ``blocked=``: skip entry points by entry-point or distribution name.
- ``ESPER_PLUGINS=a,b`` / ``only=``: load only these entry points or distributions.
- ``ESPER_PLUGIN_ERRORS=warn`` / ``errors="warn"``: a plugin that fails to import is skipped with a warning
  instead of stopping the run (the default is a fatal :class:`PluginLoadError` naming distribution and entry point).
- ``ESPER_TRACE_PLUGINS=1`` / ``trace=True``: log every hook call at DEBUG level.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import pluggy

from esper_core.errors import PluginConflictError, PluginError, PluginLoadError, PluginValidationError
from esper_core.plugins.descriptors import normalize_name
from esper_core.plugins.hookspecs import ALL_SPECS
from esper_core.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME
from esper_core.plugins.points import PLUGIN_POINTS

logger = logging.getLogger("esper.plugins")

#: Hooks whose implementations each contribute descriptors or sections, resolved plugin by plugin.
COLLECTING_HOOKS = frozenset({point.hook for point in PLUGIN_POINTS} | {"esper_core_config_sections"})

CORE_PLUGIN_NAME = "core"
CORE_DISTRIBUTION = "esper-core"


@attrs.frozen
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    plugin: Any = attrs.field(eq=False, repr=False)
    distribution: str | None = None
    version: str | None = None
    #: ``module:attribute`` of the entry point, when loaded from one.
    target: str | None = None

    def describe(self) -> str:
        if self.distribution:
            return f"distribution {self.distribution!r} {self.version or ''} (entry point {self.name!r})".replace(
                "  ", " "
            )
        return f"plugin {self.name!r} (registered directly, not from an installed distribution)"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _names(value: str | None) -> set[str]:
    return {normalize_name(part) for part in (value or "").split(",") if part.strip()}


class EsperPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self._infos: dict[str, PluginInfo] = {}

    def register(
        self,
        plugin: Any,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
        target: str | None = None,
    ) -> str | None:
        info = PluginInfo(name or str(plugin), plugin, distribution, version, target)
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as error:
            raise PluginValidationError(f"{info.describe()} implements a hook wrongly: {error}") from error
        if registered is not None:
            self._infos[registered] = attrs.evolve(info, name=registered)
            self._refuse_provider_wrappers(plugin)
        return registered

    def _refuse_provider_wrappers(self, plugin: Any) -> None:
        """Unregister ``plugin`` and raise if it wraps a provider hook (wrappers on notifications are fine)."""
        for caller in self.get_hookcallers(plugin) or []:
            if caller.name not in COLLECTING_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    info = self.info_for(plugin)
                    self.unregister(plugin)
                    raise PluginValidationError(
                        f"{info.describe()} implements {caller.name} as a hook wrapper, which Esper does not "
                        f"support on hooks that collect descriptors: each plugin's descriptors are resolved on "
                        f"their own so that conflicts can name the plugins involved. To replace what another "
                        f"plugin provides, block it (ESPER_BLOCKED_PLUGINS=<name>) and provide your own; to "
                        f"observe runs, implement a lifecycle hook."
                    )

    def call_each(self, hook: str) -> Iterator[tuple[PluginInfo, list[Any]]]:
        """Call ``hook`` through pluggy once per implementing plugin, in registration order, yielding each plugin
        with what it returned (as a list; ``None`` is an empty one).

        Each call is an ordinary pluggy call restricted to one plugin, so ``ESPER_TRACE_PLUGINS`` traces it and
        hook-call monitoring sees it; the result is attributed to its plugin, which is what conflict messages and
        ``esper plugins`` need. A plugin that raises is reported by distribution and entry point.
        """
        caller = getattr(self.hook, hook)
        implementers = [impl.plugin for impl in reversed(caller.get_hookimpls())]
        for plugin in implementers:
            info = self.info_for(plugin)
            others = [other for other in implementers if other is not plugin]
            one = self.subset_hook_caller(hook, remove_plugins=others) if others else caller
            try:
                results = one()
                items = [item for result in results for item in (result or ())]
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(f"{info.describe()} raised in {hook}: {type(error).__name__}: {error}") from error
            yield info, items

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        removed = super().unregister(plugin=plugin, name=name)
        if removed is not None:
            self._infos = {key: info for key, info in self._infos.items() if info.plugin is not removed}
        return removed

    def plugin_infos(self) -> list[PluginInfo]:
        """Every registered plugin, sorted by name."""
        return sorted(self._infos.values(), key=lambda info: info.name)

    def info_for(self, plugin: Any) -> PluginInfo:
        for info in self._infos.values():
            if info.plugin is plugin:
                return info
        return PluginInfo(self.get_name(plugin) or repr(plugin), plugin)


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = entry_point.dist
    if dist is None:
        return "<unknown distribution>", ""
    return dist.metadata["Name"] or dist.name, dist.version


def create_plugin_manager(
    *,
    autoload: bool | None = None,
    blocked: Iterable[str] = (),
    only: Iterable[str] | None = None,
    errors: str | None = None,
    trace: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> EsperPluginManager:
    """A new plugin manager with every hookspec, the core plugin, and (unless disabled) the installed plugins."""
    environment = os.environ if env is None else env
    if autoload is None:
        autoload = not _truthy(environment.get("ESPER_DISABLE_PLUGIN_AUTOLOAD"))
    blocked_names = {normalize_name(name) for name in blocked} | _names(environment.get("ESPER_BLOCKED_PLUGINS"))
    if CORE_PLUGIN_NAME in blocked_names:
        raise PluginError("the core plugin is essential and cannot be blocked; remove 'core' from the blocked list")
    only_names = (
        {normalize_name(name) for name in only} if only is not None else _names(environment.get("ESPER_PLUGINS"))
    )
    mode = errors or environment.get("ESPER_PLUGIN_ERRORS", "raise")
    if mode not in {"raise", "warn"}:
        raise PluginError(f"ESPER_PLUGIN_ERRORS={mode!r} is not understood; use 'raise' (the default) or 'warn'")

    pm = EsperPluginManager()
    for spec in ALL_SPECS:
        pm.add_hookspecs(spec)
    pm.hook.esper_core_addhooks.call_historic(kwargs={"pluginmanager": pm})

    from esper_core import core_plugin

    try:
        core_version = importlib.metadata.version(CORE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        core_version = None
    pm.register(
        core_plugin,
        name=CORE_PLUGIN_NAME,
        distribution=CORE_DISTRIBUTION,
        version=core_version,
        target="esper_core.core_plugin",
    )

    if autoload:
        _load_entry_points(pm, blocked_names, only_names, warn=mode == "warn")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        info = pm.info_for(error.plugin)
        raise PluginValidationError(
            f"{info.describe()} implements a hook that Esper does not define: {error}. "
            "Check the hook's name against docs/plugins.md."
        ) from error

    if trace if trace is not None else _truthy(environment.get("ESPER_TRACE_PLUGINS")):
        pm.trace.root.setwriter(logger.debug)
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: EsperPluginManager, blocked: set[str], only: set[str], *, warn: bool) -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution, version = _distribution_of(entry_point)
        keys = {normalize_name(entry_point.name), normalize_name(distribution)}
        if entry_point.name == CORE_PLUGIN_NAME and distribution == CORE_DISTRIBUTION:
            continue  # registered above, as an essential plugin
        if keys & blocked:
            pm.set_blocked(entry_point.name)
            logger.info("plugin %s from %s is blocked", entry_point.name, distribution)
            continue
        if only and not keys & only:
            continue
        if pm.has_plugin(entry_point.name):
            existing = pm.info_for(pm.get_plugin(entry_point.name))
            raise PluginConflictError(
                f"two plugins are registered under the entry-point name {entry_point.name!r}: {existing.describe()} "
                f"and distribution {distribution!r} {version}. Uninstall one of them, or block one with "
                f"ESPER_BLOCKED_PLUGINS=<distribution name>."
            )
        try:
            plugin = entry_point.load()
        except Exception as error:
            failure = PluginLoadError(distribution, entry_point.name, entry_point.value, error)
            if warn:
                warnings.warn(str(failure), RuntimeWarning, stacklevel=2)
                continue
            raise failure from error
        pm.register(plugin, name=entry_point.name, distribution=distribution, version=version, target=entry_point.value)
