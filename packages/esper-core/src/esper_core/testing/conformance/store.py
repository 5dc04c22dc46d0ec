"""Every artifact store serves a module for the requested slot, and serves it from memory the second time.

Subclass :class:`ArtifactStoreConformance` and provide ``store`` (a fresh store) and ``fetch_request`` (a
``(blueprint_id, SlotShape, parameters)`` tuple the store can serve) fixtures. Requires torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from esper_core.protocols import ArtifactStore, SlotShape


class ArtifactStoreConformance:
    def test_store_satisfies_the_protocol(self, store: ArtifactStore) -> None:
        assert isinstance(store, ArtifactStore)

    def test_fetch_serves_a_module_for_the_slot(
        self, store: ArtifactStore, fetch_request: tuple[str, SlotShape, Mapping[str, float]]
    ) -> None:
        import torch

        blueprint_id, slot, parameters = fetch_request
        fetched = store.fetch(blueprint_id, slot, parameters)
        inputs = torch.randn(2, *slot.shape)
        assert tuple(fetched.module(inputs).shape) == tuple(inputs.shape)
        assert len(fetched.artifact_sha256) == 64
        assert fetched.fetch_latency_ms >= 0

    def test_a_second_fetch_is_a_warm_hit(
        self, store: ArtifactStore, fetch_request: tuple[str, SlotShape, Mapping[str, float]]
    ) -> None:
        blueprint_id, slot, parameters = fetch_request
        first = store.fetch(blueprint_id, slot, parameters)
        second = store.fetch(blueprint_id, slot, parameters)
        assert second.source == "memory"
        assert second.artifact_sha256 == first.artifact_sha256

    def test_an_unknown_blueprint_is_a_key_error(
        self, store: ArtifactStore, fetch_request: tuple[str, SlotShape, Mapping[str, float]]
    ) -> None:
        _, slot, _ = fetch_request
        with pytest.raises(KeyError):
            store.fetch("no-such-blueprint", slot, {})
