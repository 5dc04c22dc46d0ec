"""Esper's error types. Every one says what is wrong and how to fix it; none is raised without a message."""

from __future__ import annotations


class EsperError(Exception):
    """Base class of every error Esper raises on purpose."""


class ConfigError(EsperError):
    """A configuration file, environment override or ``--set`` value is invalid; the message names the key."""


class TaskDataError(EsperError):
    """A task's data is missing, unreadable or not what the task expects; the message names the file and how to get
    a good copy."""


class PluginError(EsperError):
    """Base class of plugin-system errors."""


class PluginLoadError(PluginError):
    """An ``esper`` entry point failed to import or register."""

    def __init__(self, distribution: str, entry_point: str, target: str, cause: BaseException) -> None:
        self.distribution = distribution
        self.entry_point = entry_point
        self.target = target
        super().__init__(
            f"plugin {entry_point!r} from distribution {distribution!r} failed to load ({target}): "
            f"{type(cause).__name__}: {cause}. Fix or uninstall {distribution!r}, or block it with "
            f"ESPER_BLOCKED_PLUGINS={entry_point}."
        )


class PluginConflictError(PluginError):
    """Two plugins provide a component (or entry point) under the same name."""


class PluginValidationError(PluginError):
    """A plugin implements a hook wrongly (unknown hook, wrong arguments, wrong return type)."""


class UnknownComponentError(PluginError):
    """A configuration names a component (policy, catalog, sink, ...) that no installed plugin provides."""


class SecurityError(EsperError):
    """A signing secret is missing or unusable where one is required."""


class MissingDependencyError(EsperError):
    """An optional dependency a feature needs is not installed; the message names the extra that installs it."""
