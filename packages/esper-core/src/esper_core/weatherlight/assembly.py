"""Putting ``esper serve`` together: one bus backend for the process, one Oona client per service, one supervisor.

Every service gets, in its :class:`~esper_core.plugins.BuildContext`: the configuration, its options, the shared
``signing_key``, and ``bus``, an :class:`~esper_core.oona.Oona` client of its own whose consumer group is the
service's name (so each service sees every message of the streams it reads, and several processes running the same
service share the work) and whose consumer name is ``<service>-<host>-<pid>``. All clients share the process's one
backend (one Redis connection pool); closing a client does not close it. ``context.services["bus_backend"]`` is that
shared backend, for a service that needs raw stream access.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from esper_core.oona import Oona, OonaOptions
from esper_core.oona.shared import SharedBackend
from esper_core.weatherlight.options import WeatherlightOptions
from esper_core.weatherlight.supervisor import ServiceFactory, Weatherlight

if TYPE_CHECKING:
    from esper_core.config import EsperConfig
    from esper_core.plugins.descriptors import ServiceSpec
    from esper_core.plugins.registry import Registry
    from esper_core.protocols import Service
    from esper_core.weatherlight.preflight import Prepared


def identity() -> str:
    """``<host>-<pid>``: what makes a consumer name unique to this process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build_weatherlight(registry: Registry, config: EsperConfig, prepared: Prepared) -> Weatherlight:
    """A supervisor for ``prepared.specs``, every service with its own bus client over the shared backend."""
    oona_options = config.get(OonaOptions)
    options = config.get(WeatherlightOptions)
    shared = SharedBackend(prepared.backend)
    me = identity()

    def bus_for(group: str) -> Oona:
        return Oona(
            shared,
            signing_key=prepared.signing_key,
            options=oona_options,
            group=group,
            consumer=f"{group}-{me}",
            source=group,
        )

    def factory_for(spec: ServiceSpec) -> ServiceFactory:
        def build() -> Service:
            service: Service = registry.build(
                spec, config=config, signing_key=prepared.signing_key, bus=bus_for(spec.name), bus_backend=shared
            )
            return service

        return build

    return Weatherlight(
        {spec.name: factory_for(spec) for spec in prepared.specs}, options=options, bus=bus_for(options.group)
    )
