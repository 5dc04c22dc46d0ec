"""Fixtures of the esper testing kit. pytest loads this module in any project that has esper-core installed, so it
imports nothing heavy (no hypothesis, no torch) at module level.

- ``esper_plugin_manager``: a new plugin manager with only the core plugin (no autoload), per test.
- ``esper_registry``: a :class:`~esper_core.plugins.Registry` over it.
- ``register_plugin(plugin, name=None)``: register a plugin object for this test; it is always unregistered at
  teardown, whatever the test did.
- ``signing_key``: a fresh random :class:`~esper_core.signing.SigningKey`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from esper_core.plugins import EsperPluginManager, Registry, create_plugin_manager
from esper_core.signing import SigningKey


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
