"""Loading from disk, trusted only once checked: a broken artifact is evicted and reported, never loaded.

Why: an artifact file is parsed with ``torch.load``, and a fetch hands its weights to a training run, so a file that
was altered, truncated, replaced by another request's or outgrown by its blueprint must never get that far. A load
checks, in order, that the row's file exists (``missing``), that its bytes hash to the row's SHA-256 **before** they
are parsed (``corrupt``), that they parse as an artifact with ``weights_only=True`` (``unreadable``), that the
artifact inside is the one asked for, built for exactly the slot asked for (``mismatch``: its key, and its guard's
written kind and shape and, for a width slot, its read kind and shape; an artifact without a read side is a
residual one), and that its ``state_dict`` still fits the module the catalog
builds now (``stale``). The first failure evicts the artifact (its row, if it still names that version, and its
file), counts an integrity failure and reports ``artifact_<reason>``; the fetch then builds a fresh one. The same
eviction serves the sweep that opening and :meth:`~esper_urza.library.UrzaLibrary.verify` run over every row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_core.telemetry import ERROR, WARNING, Event
from esper_urza.errors import ArtifactIntegrityError
from esper_urza.library.building import instantiate
from esper_urza.library.cache import ArtifactCache, CachedArtifact
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex, Location
from esper_urza.library.locking import LibraryLock
from esper_urza.library.metrics import LibraryMetrics
from esper_urza.options import TezzeretOptions
from esper_urza.records import sha256_of

if TYPE_CHECKING:
    from torch import nn

#: Why a broken artifact was evicted, as its event says it.
EVICTION_REASONS = {
    "missing": "its file is missing",
    "corrupt": "its file's SHA-256 differs from the recorded one",
    "unreadable": "its file hashes right but cannot be parsed as an artifact",
    "mismatch": "its file holds an artifact for another request",
    "stale": "its state does not fit the module the catalog builds now",
}


class ArtifactLoader:
    """Loads stored artifacts after checking them, and evicts the broken ones."""

    def __init__(
        self,
        *,
        index: ArtifactIndex,
        files: ArtifactFiles,
        cache: ArtifactCache,
        lock: LibraryLock,
        metrics: LibraryMetrics,
        options: TezzeretOptions,
    ) -> None:
        self._index = index
        self._files = files
        self._cache = cache
        self._lock = lock
        self._metrics = metrics
        self._options = options

    def load(self, key: str, catalog: BlueprintCatalog, slot: SlotShape) -> tuple[CachedArtifact, nn.Module] | None:
        """The artifact from disk with a module built from it; None if the library does not hold it, or held it
        broken (then it is evicted and reported)."""
        from esper_urza.tezzeret import load_artifact

        record = self._index.get(key)
        if record is None:
            return None
        location = Location(key, record.path, record.sha256, record.blueprint_id)
        data = self._files.read(record.path)
        if data is None:
            self.evict_broken(location, "missing")
            return None
        if sha256_of(data) != record.sha256:
            self.evict_broken(location, "corrupt")
            return None
        try:
            embedded, state_dict = load_artifact(data, sha256=record.sha256, path=record.path)
        except ArtifactIntegrityError:
            self.evict_broken(location, "unreadable")
            return None
        if embedded.key != key or not embedded.guard.fits(slot):
            self.evict_broken(location, "mismatch")
            return None
        # From here on the verified bytes speak for the artifact (its blueprint, parameters, slot), not the row.
        entry = CachedArtifact(embedded.with_location(record.path, record.extras), state_dict, catalog)
        try:
            module = instantiate(entry, slot, self._options)
        except (RuntimeError, ValueError, KeyError):
            self.evict_broken(location, "stale")
            return None
        return entry, module

    def sweep(self, *, hash_files: bool) -> list[tuple[str, str]]:
        """Evict every artifact whose file is missing or (``hash_files``) does not hash to its row's SHA-256;
        returns their ``(key, reason)``."""
        dropped: list[tuple[str, str]] = []
        for location in self._index.locations():
            if not self._files.exists(location.path):
                reason = "missing"
            elif hash_files and self._files.sha256(location.path) != location.sha256:
                reason = "corrupt"
            else:
                continue
            self.evict_broken(location, reason)
            dropped.append((location.key, reason))
        return dropped

    def evict_broken(self, location: Location, reason: str) -> None:
        """Remove a broken artifact (its row only if the row still names the same version) and report it."""
        key, relative, sha256, blueprint_id = location
        with self._lock.exclusive():
            self._cache.pop(key)
            self._index.delete(key, sha256=sha256)
            if not self._index.path_in_use(relative):
                self._files.unlink(relative)
        self._metrics.count("integrity_failures")
        self._metrics.report(
            Event(
                f"artifact_{reason}",
                f"evicted artifact {key[:12]} of {blueprint_id} ({relative}): {EVICTION_REASONS.get(reason, reason)}; "
                "it will be rebuilt on the next fetch",
                WARNING if reason == "stale" else ERROR,
                {"key": key, "blueprint_id": blueprint_id, "path": relative, "sha256": sha256, "reason": reason},
            )
        )
