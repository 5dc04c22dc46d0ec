"""Fixtures for Kasmina's tests (the rig itself is in kasmina_rig.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kasmina_rig import Rig, SmallCatalog, make_rig


@pytest.fixture
def catalog() -> SmallCatalog:
    return SmallCatalog()


@pytest.fixture
def rig_factory(catalog: SmallCatalog) -> Callable[..., Rig]:
    def make(host: str = "conv", **options: Any) -> Rig:
        return make_rig(catalog, host, **options)

    return make
