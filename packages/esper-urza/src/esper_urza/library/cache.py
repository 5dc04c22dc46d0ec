"""The in-process cache of loaded artifacts, least recently used evicted first.

Why: a warm fetch must cost little more than constructing the module (Kasmina germinates seeds in the training
loop), and reading, hashing and parsing the artifact file is most of a cold load. The cache holds what a load
produced, the record and the ``state_dict``, never a module: every fetch builds a new module and copies the weights
in, so two slots never share a tensor. Holding at most ``capacity`` artifacts bounds the memory a long run's many
blueprints, parameters and slot shapes can take.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs

from esper_core.protocols import BlueprintCatalog
from esper_urza.records import ArtifactRecord


@attrs.frozen(eq=False)
class CachedArtifact:
    """A loaded artifact: its record, its ``state_dict`` and the catalog that builds its module."""

    record: ArtifactRecord
    state_dict: Mapping[str, Any]
    catalog: BlueprintCatalog


class ArtifactCache:
    """An LRU map from artifact key to :class:`CachedArtifact`, holding at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the artifact cache needs a capacity of at least 1 (urza.cache_size), not {capacity}")
        self.capacity = capacity
        #: Entries pushed out by newer ones since the cache was created.
        self.evictions = 0
        self._entries: OrderedDict[str, CachedArtifact] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Keys from the least to the most recently used (the next to be evicted first)."""
        return list(self._entries)

    def get(self, key: str) -> CachedArtifact | None:
        """The entry, now the most recently used; None on a miss."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def peek(self, key: str) -> CachedArtifact | None:
        """The entry without counting it as used (for a caller that may still refuse it)."""
        return self._entries.get(key)

    def touch(self, key: str) -> None:
        """Count the entry as used now."""
        self._entries.move_to_end(key)

    def put(self, key: str, entry: CachedArtifact) -> None:
        """Store the entry as the most recently used, evicting the least recently used beyond ``capacity``."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def replace(self, key: str, entry: CachedArtifact) -> None:
        """Update a cached entry in place (its recency unchanged); nothing if the key is not cached."""
        if key in self._entries:
            self._entries[key] = entry

    def pop(self, key: str) -> CachedArtifact | None:
        """Forget the entry (not counted as an eviction: the artifact itself went away)."""
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
