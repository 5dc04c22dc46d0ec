"""Urza: the artifact library (an :class:`esper_core.protocols.ArtifactStore`).

Layout under the root directory::

    catalog.sqlite                                      one row per artifact (table ``artifacts``)
    journal.log                                         write-ahead journal (esper_core.storage.AppendOnlyLog)
    artifacts/<catalog>/<blueprint>/<key>-<sha>.pt      one file per artifact, named by its key and content hash
    .lock                                               serializes writers across processes (flock)

Saving is: journal an intent (key, path, SHA-256) -> write the file atomically -> upsert the row (one SQLite
statement) -> journal a commit -> delete the file the row used to name. Files are never rewritten in place, so a
row always names a complete file. Opening replays the journal: an intent without a commit is finished (its row
names its file and the file hashes right) or rolled back (its file removed); then rows whose file is missing or
whose hash differs are dropped, files no row names are removed, and the journal is emptied. A kill at any moment
therefore leaves a consistent library (the tests kill writer processes mid-save to show it).

Every load from disk checks the file's SHA-256 against the row before ``torch.load(..., weights_only=True)``; a
corrupt artifact is evicted and reported, never loaded, and the fetch builds a fresh one. Fetches are timed; a
fetch over its budget is reported as a ``timeout_urza`` event, drained with :meth:`UrzaLibrary.drain_telemetry`.

torch is imported only when an artifact is loaded or built: writing needs none.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import statistics
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from esper_core.errors import EsperError
from esper_core.leyline import BlueprintDescriptor, BlueprintTier, SlotKind, TelemetryPacket
from esper_core.protocols import BlueprintCatalog, FetchedSeed, SlotShape
from esper_core.storage import AppendOnlyLog, atomic_write_bytes, read_records
from esper_core.telemetry import ERROR, INFO, WARNING, Event, Metric, build_telemetry_packet
from esper_urza.errors import ArtifactBuildError, ArtifactIntegrityError
from esper_urza.options import UrzaOptions
from esper_urza.parameters import (
    artifact_key,
    check_slot,
    kind_from_name,
    kind_name,
    resolve_parameters,
    tier_from_name,
    tier_name,
)
from esper_urza.records import ArtifactRecord, BuiltArtifact, sha256_of

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers in one process are still serialized
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from torch import nn

    from esper_urza.tezzeret import Tezzeret

SOURCES = ("memory", "disk", "built")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY,
    catalog TEXT NOT NULL,
    blueprint_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    risk REAL NOT NULL,
    stage INTEGER NOT NULL,
    quarantine_only INTEGER NOT NULL,
    approval_required INTEGER NOT NULL,
    slot_kind TEXT NOT NULL,
    slot_shape TEXT NOT NULL,
    parameters TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    parameter_count INTEGER NOT NULL,
    forward_latency_ms REAL NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL,
    extras TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS artifacts_by_tier ON artifacts (tier, risk);
CREATE INDEX IF NOT EXISTS artifacts_by_kind ON artifacts (slot_kind);
CREATE INDEX IF NOT EXISTS artifacts_by_blueprint ON artifacts (catalog, blueprint_id);
"""
_COLUMNS = (
    "key, catalog, blueprint_id, name, tier, risk, stage, quarantine_only, approval_required, slot_kind, "
    "slot_shape, parameters, path, sha256, size_bytes, parameter_count, forward_latency_ms, created_at, record, extras"
)
#: The journal is emptied once it holds this many records (two per save).
_JOURNAL_COMPACT_AT = 256
_LATENCY_WINDOW = 2048
_MAX_PENDING_EVENTS = 512
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@attrs.frozen
class RecoveryReport:
    """What opening the library repaired."""

    #: Journaled saves that had reached their row (kept).
    rolled_forward: int = 0
    #: Journaled saves that had not (their files removed).
    rolled_back: int = 0
    #: Artifact files no row named (removed): temporary files of interrupted writes, replaced files.
    orphans_removed: int = 0
    #: ``(key, reason)`` of rows dropped because their file was missing or did not hash right.
    rows_dropped: tuple[tuple[str, str], ...] = ()

    @property
    def repaired(self) -> bool:
        return bool(self.rolled_back or self.orphans_removed or self.rows_dropped)


@attrs.frozen(eq=False)
class _Entry:
    """A loaded artifact in the memory cache: its record, its ``state_dict`` and the catalog that builds it."""

    record: ArtifactRecord
    state_dict: Mapping[str, Any]
    catalog: BlueprintCatalog


