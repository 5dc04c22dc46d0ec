"""The facade: :class:`UrzaLibrary`, the one object the rest of Esper uses to store, find and fetch artifacts.

Why a facade over small parts: the rest of Esper (the ``urza`` store plugin, ``esper serve urza``, the prefetching
store, the docs) depends on one class with a stable API, while each job behind it (the SQLite index, the files,
crash recovery, the cache, checked loading, building and the metrics) lives in a module of its own, listed in
:mod:`esper_urza.library`, and is tested on its own. What stays here is what ties them together: resolving a
blueprint id to its catalog, the order in which a fetch tries memory, then disk, then a build, the order in which
opening recovers the library, and the locking and closed-library checks around every public method.

Two more jobs tie the parts together. **Repair**: opening takes the writer lock and, in this order, removes stale
temporary files, checks the index (setting a damaged one aside), replays the journal, drops rows whose file is
missing or altered, and indexes again the verified artifact files no row names (:mod:`.repair`); an index that turns
out damaged later, in the middle of a fetch, gets the same treatment once and the fetch goes on. **Telemetry**:
given the run's bus, the library publishes its events there itself, after the call that raised them (a fetch that
evicted a corrupt artifact, a failed build, an opening that repaired something), so they reach the run's sinks
without anyone draining it; nothing is published per batch, only after fetches and repairs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from esper_core.errors import EsperError
from esper_core.leyline import BSDS, BlueprintDescriptor, BlueprintTier, SlotKind, TelemetryPacket
from esper_core.protocols import BlueprintCatalog, FetchedSeed, SlotShape
from esper_urza.errors import ArtifactIntegrityError, LibraryFileError
from esper_urza.library.building import ArtifactBuilder, instantiate
from esper_urza.library.cache import ArtifactCache, CachedArtifact
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex, is_damage
from esper_urza.library.journal import RecoveryReport, SaveJournal
from esper_urza.library.loading import ArtifactLoader
from esper_urza.library.locking import LibraryLock
from esper_urza.library.metrics import LibraryMetrics
from esper_urza.library.repair import SQLITE_SIDECARS, reindex, remove_stale_temporaries, set_aside
from esper_urza.options import UrzaOptions
from esper_urza.parameters import (
    artifact_key,
    check_slot,
    resolve_parameters,
    select_descriptors,
)
from esper_urza.records import ArtifactRecord, BuiltArtifact

if TYPE_CHECKING:
    from torch import nn

    from esper_urza.tezzeret import Tezzeret
    from esper_urza.urabrask.rating import SheetRater

log = logging.getLogger(__name__)
T = TypeVar("T")
#: The library's files in its root (beside ``artifacts/`` and ``.lock``).
INDEX_NAME, JOURNAL_NAME = "catalog.sqlite", "journal.log"
#: Packets kept for the next try when the bus refused them (a Redis outage), the oldest dropped first.
MAX_UNPUBLISHED = 16


class TelemetryBus(Protocol):
    """Where the library publishes its telemetry: the run's :class:`esper_core.oona.Oona` bus."""

    def publish(self, message: TelemetryPacket, *, priority: Any) -> object: ...


