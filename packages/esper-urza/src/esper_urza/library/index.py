"""The catalog of stored artifacts: one SQLite row per artifact in ``catalog.sqlite`` (table ``artifacts``).

Why SQLite: the library is queried by tier, risk, slot kind and blueprint (Tamiyo, ``esper blueprints``, Urabrask's
safety data sheets later), several processes share it (``esper serve urza`` writes, training processes read), and a
row must change in one durable step, so that a save is "file written, then row upserted" and nothing in between.
WAL mode lets readers in other processes go on while a writer commits; ``synchronous = FULL`` makes each commit
durable on return. The row keeps the whole record as JSON as well as the columns queries filter on, and ``extras``, a
JSON column left for Urabrask's blueprint safety data sheets, which a rebuild of the artifact keeps.

The index only stores and queries rows; it never touches files (:mod:`.files`) and takes no locks of its own (the
library's :class:`~.locking.LibraryLock` serializes writers).

Why the index checks itself when the library opens (:meth:`ArtifactIndex.damage`): SQLite notices a damaged page
only when a statement reads it, and notices nothing when a byte inside a value changed. Opening therefore runs
SQLite's ``integrity_check`` (pages, and the indexes against the table), checks the table's columns, and reads
every row back: its record must parse, and every column must say what the record says (so a query by tier, risk or
slot kind cannot be silently wrong) and name the file its key and hash name. A damaged index is not repaired row by
row: the library sets the file aside and rebuilds the index from the artifact files, each of which carries its own
record (:mod:`.repair`). The index is small (one row per artifact), so the check costs milliseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from esper_core.leyline import BlueprintTier, SlotKind
from esper_urza.errors import LibraryFileError
from esper_urza.library.files import ArtifactFiles
from esper_urza.parameters import kind_from_name, kind_name, tier_from_name, tier_name
from esper_urza.records import ArtifactRecord

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
_COLUMN_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))
#: SQLite's primary result codes that mean the file itself is damaged: SQLITE_CORRUPT and SQLITE_NOTADB.
_DAMAGE_CODES = (11, 26)
_UPSERT = f"INSERT OR REPLACE INTO artifacts ({_COLUMNS}) VALUES ({', '.join('?' for _ in _COLUMNS.split(','))})"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: what the index and the journal store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def is_damage(error: sqlite3.Error) -> bool:
    """Whether ``error`` says the database file is damaged (and not busy, locked or unreachable): SQLite's
    ``SQLITE_CORRUPT`` or ``SQLITE_NOTADB``, or a text value that is not UTF-8 (only a changed byte makes one)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    return str(error).startswith("Could not decode to UTF-8")


def row_values(record: ArtifactRecord) -> tuple[Any, ...]:
    """The row of ``record``, column by column (:data:`_COLUMNS`): what :meth:`ArtifactIndex.upsert` writes and
    what :meth:`ArtifactIndex.damage` expects to read back."""
    return (
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
        canonical_json(list(record.guard.shape)),
        canonical_json(record.parameters),
        record.path,
        record.sha256,
        record.size_bytes,
        record.parameter_count,
        record.forward_latency_ms,
        record.created_at,
        canonical_json(record.to_json()),
        canonical_json(record.extras),
    )


#: Columns whose value :meth:`ArtifactIndex.damage` compares with the record's: every one but the record itself
#: (parsed instead, so that rows written by an earlier release with fewer record fields stay valid) and the extras.
_DERIVED = tuple(index for index, name in enumerate(_COLUMN_NAMES) if name not in ("record", "extras"))


class Location(NamedTuple):
    """Where a row says its artifact is, and what the file must hash to: all recovery and integrity checks need."""

    key: str
    path: str
    sha256: str
    blueprint_id: str


