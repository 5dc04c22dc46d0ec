"""Fixtures of the esper testing kit. pytest loads this module in any project that has esper-core installed, so it
imports nothing heavy (no hypothesis, no torch) at module level.

- ``esper_plugin_manager``: a new plugin manager with only the core plugin (no autoload), per test.
- ``esper_registry``: a :class:`~esper_core.plugins.Registry` over it.
- ``register_plugin(plugin, name=None)``: register a plugin object for this test; it is always unregistered at
  teardown, whatever the test did.
- ``signing_key``: a fresh random :class:`~esper_core.signing.SigningKey`.
- ``redis_server``: one real ``redis-server`` on 127.0.0.1 (a free port) for the whole session, stopped by pid at
  the end; tests sharing it use unique stream names. Missing binary: a failure under ``CI``, a skip elsewhere.
- ``redis_server_factory(**options)``: a server of this test's own (to stop, kill or restart); see
  :class:`~esper_core.testing.servers.RedisServer` for the options. Every one is stopped at teardown.
- ``elasticsearch_server``: one real Elasticsearch-compatible server (``osmem-server``, from ``pip install
  osmem-server``) on 127.0.0.1 (a free port) for the whole session, stopped by pid at the end; tests sharing it use
  index names of their own. Missing binary: a failure under ``CI``, a skip elsewhere.
- ``elasticsearch_server_factory(**options)``: such a server of this test's own (to stop, kill or restart; it keeps
  everything in memory, so a restarted one is empty); see
  :class:`~esper_core.testing.servers.ElasticsearchCompatibleServer`. Every one is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from esper_core.plugins import EsperPluginManager, Registry, create_plugin_manager
from esper_core.signing import SigningKey

if TYPE_CHECKING:
    from esper_core.testing.servers import ElasticsearchCompatibleServer, ManagedServer, RedisServer

S = TypeVar("S", bound="ManagedServer")


@pytest.fixture
def esper_plugin_manager() -> EsperPluginManager:
    return create_plugin_manager(autoload=False, env={})


@pytest.fixture
def esper_registry(esper_plugin_manager: EsperPluginManager) -> Registry:
    return Registry(esper_plugin_manager)


@pytest.fixture
def register_plugin(esper_plugin_manager: EsperPluginManager, esper_registry: Registry) -> Iterator[Callable[..., Any]]:
    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        esper_plugin_manager.register(plugin, name=name)
        registered.append(plugin)
        esper_registry.invalidate()
        return plugin

    try:
        yield register
    finally:
        for plugin in reversed(registered):
            if esper_plugin_manager.is_registered(plugin):
                esper_plugin_manager.unregister(plugin)
        esper_registry.invalidate()


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


def _start(kind: type[S], workdir: Path, **options: Any) -> S:
    """A server of ``kind`` started in ``workdir``; a missing binary fails (CI) or skips the test, naming the command
    that installs it, and a server that does not start fails it with the server's own words."""
    from esper_core.testing.servers import ServerUnavailableError, missing_dependency

    if kind.find_executable() is None:
        missing_dependency(f"{kind.binary} is not installed; install it with: {kind.install_hint()}")
    server = kind(workdir, **options)
    try:
        server.start()
    except ServerUnavailableError as error:
        pytest.fail(str(error), pytrace=False)
    return server


def _start_redis(workdir: Path, **options: Any) -> RedisServer:
    from esper_core.testing.servers import RedisServer

    return _start(RedisServer, workdir, **options)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _start_redis(tmp_path_factory.mktemp("redis-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    yield from _servers_of_the_test(_start_redis, tmp_path_factory, "redis-server")


def _servers_of_the_test(
    start_one: Callable[..., S], tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[Callable[..., S]]:
    """A factory fixture's body: start servers on demand, each in a directory of its own; stop them all after."""
    started: list[S] = []

    def start(**options: Any) -> S:
        server = start_one(tmp_path_factory.mktemp(name), **options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _start_elasticsearch(workdir: Path, **options: Any) -> ElasticsearchCompatibleServer:
    from esper_core.testing.servers import ElasticsearchCompatibleServer

    return _start(ElasticsearchCompatibleServer, workdir, **options)


@pytest.fixture(scope="session")
def elasticsearch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticsearchCompatibleServer]:
    server = _start_elasticsearch(tmp_path_factory.mktemp("elasticsearch-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def elasticsearch_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ElasticsearchCompatibleServer]]:
    yield from _servers_of_the_test(_start_elasticsearch, tmp_path_factory, "elasticsearch-server")
