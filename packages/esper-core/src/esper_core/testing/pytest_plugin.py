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
from typing import TYPE_CHECKING, Any

import pytest

from esper_core.plugins import EsperPluginManager, Registry, create_plugin_manager
from esper_core.signing import SigningKey

if TYPE_CHECKING:
    from esper_core.testing.servers import ElasticsearchCompatibleServer, RedisServer


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


def _start_redis(workdir: Path, **options: Any) -> RedisServer:
    from esper_core.testing.servers import RedisServer, ServerUnavailableError, require_binary

    require_binary(RedisServer.binary, RedisServer.apt_package)
    server = RedisServer(workdir, **options)
    try:
        server.start()
    except ServerUnavailableError as error:
        pytest.fail(str(error), pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _start_redis(tmp_path_factory.mktemp("redis-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        server = _start_redis(tmp_path_factory.mktemp("redis-server"), **options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _start_elasticsearch(workdir: Path, **options: Any) -> ElasticsearchCompatibleServer:
    from esper_core.testing.servers import ElasticsearchCompatibleServer, ServerUnavailableError, missing_dependency

    if ElasticsearchCompatibleServer.find_executable() is None:
        missing_dependency(
            f"{ElasticsearchCompatibleServer.binary} (an Elasticsearch-compatible test server) is not installed; "
            f"install it with: {ElasticsearchCompatibleServer.install_command}"
        )
    server = ElasticsearchCompatibleServer(workdir, **options)
    try:
        server.start()
    except ServerUnavailableError as error:
        pytest.fail(str(error), pytrace=False)
    return server


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
    started: list[ElasticsearchCompatibleServer] = []

    def start(**options: Any) -> ElasticsearchCompatibleServer:
        server = _start_elasticsearch(tmp_path_factory.mktemp("elasticsearch-server"), **options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
