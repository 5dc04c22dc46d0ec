"""The catalog of stored artifacts: one SQLite row per artifact in ``catalog.sqlite`` (table ``artifacts``).

Why SQLite: the library is queried by tier, risk, slot kind and blueprint (Tamiyo, ``esper blueprints``, Urabrask's
safety data sheets later), several processes share it (``esper serve urza`` writes, training processes read), and a
row must change in one durable step, so that a save is "file written, then row upserted" and nothing in between.
WAL mode lets readers in other processes go on while a writer commits; ``synchronous = FULL`` makes each commit
durable on return. The row keeps the whole record as JSON as well as the columns queries filter on, and ``extras``, a
JSON column left for Urabrask's blueprint safety data sheets, which a rebuild of the artifact keeps.

The index only stores and queries rows; it never touches files (:mod:`.files`) and takes no locks of its own (the
library's :class:`~.locking.LibraryLock` serializes writers).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from esper_core.leyline import BlueprintTier, SlotKind
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
_UPSERT = f"INSERT OR REPLACE INTO artifacts ({_COLUMNS}) VALUES ({', '.join('?' for _ in _COLUMNS.split(','))})"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: what the index and the journal store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row

    def create_schema(self) -> None:
        """Set the connection up (WAL, durable commits, a patient busy timeout) and create the table if needed."""
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

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
        self._db.execute(
            _UPSERT,
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
            ),
        )

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

    @staticmethod
    def _record(row: sqlite3.Row) -> ArtifactRecord:
        return ArtifactRecord.from_json(
            json.loads(row["record"]),
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            path=row["path"],
            extras=json.loads(row["extras"]),
        )
