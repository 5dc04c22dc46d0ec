"""esper-core's conformance suites, run against the plugin's three components as Esper builds them: through the
registry, from the descriptors the plugin's hooks yield (docs/plugins.md, "Testing your plugin")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from esper_core.plugins import Registry
from esper_core.testing.conformance import (
    BlueprintCatalogConformance,
    TamiyoPolicyConformance,
    TelemetrySinkConformance,
)

import esper_example_plugin.plugin
from esper_example_plugin.catalog import ExampleCatalog
from esper_example_plugin.policy import GreedyOptions, GreedyPolicy


@pytest.fixture
def registry(esper_registry: Registry, register_plugin: Any) -> Registry:
    """A registry with Esper's core and this plugin only (no autoload), as in a run that selects its components."""
    register_plugin(esper_example_plugin.plugin, name="example")
    return esper_registry


class TestGreedyPolicy(TamiyoPolicyConformance):
    @pytest.fixture
    def policy(self, registry: Registry) -> Any:
        return registry.build(registry.policy("example-greedy"))

    @pytest.fixture
    def blueprints(self) -> list[Any]:
        return list(ExampleCatalog().descriptors())


class TestEagerGreedyPolicy(TamiyoPolicyConformance):
    """No warm-up, no end-of-run guard and many seeds at once: germination is tried at almost every state."""

    @pytest.fixture
    def policy(self) -> Any:
        return GreedyPolicy(GreedyOptions(warmup_epochs=0, min_remaining_epochs=0, max_in_flight=8))

    @pytest.fixture
    def blueprints(self) -> list[Any]:
        return list(ExampleCatalog().descriptors())


class TestExampleCatalog(BlueprintCatalogConformance):
    @pytest.fixture
    def catalog(self, registry: Registry) -> Any:
        return registry.build(registry.blueprint_catalog("example"))


class TestCsvSink(TelemetrySinkConformance):
    @pytest.fixture
    def sink(self, registry: Registry, tmp_path: Path) -> Iterator[Any]:
        sink = registry.build(registry.telemetry_sink("example-csv"), run_dir=tmp_path)
        yield sink
        sink.close()
