"""Conformance suites, one per plugin point. Subclass one in your tests and provide the fixture it names::

    from esper_core.testing.conformance import TelemetrySinkConformance

    class TestMySink(TelemetrySinkConformance):
        @pytest.fixture
        def sink(self, tmp_path):
            return MySink(tmp_path)

Esper's first-party plugins run the same suites.
"""

from esper_core.testing.conformance.bus import BusBackendConformance
from esper_core.testing.conformance.catalog import BlueprintCatalogConformance
from esper_core.testing.conformance.controller import ControllerConformance
from esper_core.testing.conformance.executor import SeedExecutorConformance
from esper_core.testing.conformance.policy import TamiyoPolicyConformance
from esper_core.testing.conformance.sink import TelemetrySinkConformance
from esper_core.testing.conformance.store import ArtifactStoreConformance
from esper_core.testing.conformance.task import TaskConformance
from esper_core.testing.conformance.trainer import SimicTrainerConformance

__all__ = [
    "ArtifactStoreConformance",
    "BlueprintCatalogConformance",
    "BusBackendConformance",
    "ControllerConformance",
    "SeedExecutorConformance",
    "SimicTrainerConformance",
    "TamiyoPolicyConformance",
    "TaskConformance",
    "TelemetrySinkConformance",
]
