"""``run.task = "package.module:factory"``: a user's own task without writing a plugin.

The factory is called with the :class:`~esper_core.plugins.BuildContext` of the run (configuration, run directory)
and returns an object satisfying :class:`esper_core.protocols.Task`. A plugin (``esper_tolaria_tasks``) is the
better choice for anything shared, because it can declare an options section; a reference is quickest for one
experiment.
"""

from __future__ import annotations

import importlib
from typing import Any

from esper_core.errors import ConfigError


def is_reference(name: str) -> bool:
    return ":" in name


def load_reference(reference: str) -> Any:
    """The callable named by ``module:attribute`` (the attribute may be dotted)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"run.task = {reference!r}: a task reference is 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"run.task = {reference!r}: cannot import {module_name!r} ({error})") from error
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"run.task = {reference!r}: {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ConfigError(f"run.task = {reference!r}: {attribute!r} is not callable")
    return target
