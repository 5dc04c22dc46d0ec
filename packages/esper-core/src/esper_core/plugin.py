"""The core plugin: the in-process bus backend and core's configuration sections (including the selectors of
every plugin point).

Registered first by every plugin manager, and essential (it cannot be blocked).
"""

from __future__ import annotations

from collections.abc import Iterator

from esper_core.plugins.descriptors import BuildContext, BusBackendSpec
from esper_core.plugins.markers import hookimpl


def _memory_backend(context: BuildContext) -> object:
    from esper_core.oona.memory import MemoryBackend

    return MemoryBackend()


@hookimpl
def esper_oona_bus_backends() -> Iterator[BusBackendSpec]:
    yield BusBackendSpec(
        name="memory",
        factory=_memory_backend,
        description="In-process streams with Redis Streams consumer-group semantics (the embedded default).",
    )


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    from esper_core.components import NissaSelection, TamiyoSelection, UrzaSelection
    from esper_core.oona.options import OonaOptions
    from esper_core.plugins.options import PluginsOptions
    from esper_core.security_options import SecurityOptions

    yield OonaOptions
    yield PluginsOptions
    yield SecurityOptions
    yield UrzaSelection
    yield TamiyoSelection
    yield NissaSelection
