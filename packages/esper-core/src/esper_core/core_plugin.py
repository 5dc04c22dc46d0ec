"""The core plugin: the bus backends (in-process, and Redis Streams when redis-py is installed), the built-in tasks,
the ``remote`` controller (decisions from ``esper serve tamiyo`` over the bus) and core's configuration sections
(including the selectors of every plugin point, Oona's and Weatherlight's).

Registered first by every plugin manager, and essential (it cannot be blocked).
"""

from __future__ import annotations

from collections.abc import Iterator

from esper_core.extras import require
from esper_core.plugins.descriptors import BuildContext, BusBackendSpec, ControllerSpec, TaskSpec
from esper_core.plugins.markers import hookimpl


def _memory_backend(context: BuildContext) -> object:
    from esper_core.oona.memory import MemoryBackend

    return MemoryBackend()


def _redis_backend(context: BuildContext) -> object:
    from esper_core.errors import ConfigError
    from esper_core.oona.options import OonaOptions
    from esper_core.oona.redis_backend import RedisBackend, RedisOptions

    if context.config is None:
        raise ConfigError(
            'the redis bus backend reads its URL from the configuration (oona.backend = "redis://host:port/db"); '
            "build it with a configuration"
        )
    try:
        options = context.config.get(RedisOptions)
    except KeyError:
        options = RedisOptions()
    return RedisBackend(context.config.get(OonaOptions).backend, options)


@hookimpl
def esper_oona_bus_backends() -> Iterator[BusBackendSpec]:
    yield BusBackendSpec(
        name="memory",
        factory=_memory_backend,
        description="In-process streams with Redis Streams consumer-group semantics (the embedded default).",
    )
    yield BusBackendSpec(
        name="redis",
        url_schemes=("redis", "rediss", "unix"),
        factory=_redis_backend,
        description='Redis Streams over redis-py (oona.backend = "redis://host:port/db"); needs esper-core[redis].',
    )


def _fashion_mnist(context: BuildContext) -> object:
    require("torch", "the fashion-mnist task")
    from esper_core.tasks.fashion_mnist import FashionMnistTask

    return FashionMnistTask(context.options)


def _synthetic(context: BuildContext) -> object:
    require("torch", "the synthetic task")
    from esper_core.tasks.synthetic import SyntheticTask

    return SyntheticTask(context.options)


@hookimpl
def esper_tolaria_tasks() -> Iterator[TaskSpec]:
    from esper_core.tasks.fashion_mnist import FashionMnistOptions
    from esper_core.tasks.synthetic import SyntheticOptions

    yield TaskSpec(
        name="fashion-mnist",
        factory=_fashion_mnist,
        options=FashionMnistOptions,
        description="Fashion-MNIST (28x28 clothing images, 10 classes) with a conv or MLP host.",
    )
    yield TaskSpec(
        name="synthetic",
        factory=_synthetic,
        options=SyntheticOptions,
        description="A small seeded classification problem for fast tests.",
    )


def _remote_controller(context: BuildContext) -> object:
    from esper_core.tolaria.remote import build_remote_controller

    return build_remote_controller(context)


@hookimpl
def esper_tolaria_controllers() -> Iterator[ControllerSpec]:
    from esper_core.tolaria.remote import RemoteControllerOptions

    yield ControllerSpec(
        name="remote",
        factory=_remote_controller,
        options=RemoteControllerOptions,
        description="Decisions from `esper serve tamiyo` in another process, over the bus (needs the shared secret).",
    )


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    from esper_core.oona.options import OonaOptions
    from esper_core.oona.redis_backend import RedisOptions
    from esper_core.plugins.options import PluginsOptions
    from esper_core.plugins.selectors import NissaSelection, SimicSelection, TamiyoSelection, UrzaSelection
    from esper_core.security_options import SecurityOptions
    from esper_core.tolaria.emergency import EmergencyOptions
    from esper_core.tolaria.options import RunOptions, TolariaOptions
    from esper_core.tolaria.sinks import SinkOptions
    from esper_core.weatherlight.options import WeatherlightOptions

    yield OonaOptions
    yield RedisOptions
    yield WeatherlightOptions
    yield PluginsOptions
    yield SecurityOptions
    yield UrzaSelection
    yield RunOptions
    yield TolariaOptions
    yield EmergencyOptions
    yield SinkOptions
    yield TamiyoSelection
    yield SimicSelection
    yield NissaSelection