class ArtifactIndex:
    """The ``artifacts`` table of ``catalog.sqlite``. Call :meth:`create_schema` (under the writer lock) first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = self._connect()
        self._file_id: tuple[int, int] | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def create_schema(self) -> None:
        """Set the connection up (WAL, durable commits, a patient busy timeout) and create the table if needed.

        :class:`~esper_urza.errors.LibraryFileError`: the index was written by a newer esper-urza (its schema
        version is higher); ``sqlite3.DatabaseError``: SQLite cannot read the file (see :func:`is_damage`)."""
        self._configure()
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise LibraryFileError(
                self.path,
                f"it is an index of schema version {version}, written by a newer esper-urza (this one reads version "
                f"{_SCHEMA_VERSION})",
                "upgrade esper-urza in this environment, or point urza.root at another directory",
            )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        self._file_id = self._identity()

    def _configure(self) -> None:
        """This connection's settings (a patient busy timeout, durable commits), and which file it opened."""
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA synchronous = FULL")
        self._file_id = self._identity()

    def damage(self) -> str | None:
        """Why this index cannot be trusted, or None if it can (see the module's docstring): SQLite's integrity
        check, the table's columns, and every row read back and compared with its record. Call it after
        :meth:`create_schema`; ``sqlite3`` errors other than damage (:func:`is_damage`) propagate."""
        try:
            problems = [str(row[0]) for row in self._db.execute("PRAGMA integrity_check(8)").fetchall()]
            if problems != ["ok"]:
                return "SQLite's integrity check failed: " + "; ".join(" ".join(p.split()) for p in problems[:3])
            columns = tuple(str(row["name"]) for row in self._db.execute("PRAGMA table_info(artifacts)").fetchall())
            if columns != _COLUMN_NAMES:
                return f"its artifacts table has the columns ({', '.join(columns)}), not those of an Urza index"
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM artifacts").fetchall():
                problem = self._row_problem(row)
                if problem is not None:
                    return problem
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise
            return f"SQLite: {error}"
        return None

    def reopen(self) -> None:
        """Close the connection and connect to :attr:`path` again (after the file there was set aside); call
        :meth:`create_schema` next."""
        self._db.close()
        self._db = self._connect()

    def follow(self) -> bool:
        """Connect again if the file at :attr:`path` is no longer the one this connection opened: another process
        sharing the library set a damaged index aside and rebuilt it. Returns whether it reconnected."""
        current = self._identity()
        if current is None or current == self._file_id:
            return False
        self.reopen()
        self._configure()
        return True

    def close(self) -> None:
        self._db.close()

    # -- reading ----------------------------------------------------------------------------------------------------
    def get(self, key: str) -> ArtifactRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._record(row)

    def location(self, key: str) -> Location | None:
        row = self._db.execute("SELECT key, path, sha256, blueprint_id FROM artifacts WHERE key = ?", (key,)).fetchone()
        return None if row is None else Location(*row)

    def locations(self) -> list[Location]:
        """Every row's location, in no particular order."""
        rows = self._db.execute("SELECT key, path, sha256, blueprint_id FROM artifacts").fetchall()
        return [Location(*row) for row in rows]

    def paths(self) -> set[str]:
        """The file every row names."""
        return {row["path"] for row in self._db.execute("SELECT path FROM artifacts").fetchall()}

    def path_in_use(self, relative: str) -> bool:
        """Whether some row names this file (then it must not be removed)."""
        return self._db.execute("SELECT 1 FROM artifacts WHERE path = ? LIMIT 1", (relative,)).fetchone() is not None

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
        """Rows matching every given filter, by blueprint id then creation time.

        ``ValueError`` (from the name parsers): an unknown tier or slot kind name."""
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
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM artifacts{where} ORDER BY blueprint_id, created_at", values
        ).fetchall()
        return [self._record(row) for row in rows]

    # -- writing (each one SQLite statement: durable on return) -----------------------------------------------------
    def upsert(self, record: ArtifactRecord) -> None:
        """Insert the record's row, or replace the row of its key (``record.extras`` is written as given)."""
        self._db.execute(_UPSERT, row_values(record))

    def delete(self, key: str, *, sha256: str | None = None) -> bool:
        """Delete the key's row; with ``sha256``, only if the row still names that version of the artifact (another
        process may have replaced it since it was read). Returns whether a row went."""
        if sha256 is None:
            cursor = self._db.execute("DELETE FROM artifacts WHERE key = ?", (key,))
        else:
            cursor = self._db.execute("DELETE FROM artifacts WHERE key = ? AND sha256 = ?", (key, sha256))
        return cursor.rowcount > 0

    def set_extras(self, key: str, extras: dict[str, Any]) -> None:
        self._db.execute("UPDATE artifacts SET extras = ? WHERE key = ?", (canonical_json(extras), key))

    @classmethod
    def _row_problem(cls, row: sqlite3.Row) -> str | None:
        """What is wrong with one row, or None: its record and extras must parse (the extras as a JSON object),
        every other column agree with the record, and its path be the one its key and hash name."""
        key = str(row["key"])[:12]
        try:
            record = cls._record(row)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return f"the row of {key} does not parse ({type(error).__name__}: {error})"
        expected = row_values(record)
        for position in _DERIVED:
            if row[position] != expected[position]:
                return f"the row of {key} says {_COLUMN_NAMES[position]} = {row[position]!r}, its record says otherwise"
        if record.path != ArtifactFiles.relative_path(record):
            return f"the row of {key} names the file {record.path!r}, not the one its key and hash name"
        return None

    @staticmethod
    def _record(row: sqlite3.Row) -> ArtifactRecord:
        return ArtifactRecord.from_json(
            json.loads(row["record"]),
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            path=row["path"],
            extras=json.loads(row["extras"]),
        )
