"""The in-process bus backend passes the bus conformance suite (the Redis backend runs the same suite)."""

from __future__ import annotations

import pytest

from esper_core.oona import MemoryBackend
from esper_core.testing.conformance import BusBackendConformance


class TestMemoryBackend(BusBackendConformance):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()
