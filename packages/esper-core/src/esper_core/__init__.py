"""Esper core: Leyline contracts, the plugin registry, the Oona bus and the shared primitives.

A plugin needs only this::

    from esper_core import hookimpl
    from esper_core.plugins import PolicySpec

and an entry point in the ``esper`` group. See ``docs/plugins.md``.
"""

from esper_core.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl

__version__ = "0.1.0"

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "__version__", "hookimpl"]
