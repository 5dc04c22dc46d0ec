"""Esper's plugin system: pluggy hookspecs, typed descriptors, the plugin manager and the registry facade."""

from esper_core.plugins.descriptors import (
    ArtifactStoreSpec,
    BlueprintCatalogSpec,
    BuildContext,
    BusBackendSpec,
    CliCommandSpec,
    ComponentSpec,
    ControllerSpec,
    PolicySpec,
    SeedExecutorSpec,
    ServiceSpec,
    SimicTrainerSpec,
    TaskSpec,
    TelemetrySinkSpec,
    normalize_name,
)
from esper_core.plugins.manager import EsperPluginManager, PluginInfo, create_plugin_manager
from esper_core.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl, hookspec
from esper_core.plugins.registry import Registry
from esper_core.plugins.runinfo import RunInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "ArtifactStoreSpec",
    "BlueprintCatalogSpec",
    "BuildContext",
    "BusBackendSpec",
    "CliCommandSpec",
    "ComponentSpec",
    "ControllerSpec",
    "EsperPluginManager",
    "PluginInfo",
    "PolicySpec",
    "Registry",
    "RunInfo",
    "SeedExecutorSpec",
    "ServiceSpec",
    "SimicTrainerSpec",
    "TaskSpec",
    "TelemetrySinkSpec",
    "create_plugin_manager",
    "hookimpl",
    "hookspec",
    "normalize_name",
]