class UrzaLibrary:
    """SQLite catalog + artifact files + an in-process LRU cache, serving seed modules for slots.

    :param root: the library directory (created if needed).
    :param catalogs: the run's blueprint catalogs; blueprint ids must be unique across them.
    :param options: ``[urza]`` options (budgets, cache size, Tezzeret's checks).
    :param tezzeret: the artifact builder (by default one built from ``options.tezzeret``).
    :param bus: the run's bus; the library then publishes its events on it itself (see the module's docstring).
    :param training_run_id: the run its packets belong to.

    :class:`~esper_urza.errors.LibraryFileError`: a file of the library cannot be used and opening must not decide
    alone what to do with it (it names the file and the fix).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        catalogs: Iterable[BlueprintCatalog] = (),
        *,
        options: UrzaOptions | None = None,
        tezzeret: Tezzeret | None = None,
        bus: TelemetryBus | None = None,
        training_run_id: str = "",
    ) -> None:
        self.root = Path(root)
        self.options = options or UrzaOptions()
        #: Urabrask's sheets of the library's blueprints (:class:`esper_urza.urabrask.rating.SheetRater`), set when a
        #: run builds the library.
        self.sheets: SheetRater | None = None
        self._closed = True  # until it is open: close() then has nothing to release
        artifacts_existed = (self.root / "artifacts").is_dir()
        index_path = self.root / INDEX_NAME
        index_existed = index_path.is_file() and index_path.stat().st_size > 0
        self._files = self._open_directories()
        self.artifacts_dir = self._files.directory
        self.journal_path = self.root / JOURNAL_NAME
        self._catalogs: dict[str, tuple[BlueprintCatalog, BlueprintDescriptor]] = {}
        for catalog in catalogs:
            for descriptor in catalog.descriptors():
                blueprint_id = descriptor.blueprint_id
                if blueprint_id in self._catalogs:
                    other = self._catalogs[blueprint_id][0].name
                    raise EsperError(
                        f"blueprint id {blueprint_id!r} is offered by two catalogs, {other!r} and {catalog.name!r}; "
                        "fetches name blueprints by id alone, so remove one of them from urza.catalogs"
                    )
                self._catalogs[blueprint_id] = (catalog, descriptor)
        self._cache = ArtifactCache(self.options.cache_size)
        self._metrics = LibraryMetrics(self.options, training_run_id=training_run_id)
        self._bus = bus
        self._unpublished: deque[TelemetryPacket] = deque(maxlen=MAX_UNPUBLISHED)
        self._journal = SaveJournal(self.journal_path)
        try:
            self._locks = LibraryLock(self.root / ".lock")
        except OSError as error:
            raise LibraryFileError(
                self.root / ".lock", f"it cannot be opened ({error.strerror or error})", _WRITABLE
            ) from error
        self._lock = self._locks.mutex
        self._closed = False
        try:
            try:
                self._index = ArtifactIndex(index_path)
            except sqlite3.Error as error:
                raise LibraryFileError(index_path, f"SQLite cannot open it ({error})", _MOVE_INDEX) from error
            self._loader = ArtifactLoader(
                index=self._index,
                files=self._files,
                cache=self._cache,
                lock=self._locks,
                metrics=self._metrics,
                options=self.options.tezzeret,
            )
            with self._locks.exclusive():
                #: What the last recovery repaired: opening's, or that of a repair after the index was found damaged
                #: during a fetch (see :class:`~esper_urza.library.journal.RecoveryReport`).
                self.recovery = self._recover(index_existed=index_existed, artifacts_existed=artifacts_existed)
        except BaseException:
            self.close()
            raise
        self._builder = ArtifactBuilder(
            index=self._index,
            files=self._files,
            journal=self._journal,
            lock=self._locks,
            metrics=self._metrics,
            options=self.options.tezzeret,
            tezzeret=tezzeret,
        )

    # -- the ArtifactStore protocol ---------------------------------------------------------------------------------
    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The blueprint's measured safety data sheet at ``slot`` (:class:`esper_core.safety.SafetySheetSource`): from
        the rater a run's library is given (stored, or measured on first use), None without one."""
        return self.sheets.safety_sheet(blueprint_id, slot) if self.sheets is not None else None

    def stored_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The blueprint's sheet at ``slot`` if one is already known, never measured now
        (:class:`esper_core.safety.StoredSheetSource`); None without a rater."""
        return self.sheets.stored_sheet(blueprint_id, slot) if self.sheets is not None else None

    def stored_sheets(self, blueprint_id: str) -> tuple[Sequence[BSDS], Sequence[str]]:
        """The blueprint's stored sheets and the refusals (:class:`esper_core.safety.StoredSheets`)."""
        return self.sheets.stored_sheets(blueprint_id) if self.sheets is not None else ([], [])

    def fetch(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> FetchedSeed:
        """A new module for ``slot`` (never shared with another fetch), from memory, from disk, or built now.

        ``KeyError``: no catalog offers ``blueprint_id``; ``ValueError``: bad parameters or slot;
        :class:`~esper_urza.errors.ArtifactBuildError`: Tezzeret refused to build it.
        """
        return self.fetch_artifact(blueprint_id, slot, parameters)[0]

    def fetch_artifact(
        self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]
    ) -> tuple[FetchedSeed, ArtifactRecord]:
        """:meth:`fetch`, and the stored artifact's record: its key and SHA-256 are what another process needs to
        :meth:`open_artifact` it from the same root (``esper serve urza`` replies with them)."""
        started = time.perf_counter()
        try:
            catalog, descriptor = self._catalogs[blueprint_id]
        except KeyError:
            raise KeyError(
                f"no catalog of this library offers blueprint {blueprint_id!r} (catalogs: {self._catalog_names()})"
            ) from None
        resolved = resolve_parameters(descriptor, parameters)
        check_slot(descriptor, slot)
        key = artifact_key(catalog.name, blueprint_id, resolved, slot)
        try:
            with self._lock:
                self._check_open()
                entry = self._cache.get(key)
                if entry is not None:
                    module = instantiate(entry, slot, self.options.tezzeret)
                    source = "memory"
                else:
                    loaded = self._repairing(lambda: self._loader.load(key, catalog, slot))
                    if loaded is not None:
                        entry, module = loaded
                        source = "disk"
                    else:
                        entry = self._repairing(lambda: self._builder.build(catalog, blueprint_id, slot, resolved))
                        module = instantiate(entry, slot, self.options.tezzeret)
                        source = "built"
                    self._cache.put(key, entry)
                latency_ms = (time.perf_counter() - started) * 1000.0
                self._metrics.observe_fetch(source, latency_ms, entry.record.blueprint_id, slot)
        finally:
            self._publish_events()
        return self._fetched(descriptor, entry, module, latency_ms, source), entry.record

    def open_artifact(self, ref: str, checksum: str, *, slot: SlotShape | None = None) -> FetchedSeed:
        """A new module from the stored artifact whose key is ``ref``, provided its file hashes to ``checksum``.

        For a process that did not build the artifact: ``esper serve urza`` builds and stores it, and replies with
        its key and SHA-256. Never builds. ``slot``, when given, must be the one the artifact was built for.
        :class:`~esper_urza.errors.ArtifactIntegrityError`: the library holds no such artifact, holds another
        version of it, or its file is missing or corrupt (then evicted, so that the service rebuilds it);
        ``KeyError``: none of this library's catalogs offers its blueprint.
        """
        started = time.perf_counter()
        try:
            return self._open_artifact(ref, checksum, slot, started)
        finally:
            self._publish_events()

    def _open_artifact(self, ref: str, checksum: str, slot: SlotShape | None, started: float) -> FetchedSeed:
        with self._lock:
            self._check_open()
            entry = self._cache.peek(ref)
            if entry is not None and entry.record.sha256 == checksum:
                self._check_guard(entry.record, slot)
                self._cache.touch(ref)
                module = instantiate(entry, entry.record.slot, self.options.tezzeret)
                source = "memory"
            else:
                record = self._repairing(lambda: self._index.get(ref))
                if record is None:
                    raise ArtifactIntegrityError(f"the Urza library at {self.root} holds no artifact {ref[:12]}")
                if record.sha256 != checksum:
                    raise ArtifactIntegrityError(
                        f"artifact {ref[:12]} of {record.blueprint_id} in {self.root} has SHA-256 "
                        f"{record.sha256[:12]}, not the {checksum[:12]} asked for: it was replaced since"
                    )
                self._check_guard(record, slot)
                catalog = self._catalog_of(record)
                loaded = self._repairing(lambda: self._loader.load(ref, catalog, record.slot))
                if loaded is None:
                    raise ArtifactIntegrityError(
                        f"artifact {ref[:12]} of {record.blueprint_id} in {self.root} could not be loaded (evicted "
                        "and reported; the next request rebuilds it)"
                    )
                entry, module = loaded
                source = "disk"
                self._cache.put(ref, entry)
            latency_ms = (time.perf_counter() - started) * 1000.0
            self._metrics.observe_fetch(source, latency_ms, entry.record.blueprint_id, entry.record.slot)
        return self._fetched(self._catalogs[entry.record.blueprint_id][1], entry, module, latency_ms, source)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            with suppress(AttributeError, sqlite3.Error):
                self._index.close()
            self._locks.close()

    def __enter__(self) -> UrzaLibrary:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- storing ----------------------------------------------------------------------------------------------------
    def save(self, built: BuiltArtifact) -> ArtifactRecord:
        """Store an artifact durably (replacing the key's previous one, whose extras are kept); returns its record."""
        with self._lock:
            self._check_open()
            return self._repairing(lambda: self._builder.save(built))

    def update_extras(self, key: str, extras: Mapping[str, Any]) -> ArtifactRecord:
        """Merge ``extras`` (JSON-ready; Urabrask's safety data sheets go here) into an artifact's row."""
        with self._locks.exclusive():
            self._check_open()
            record = self._repairing(lambda: self._index.get(key))
            if record is None:
                raise KeyError(f"the library holds no artifact {key!r}")
            merged = {**record.extras, **extras}
            self._index.set_extras(key, merged)
            cached = self._cache.peek(key)
            if cached is not None:
                self._cache.replace(
                    key, attrs.evolve(cached, record=cached.record.with_location(cached.record.path, merged))
                )
            updated = self._index.get(key)
            assert updated is not None
            return updated

    def clear_cache(self) -> None:
        """Forget every loaded artifact (the next fetch of each loads it from disk)."""
        with self._lock:
            self._cache.clear()

    def evict(self, key: str) -> bool:
        """Remove an artifact (row, file and cached copy); False if the library did not hold it."""
        with self._locks.exclusive():
            self._check_open()
            self._cache.pop(key)
            location = self._repairing(lambda: self._index.location(key))
            if location is None:
                return False
            self._index.delete(key)
            if not self._index.path_in_use(location.path):
                self._files.unlink(location.path)
            self._metrics.count("evictions")
            return True

    # -- queries ----------------------------------------------------------------------------------------------------
    def get(self, key: str) -> ArtifactRecord | None:
        with self._lock:
            self._check_open()
            return self._repairing(lambda: self._index.get(key))

    def query(
        self,
        *,
        tier: str | BlueprintTier.ValueType | Iterable[str | BlueprintTier.ValueType] | None = None,
        slot_kind: str | SlotKind.ValueType | None = None,
        min_risk: float | None = None,
        max_risk: float | None = None,
        blueprint_id: str | None = None,
        catalog: str | None = None,
    ) -> list[ArtifactRecord]:
        """Stored artifacts matching every given filter, by blueprint id then creation time."""
        with self._lock:
            self._check_open()
            return self._repairing(
                lambda: self._index.query(
                    tier=tier,
                    slot_kind=slot_kind,
                    min_risk=min_risk,
                    max_risk=max_risk,
                    blueprint_id=blueprint_id,
                    catalog=catalog,
                )
            )

    def blueprints(
        self,
        *,
        tiers: Iterable[str | BlueprintTier.ValueType] | None = None,
        slot_kind: SlotKind.ValueType | None = None,
        max_risk: float | None = None,
        slot: SlotShape | None = None,
    ) -> list[BlueprintDescriptor]:
        """Descriptors the library's catalogs offer, filtered by tier, written slot kind, maximum risk and the slot
        they must fit (its growth mode, and the kinds a width slot reads and writes)."""
        offered = [self._catalogs[blueprint_id][1] for blueprint_id in sorted(self._catalogs)]
        found = []
        for descriptor in select_descriptors(offered, tiers=tiers, slot_kind=slot_kind, max_risk=max_risk, slot=slot):
            copied = BlueprintDescriptor()
            copied.CopyFrom(descriptor)
            found.append(copied)
        return found

    def verify(self) -> list[tuple[str, str]]:
        """Re-hash every artifact file; drop (and report) rows whose file is missing or altered. Returns them."""
        try:
            with self._locks.exclusive():
                self._check_open()
                return self._repairing(lambda: self._loader.sweep(hash_files=True))
        finally:
            self._publish_events()

    # -- telemetry --------------------------------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict[str, float]:
        with self._lock:
            return self._metrics.snapshot(cache_size=len(self._cache), cache_evictions=self._cache.evictions)

    def drain_telemetry(self) -> list[TelemetryPacket]:
        """Telemetry since the last drain: one packet with the library's metrics and its pending events (fetches
        over budget, corrupt artifacts evicted, build failures, repairs), or none if nothing happened. A library
        given a bus publishes its events there itself: this returns what it has not published."""
        with self._lock:
            return self._metrics.drain(cache_size=len(self._cache), cache_evictions=self._cache.evictions)

    def publish_telemetry(self) -> int:
        """Publish the telemetry since the last drain (:meth:`drain_telemetry`) on the bus given at construction,
        now; returns how many packets went (0 without a bus). A packet the bus refuses (it is down) is kept, a few
        at most, and tried again on the next publication."""
        if self._bus is None:
            return 0
        with self._lock:
            pending = [*self._unpublished, *self.drain_telemetry()]
            self._unpublished.clear()
        published = 0
        for position, packet in enumerate(pending):
            try:
                self._bus.publish(packet, priority=packet.priority)
            except EsperError as error:  # the bus is down (BusUnavailableError): keep them for the next try
                log.warning("the Urza library at %s could not publish its telemetry: %s", self.root, error)
                with self._lock:
                    self._unpublished.extendleft(reversed(pending[position:]))
                break
            published += 1
        return published

    def _publish_events(self) -> None:
        """After a call that may have raised events: publish them, if there is a bus and there are events."""
        if self._bus is not None and (self._metrics.has_events or self._unpublished):
            self.publish_telemetry()

    @property
    def tezzeret(self) -> Tezzeret:
        return self._builder.tezzeret

    # -- internals --------------------------------------------------------------------------------------------------
    @staticmethod
    def _fetched(
        descriptor: BlueprintDescriptor, entry: CachedArtifact, module: nn.Module, latency_ms: float, source: str
    ) -> FetchedSeed:
        copied = BlueprintDescriptor()
        copied.CopyFrom(descriptor)
        return FetchedSeed(
            module=module,
            descriptor=copied,
            artifact_sha256=entry.record.sha256,
            fetch_latency_ms=latency_ms,
            source=source,
        )

    @staticmethod
    def _check_guard(record: ArtifactRecord, slot: SlotShape | None) -> None:
        if slot is None:
            return
        if not record.guard.fits(slot):
            raise ArtifactIntegrityError(
                f"artifact {record.key[:12]} of {record.blueprint_id} was built for {record.slot.describe()}, "
                f"not {slot.describe()}"
            )

    def _catalog_names(self) -> str:
        return ", ".join(sorted({catalog.name for catalog, _ in self._catalogs.values()})) or "no catalogs"

    def _catalog_of(self, record: ArtifactRecord) -> BlueprintCatalog:
        offered = self._catalogs.get(record.blueprint_id)
        if offered is None or offered[0].name != record.catalog:
            raise KeyError(
                f"artifact {record.key[:12]} is {record.blueprint_id} of catalog {record.catalog!r}, which this "
                f"library's catalogs ({self._catalog_names()}) do not offer: give this process the catalogs the "
                "service uses (urza.catalogs)"
            )
        return offered[0]

    def _check_open(self) -> None:
        if self._closed:
            raise EsperError(f"the Urza library at {self.root} is closed")

    def _open_directories(self) -> ArtifactFiles:
        """The root and ``artifacts/``, created if missing; :class:`LibraryFileError` if either is not a usable
        directory."""
        for path in (self.root, self.root / "artifacts"):
            if path.exists() and not path.is_dir():
                raise LibraryFileError(
                    path,
                    "it is a file, where the library keeps a directory",
                    "move it away, or point urza.root at another directory",
                )
        try:
            return ArtifactFiles(self.root)
        except OSError as error:
            raise LibraryFileError(
                self.root, f"its directories cannot be created ({error.strerror or error})", _WRITABLE
            ) from error

    def _check_index(self) -> tuple[str, str | None]:
        """Open the index and check it (:meth:`ArtifactIndex.damage`); a damaged one is set aside and an empty one
        made in its place. Returns ``(what was wrong, where it was set aside)``, ``("", None)`` if nothing was."""
        index = self._index
        try:
            index.create_schema()
            problem = index.damage()
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise LibraryFileError(index.path, f"SQLite cannot use it ({error})", _MOVE_INDEX) from error
            problem = f"SQLite: {error}"
        if problem is None:
            return "", None
        index.close()
        try:
            moved = set_aside(index.path, sidecars=SQLITE_SIDECARS)
        except OSError as error:
            raise LibraryFileError(
                index.path, f"it is damaged ({problem}) and cannot be renamed ({error.strerror or error})", _WRITABLE
            ) from error
        log.warning("the Urza index %s is damaged (%s): set aside as %s, rebuilding it", index.path, problem, moved)
        index.reopen()
        index.create_schema()
        return problem, moved.relative_to(self.root).as_posix()

    def _recover(self, *, index_existed: bool = True, artifacts_existed: bool = True) -> RecoveryReport:
        """Repair the library's files (the caller holds the writer lock): remove stale temporaries, check the index
        (a damaged one set aside), replay the journal (a damaged one set aside), drop broken rows, index again the
        verified files no row names and remove the rest, empty the journal. Reports every repair as an event."""
        temporaries = remove_stale_temporaries(self.root, self._files, (JOURNAL_NAME,))
        index_problem, index_set_aside = self._check_index()
        scan = self._journal.scan()
        journal_set_aside = None
        if scan.damaged_bytes:
            try:
                journal_set_aside = set_aside(self.journal_path).relative_to(self.root).as_posix()
            except OSError as error:
                raise LibraryFileError(
                    self.journal_path, f"it is damaged and cannot be renamed ({error.strerror or error})", _WRITABLE
                ) from error
            log.warning("the Urza journal %s is damaged: set aside as %s", self.journal_path, journal_set_aside)
        rolled_forward, rolled_back = self._journal.replay(self._index, self._files, scan.records)
        dropped = self._loader.sweep(hash_files=self.options.verify_on_open)
        rebuilt, failed, orphans = reindex(self._index, self._files, self._metrics)
        self._journal.reset()
        report = RecoveryReport(
            rolled_forward=rolled_forward,
            rolled_back=rolled_back,
            orphans_removed=orphans,
            rows_dropped=tuple(dropped),
            temporaries_removed=temporaries,
            rows_rebuilt=rebuilt,
            artifacts_dropped=tuple(failed),
            index_problem=index_problem,
            index_set_aside=index_set_aside,
            index_missing=not index_existed and not index_problem and bool(rebuilt or failed),
            journal_damaged_bytes=scan.damaged_bytes,
            journal_set_aside=journal_set_aside,
            artifacts_missing=not artifacts_existed and bool(dropped),
        )
        for event in report.events(self.root):
            self._metrics.report(event)
        return report

    def _repairing(self, operation: Callable[[], T]) -> T:
        """Run an operation on the index; if SQLite finds the index damaged, repair the library as opening does
        (:meth:`_recover`) and run it once more. A second failure is a :class:`LibraryFileError`."""
        try:
            self._index.follow()
            return operation()
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise
            log.warning("the Urza index %s is damaged (%s): repairing the library", self._index.path, error)
            with self._locks.exclusive():
                self.recovery = self._recover()
        try:
            return operation()
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise
            raise LibraryFileError(
                self._index.path,
                f"it was found damaged again right after it was rebuilt ({error})",
                "the disk may be failing: check it (dmesg, smartctl), then restart; the library rebuilds the index "
                "from the artifact files whenever it opens",
            ) from error


#: The fix for a library file or directory this user cannot create, read or write.
_WRITABLE = (
    "urza.root must be a directory this user can read and write (check its permissions and free space), or point "
    "urza.root at another directory"
)
#: The fix for an index SQLite cannot open (a directory, no permission, locked for too long).
_MOVE_INDEX = (
    "it must be a SQLite file this user can read and write: fix its permissions, or move it away (the library then "
    "rebuilds its index from the artifact files)"
)
