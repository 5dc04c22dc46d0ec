"""Building: an artifact Tezzeret builds on a miss, saved durably; and a module made from a loaded artifact.

Why here and not in the fetch path: a build is the one slow, failing, disk-writing thing a fetch can do. Tezzeret
refuses modules that break the seed contract (the refusal is counted, reported as ``artifact_build_failed`` and
raised, and nothing is stored); an accepted artifact is saved before the fetch returns, so the next process that
asks finds it on disk. The save follows the journal's protocol (:mod:`.journal`): intent, atomic file write, row
upsert, commit, then removal of the file the row named before. A rebuilt artifact keeps its row's ``extras``
(Urabrask's safety data sheets describe the blueprint, not the bytes).

torch is imported only when a module is built or instantiated: storing an artifact built elsewhere needs none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_core.telemetry import ERROR, Event
from esper_urza.errors import ArtifactBuildError, ArtifactIntegrityError
from esper_urza.library.cache import CachedArtifact
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex
from esper_urza.library.journal import SaveJournal
from esper_urza.library.locking import LibraryLock
from esper_urza.library.metrics import LibraryMetrics
from esper_urza.options import TezzeretOptions
from esper_urza.records import ArtifactRecord, BuiltArtifact, sha256_of

if TYPE_CHECKING:
    from torch import nn

    from esper_urza.tezzeret import Tezzeret


class ArtifactBuilder:
    """Builds artifacts with Tezzeret and stores them in the library's index, files and journal."""

    def __init__(
        self,
        *,
        index: ArtifactIndex,
        files: ArtifactFiles,
        journal: SaveJournal,
        lock: LibraryLock,
        metrics: LibraryMetrics,
        options: TezzeretOptions,
        tezzeret: Tezzeret | None = None,
    ) -> None:
        self._index = index
        self._files = files
        self._journal = journal
        self._lock = lock
        self._metrics = metrics
        self._options = options
        self._tezzeret = tezzeret

    @property
    def tezzeret(self) -> Tezzeret:
        """The builder given, or one made from the ``[urza.tezzeret]`` options on first use (it imports torch)."""
        if self._tezzeret is None:
            from esper_urza.tezzeret import Tezzeret

            self._tezzeret = Tezzeret(self._options)
        return self._tezzeret

    def build(
        self, catalog: BlueprintCatalog, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]
    ) -> CachedArtifact:
        """Build, check and save the artifact; :class:`ArtifactBuildError` (counted and reported) if refused."""
        try:
            built = self.tezzeret.build(catalog, blueprint_id, slot, parameters)
        except ArtifactBuildError as error:
            self._metrics.count("build_failures")
            self._metrics.report(
                Event(
                    "artifact_build_failed",
                    str(error),
                    ERROR,
                    {"blueprint_id": blueprint_id, "check": error.check, "slot": error.slot}
                    | {name: str(value) for name, value in error.numbers.items()},
                )
            )
            raise
        record = self.save(built)
        return CachedArtifact(record, built.state_dict or {}, catalog)

    def save(self, built: BuiltArtifact) -> ArtifactRecord:
        """Store an artifact durably (replacing the key's previous one, whose extras are kept); returns its record.

        The caller has checked that the library is open, and holds its mutex."""
        record = built.record
        if sha256_of(built.data) != record.sha256:
            raise ArtifactIntegrityError(f"artifact {record.key[:12]} does not match its own SHA-256; not saved")
        relative = ArtifactFiles.relative_path(record)
        with self._lock.exclusive():
            previous = self._index.get(record.key)
            stored = record.with_location(relative, previous.extras if previous is not None else record.extras)
            with self._journal.transaction(record.key, relative, record.sha256):
                self._files.write(relative, built.data)
                self._index.upsert(stored)
            if previous is not None and previous.path != relative and not self._index.path_in_use(previous.path):
                self._files.unlink(previous.path)
            self._journal.compact()
            self._metrics.count("saves")
        return stored


def instantiate(entry: CachedArtifact, slot: SlotShape, options: TezzeretOptions) -> nn.Module:
    """A new module with the artifact's weights (copied: no two fetches share a tensor), compiled if the artifact
    was and ``options.compile`` is on. Errors of ``load_state_dict`` (a stale artifact) propagate."""
    from esper_urza.tezzeret import isolated_rng

    with isolated_rng():
        module = entry.catalog.build(entry.record.blueprint_id, slot, entry.record.parameters)
    module.load_state_dict(entry.state_dict)
    if options.compile and entry.record.compiled:
        module.compile(backend=options.compile_backend)
    return module