def _safe(part: str) -> str:
    cleaned = _UNSAFE.sub("_", part)
    return cleaned if cleaned and cleaned not in (".", "..") else "_"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _percentile(samples: Sequence[float], fraction: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class UrzaLibrary:
    """SQLite catalog + artifact files + an in-process LRU cache, serving seed modules for slots.

    :param root: the library directory (created if needed).
    :param catalogs: the run's blueprint catalogs; blueprint ids must be unique across them.
    :param options: ``[urza]`` options (budgets, cache size, Tezzeret's checks).
    :param tezzeret: the artifact builder (by default one built from ``options.tezzeret``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        catalogs: Iterable[BlueprintCatalog] = (),
        *,
        options: UrzaOptions | None = None,
        tezzeret: Tezzeret | None = None,
    ) -> None:
        self.root = Path(root)
        self.options = options or UrzaOptions()
        self.artifacts_dir = self.root / "artifacts"
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.root / "journal.log"
        self._tezzeret = tezzeret
        self._lock = threading.RLock()
        self._lock_depth = 0
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
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._counters: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {source: deque(maxlen=_LATENCY_WINDOW) for source in SOURCES}
        self._events: deque[Event] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._fetches_since_drain = 0
        self._closed = False
        self._lock_file = open(self.root / ".lock", "a+b")  # noqa: SIM115 - held for the library's lifetime
        self._db = sqlite3.connect(self.root / "catalog.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            with self._exclusive():
                self._db.execute("PRAGMA busy_timeout = 30000")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                #: What opening repaired (see :class:`RecoveryReport`).
                self.recovery = self._recover()
        except BaseException:
            self.close()
            raise

    # -- the ArtifactStore protocol ---------------------------------------------------------------------------------
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
            offered = ", ".join(sorted({catalog.name for catalog, _ in self._catalogs.values()})) or "no catalogs"
            raise KeyError(
                f"no catalog of this library offers blueprint {blueprint_id!r} (catalogs: {offered})"
            ) from None
        resolved = resolve_parameters(descriptor, parameters)
        check_slot(descriptor, slot)
        key = artifact_key(catalog.name, blueprint_id, resolved, slot)
        with self._lock:
            self._check_open()
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                module = self._instantiate(entry, slot)
                source = "memory"
            else:
                loaded = self._load(key, catalog, slot)
                if loaded is not None:
                    entry, module = loaded
                    source = "disk"
                else:
                    entry = self._build(catalog, blueprint_id, slot, resolved)
                    module = self._instantiate(entry, slot)
                    source = "built"
                self._remember(key, entry)
            latency_ms = (time.perf_counter() - started) * 1000.0
            self._observe(source, latency_ms, entry.record, slot)
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
        with self._lock:
            self._check_open()
            entry = self._cache.get(ref)
            if entry is not None and entry.record.sha256 == checksum:
                self._check_guard(entry.record, slot)
                self._cache.move_to_end(ref)
                module = self._instantiate(entry, entry.record.slot)
                source = "memory"
            else:
                row = self._row(ref)
                if row is None:
                    raise ArtifactIntegrityError(f"the Urza library at {self.root} holds no artifact {ref[:12]}")
                record = self._record(row)
                if record.sha256 != checksum:
                    raise ArtifactIntegrityError(
                        f"artifact {ref[:12]} of {record.blueprint_id} in {self.root} has SHA-256 "
                        f"{record.sha256[:12]}, not the {checksum[:12]} asked for: it was replaced since"
                    )
                self._check_guard(record, slot)
                catalog = self._catalog_of(record)
                loaded = self._load(ref, catalog, record.slot)
                if loaded is None:
                    raise ArtifactIntegrityError(
                        f"artifact {ref[:12]} of {record.blueprint_id} in {self.root} could not be loaded (evicted "
                        "and reported; the next request rebuilds it)"
                    )
                entry, module = loaded
                source = "disk"
                self._remember(ref, entry)
            latency_ms = (time.perf_counter() - started) * 1000.0
            self._observe(source, latency_ms, entry.record, entry.record.slot)
        return self._fetched(self._catalogs[entry.record.blueprint_id][1], entry, module, latency_ms, source)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            with suppress(AttributeError, sqlite3.Error):
                self._db.close()
            self._lock_file.close()

    def __enter__(self) -> UrzaLibrary:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- storing ----------------------------------------------------------------------------------------------------
    def save(self, built: BuiltArtifact) -> ArtifactRecord:
        """Store an artifact durably (replacing the key's previous one, whose extras are kept); returns its record."""
        record = built.record
        if sha256_of(built.data) != record.sha256:
            raise ArtifactIntegrityError(f"artifact {record.key[:12]} does not match its own SHA-256; not saved")
        relative = (
            f"artifacts/{_safe(record.catalog)}/{_safe(record.blueprint_id)}/{record.key[:32]}-{record.sha256[:16]}.pt"
        )
        with self._exclusive():
            self._check_open()
            previous = self._row(record.key)
            extras = json.loads(previous["extras"]) if previous is not None else dict(record.extras)
            stored = record.with_location(relative, extras)
            transaction = uuid.uuid4().hex
            with AppendOnlyLog(self.journal_path) as journal:
                journal.append(
                    _json(
                        {
                            "op": "intent",
                            "tx": transaction,
                            "key": record.key,
                            "path": relative,
                            "sha256": record.sha256,
                        }
                    ).encode()
                )
                atomic_write_bytes(self.root / relative, built.data)
                self._upsert(stored)
                journal.append(_json({"op": "commit", "tx": transaction}).encode())
                journal_records = journal.record_count
            if previous is not None and previous["path"] != relative and not self._path_in_use(previous["path"]):
                self._unlink(previous["path"])
            if journal_records >= _JOURNAL_COMPACT_AT:
                atomic_write_bytes(self.journal_path, b"")
            self._counters["saves"] += 1
        return stored

    def update_extras(self, key: str, extras: Mapping[str, Any]) -> ArtifactRecord:
        """Merge ``extras`` (JSON-ready; Urabrask's safety data sheets go here) into an artifact's row."""
        with self._exclusive():
            self._check_open()
            row = self._row(key)
            if row is None:
                raise KeyError(f"the library holds no artifact {key!r}")
            merged = {**json.loads(row["extras"]), **extras}
            self._db.execute("UPDATE artifacts SET extras = ? WHERE key = ?", (_json(merged), key))
            cached = self._cache.get(key)
            if cached is not None:
                self._cache[key] = attrs.evolve(cached, record=cached.record.with_location(cached.record.path, merged))
            row = self._row(key)
            assert row is not None
            return self._record(row)

    def clear_cache(self) -> None:
        """Forget every loaded artifact (the next fetch of each loads it from disk)."""
        with self._lock:
            self._cache.clear()

    def evict(self, key: str) -> bool:
        """Remove an artifact (row, file and cached copy); False if the library did not hold it."""
        with self._exclusive():
            self._check_open()
            self._cache.pop(key, None)
            row = self._row(key)
            if row is None:
                return False
            self._db.execute("DELETE FROM artifacts WHERE key = ?", (key,))
            if not self._path_in_use(row["path"]):
                self._unlink(row["path"])
            self._counters["evictions"] += 1
            return True

    # -- queries ----------------------------------------------------------------------------------------------------
    def get(self, key: str) -> ArtifactRecord | None:
        with self._lock:
            self._check_open()
            row = self._row(key)
            return None if row is None else self._record(row)

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
        clauses: list[str] = []
        values: list[Any] = []
        if tier is not None:
            tiers = [tier] if isinstance(tier, (str, int)) else list(tier)
            names = [tier_name(tier_from_name(item)) for item in tiers]
            clauses.append(f"tier IN ({', '.join('?' for _ in names)})")
            values.extend(names)
        if slot_kind is not None:
            clauses.append("slot_kind = ?")
            values.append(kind_name(kind_from_name(slot_kind) if isinstance(slot_kind, str) else slot_kind))
        if min_risk is not None:
            clauses.append("risk >= ?")
            values.append(float(min_risk))
        if max_risk is not None:
            clauses.append("risk <= ?")
            values.append(float(max_risk))
        if blueprint_id is not None:
            clauses.append("blueprint_id = ?")
            values.append(blueprint_id)
        if catalog is not None:
            clauses.append("catalog = ?")
            values.append(catalog)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM artifacts{where} ORDER BY blueprint_id, created_at", values
            ).fetchall()
        return [self._record(row) for row in rows]

    def blueprints(
        self,
        *,
        tiers: Iterable[str | BlueprintTier.ValueType] | None = None,
        slot_kind: SlotKind.ValueType | None = None,
        max_risk: float | None = None,
    ) -> list[BlueprintDescriptor]:
        """Descriptors the library's catalogs offer, filtered by tier, slot kind and maximum risk."""
        wanted = None if tiers is None else {tier_from_name(tier) for tier in tiers}
        found = []
        for blueprint_id in sorted(self._catalogs):
            descriptor = self._catalogs[blueprint_id][1]
            if (
                (wanted is None or descriptor.tier in wanted)
                and (slot_kind is None or slot_kind in descriptor.slot_kinds)
                and (max_risk is None or descriptor.risk <= max_risk)
            ):
                copied = BlueprintDescriptor()
                copied.CopyFrom(descriptor)
                found.append(copied)
        return found

    def verify(self) -> list[tuple[str, str]]:
        """Re-hash every artifact file; drop (and report) rows whose file is missing or altered. Returns them."""
        with self._exclusive():
            self._check_open()
            return self._sweep_rows(hash_files=True)

    # -- telemetry --------------------------------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict[str, float]:
        with self._lock:
            snapshot: dict[str, float] = {
                "urza.fetch.total": float(sum(self._counters[f"fetch.{source}"] for source in SOURCES)),
                "urza.fetch.over_budget_total": float(self._counters["over_budget"]),
                "urza.cache.size": float(len(self._cache)),
                "urza.cache.evictions_total": float(self._counters["cache_evictions"]),
                "urza.integrity.failures_total": float(self._counters["integrity_failures"]),
                "urza.build.failures_total": float(self._counters["build_failures"]),
                "urza.saves_total": float(self._counters["saves"]),
            }
            for source in SOURCES:
                samples = list(self._latency[source])
                snapshot[f"urza.fetch.{source}_total"] = float(self._counters[f"fetch.{source}"])
                snapshot[f"urza.fetch.{source}.p50_ms"] = statistics.median(samples) if samples else 0.0
                snapshot[f"urza.fetch.{source}.p95_ms"] = _percentile(samples, 0.95)
            return snapshot

    def drain_telemetry(self) -> list[TelemetryPacket]:
        """Telemetry since the last drain: one packet with the library's metrics and its pending events (fetches
        over budget, corrupt artifacts evicted, build failures, journal replays), or none if nothing happened."""
        with self._lock:
            if not self._events and not self._fetches_since_drain:
                return []
            events = list(self._events)
            self._events.clear()
            self._fetches_since_drain = 0
            metrics = [
                Metric(name, value, "ms" if name.endswith("_ms") else "")
                for name, value in self.metrics_snapshot().items()
            ]
        return [build_telemetry_packet(source="urza", metrics=metrics, events=events)]

    # -- internals --------------------------------------------------------------------------------------------------
    @staticmethod
    def _fetched(
        descriptor: BlueprintDescriptor, entry: _Entry, module: nn.Module, latency_ms: float, source: str
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
        if (kind_name(slot.kind), tuple(int(size) for size in slot.shape)) != (
            record.guard.slot_kind,
            record.guard.shape,
        ):
            raise ArtifactIntegrityError(
                f"artifact {record.key[:12]} of {record.blueprint_id} was built for {record.slot.describe()}, "
                f"not {slot.describe()}"
            )

    def _catalog_of(self, record: ArtifactRecord) -> BlueprintCatalog:
        offered = self._catalogs.get(record.blueprint_id)
        if offered is None or offered[0].name != record.catalog:
            mine = ", ".join(sorted({catalog.name for catalog, _ in self._catalogs.values()})) or "no catalogs"
            raise KeyError(
                f"artifact {record.key[:12]} is {record.blueprint_id} of catalog {record.catalog!r}, which this "
                f"library's catalogs ({mine}) do not offer: give this process the catalogs the service uses "
                "(urza.catalogs)"
            )
        return offered[0]

    @property
    def tezzeret(self) -> Tezzeret:
        if self._tezzeret is None:
            from esper_urza.tezzeret import Tezzeret

            self._tezzeret = Tezzeret(self.options.tezzeret)
        return self._tezzeret

    def _check_open(self) -> None:
        if self._closed:
            raise EsperError(f"the Urza library at {self.root} is closed")

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread, and no other process, writes the library for the duration (re-entrant)."""
        with self._lock:
            if self._lock_depth == 0 and fcntl is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and fcntl is not None and not self._lock_file.closed:
                    fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)

    def _row(self, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE key = ?", (key,)).fetchone()
        return row

    def _path_in_use(self, relative: str) -> bool:
        return self._db.execute("SELECT 1 FROM artifacts WHERE path = ? LIMIT 1", (relative,)).fetchone() is not None

    @staticmethod
    def _record(row: sqlite3.Row) -> ArtifactRecord:
        return ArtifactRecord.from_json(
            json.loads(row["record"]),
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            path=row["path"],
            extras=json.loads(row["extras"]),
        )

    def _upsert(self, record: ArtifactRecord) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO artifacts ({_COLUMNS}) VALUES ({', '.join('?' for _ in _COLUMNS.split(','))})",
            (
                record.key,
                record.catalog,
                record.blueprint_id,
                record.name,
                record.tier,
                record.risk,
                record.stage,
                int(record.quarantine_only),
                int(record.approval_required),
                record.guard.slot_kind,
                _json(list(record.guard.shape)),
                _json(record.parameters),
                record.path,
                record.sha256,
                record.size_bytes,
                record.parameter_count,
                record.forward_latency_ms,
                record.created_at,
                _json(record.to_json()),
                _json(record.extras),
            ),
        )

    def _within(self, relative: str) -> Path | None:
        """The absolute path of a library-relative artifact path, or None if it points outside ``artifacts/``."""
        path = (self.root / relative).resolve()
        return path if path.is_relative_to(self.artifacts_dir.resolve()) else None

    def _unlink(self, relative: str) -> bool:
        path = self._within(relative)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _file_sha256(self, relative: str) -> str | None:
        path = self._within(relative)
        if path is None:
            return None
        try:
            return sha256_of(path.read_bytes())
        except (FileNotFoundError, IsADirectoryError):
            return None

    def _recover(self) -> RecoveryReport:
        """Finish or roll back interrupted saves, drop broken rows, remove orphan files, empty the journal."""
        intents: dict[str, dict[str, Any]] = {}
        committed: set[str] = set()
        for payload in read_records(self.journal_path):
            try:
                entry = json.loads(payload)
            except ValueError:
                continue
            if entry.get("op") == "intent":
                intents[str(entry.get("tx"))] = entry
            elif entry.get("op") == "commit":
                committed.add(str(entry.get("tx")))
        rolled_forward = rolled_back = 0
        for transaction, intent in intents.items():
            if transaction in committed:
                continue
            relative, key = str(intent.get("path", "")), str(intent.get("key", ""))
            row = self._row(key)
            if row is not None and row["path"] == relative and self._file_sha256(relative) == intent.get("sha256"):
                rolled_forward += 1
                continue
            if not self._path_in_use(relative):
                self._unlink(relative)
            rolled_back += 1
        dropped = self._sweep_rows(hash_files=self.options.verify_on_open)
        orphans = self._remove_orphans()
        atomic_write_bytes(self.journal_path, b"")
        report = RecoveryReport(rolled_forward, rolled_back, orphans, tuple(dropped))
        if rolled_forward or rolled_back or orphans:
            self._events.append(
                Event(
                    "journal_replayed",
                    f"opening {self.root} finished {rolled_forward} interrupted save(s), rolled back {rolled_back}, "
                    f"removed {orphans} orphan file(s)",
                    INFO,
                    {"rolled_forward": str(rolled_forward), "rolled_back": str(rolled_back), "orphans": str(orphans)},
                )
            )
        return report

    def _sweep_rows(self, *, hash_files: bool) -> list[tuple[str, str]]:
        dropped: list[tuple[str, str]] = []
        for row in self._db.execute("SELECT key, path, sha256, blueprint_id FROM artifacts").fetchall():
            path = self._within(row["path"])
            if path is None or not path.is_file():
                reason = "missing"
            elif hash_files and self._file_sha256(row["path"]) != row["sha256"]:
                reason = "corrupt"
            else:
                continue
            self._drop(row["key"], row["path"], row["sha256"], row["blueprint_id"], reason)
            dropped.append((row["key"], reason))
        return dropped

    def _remove_orphans(self) -> int:
        in_use = {row["path"] for row in self._db.execute("SELECT path FROM artifacts").fetchall()}
        removed = 0
        for path in sorted(self.artifacts_dir.rglob("*"), key=lambda item: len(item.parts), reverse=True):
            relative = path.relative_to(self.root).as_posix()
            if path.is_dir():
                with suppress(OSError):
                    path.rmdir()  # only empty directories go
            elif relative not in in_use:
                with suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def _drop(self, key: str, relative: str, sha256: str, blueprint_id: str, reason: str) -> None:
        """Remove a broken artifact (only if the row still names the same file) and report it."""
        with self._exclusive():
            self._cache.pop(key, None)
            self._db.execute("DELETE FROM artifacts WHERE key = ? AND sha256 = ?", (key, sha256))
            if not self._path_in_use(relative):
                self._unlink(relative)
        self._counters["integrity_failures"] += 1
        descriptions = {
            "missing": "its file is missing",
            "corrupt": "its file's SHA-256 differs from the recorded one",
            "unreadable": "its file hashes right but cannot be parsed as an artifact",
            "mismatch": "its file holds an artifact for another request",
            "stale": "its state does not fit the module the catalog builds now",
        }
        self._events.append(
            Event(
                f"artifact_{reason}",
                f"evicted artifact {key[:12]} of {blueprint_id} ({relative}): {descriptions.get(reason, reason)}; "
                "it will be rebuilt on the next fetch",
                WARNING if reason == "stale" else ERROR,
                {"key": key, "blueprint_id": blueprint_id, "path": relative, "sha256": sha256, "reason": reason},
            )
        )

    def _load(self, key: str, catalog: BlueprintCatalog, slot: SlotShape) -> tuple[_Entry, nn.Module] | None:
        """The artifact from disk, hash-checked before parsing, with a module built from it; None if absent or
        broken (a broken one is evicted and reported)."""
        from esper_urza.tezzeret import load_artifact

        row = self._row(key)
        if row is None:
            return None
        relative, expected = row["path"], row["sha256"]
        path = self._within(relative)
        try:
            if path is None:
                raise FileNotFoundError(relative)
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            self._drop(key, relative, expected, row["blueprint_id"], "missing")
            return None
        if sha256_of(data) != expected:
            self._drop(key, relative, expected, row["blueprint_id"], "corrupt")
            return None
        try:
            embedded, state_dict = load_artifact(data, sha256=expected, path=relative)
        except ArtifactIntegrityError:
            self._drop(key, relative, expected, row["blueprint_id"], "unreadable")
            return None
        if embedded.key != key or embedded.guard.shape != tuple(int(size) for size in slot.shape):
            self._drop(key, relative, expected, row["blueprint_id"], "mismatch")
            return None
        entry = _Entry(self._record(row), state_dict, catalog)
        try:
            module = self._instantiate(entry, slot)
        except (RuntimeError, ValueError, KeyError):
            self._drop(key, relative, expected, row["blueprint_id"], "stale")
            return None
        return entry, module

    def _build(
        self, catalog: BlueprintCatalog, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]
    ) -> _Entry:
        try:
            built = self.tezzeret.build(catalog, blueprint_id, slot, parameters)
        except ArtifactBuildError as error:
            self._counters["build_failures"] += 1
            self._events.append(
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
        return _Entry(record, built.state_dict or {}, catalog)

    def _instantiate(self, entry: _Entry, slot: SlotShape) -> nn.Module:
        """A new module with the artifact's weights (copied: no two fetches share a tensor)."""
        from esper_urza.tezzeret import isolated_rng

        with isolated_rng():
            module = entry.catalog.build(entry.record.blueprint_id, slot, entry.record.parameters)
        module.load_state_dict(entry.state_dict)
        tezzeret = self.options.tezzeret
        if tezzeret.compile and entry.record.compiled:
            module.compile(backend=tezzeret.compile_backend)
        return module

    def _remember(self, key: str, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.options.cache_size:
            self._cache.popitem(last=False)
            self._counters["cache_evictions"] += 1

    def _observe(self, source: str, latency_ms: float, record: ArtifactRecord, slot: SlotShape) -> None:
        self._counters[f"fetch.{source}"] += 1
        self._latency[source].append(latency_ms)
        self._fetches_since_drain += 1
        budget = self.options.build_budget_ms if source == "built" else self.options.fetch_budget_ms
        if latency_ms > budget:
            self._counters["over_budget"] += 1
            self._events.append(
                Event(
                    "timeout_urza",
                    f"fetch of {record.blueprint_id} at {slot.describe()} from {source} took {latency_ms:.2f} ms, "
                    f"over its {budget:g} ms budget",
                    WARNING,
                    {
                        "blueprint_id": record.blueprint_id,
                        "source": source,
                        "slot": slot.describe(),
                        "latency_ms": f"{latency_ms:.3f}",
                        "budget_ms": f"{budget:g}",
                    },
                )
            )
