"""Crash recovery: the write-ahead journal of saves, and what opening the library decides from it.

Why a journal: a save changes two things that cannot change in one step, a file and a SQLite row. A kill between
them leaves either a file no row names (harmless, but it must not pile up) or, if the order were reversed, a row
naming a file that is not there. So a save (:class:`SaveJournal.transaction`) is

1. journal an *intent* ``{tx, key, path, sha256}``, fsynced;
2. write the file atomically (named by key and content hash, never rewritten in place);
3. upsert the row (one durable SQLite statement);
4. journal a *commit* ``{tx}``, fsynced.

When the library opens, every intent without a commit is an interrupted save, and :meth:`SaveJournal.replay`
decides each one by what reached the disk:

- the row names the intent's file and the file hashes to the intent's SHA-256: the save got past step 3, so it is
  kept (*rolled forward*; only the commit record was lost);
- otherwise the save never reached its row: it is *rolled back* by removing its file, unless some row names that
  file (an earlier save of the same bytes), and only inside ``artifacts/``: a journal entry whose path points
  elsewhere (``../precious.txt``) is counted but never deletes anything (:meth:`.files.ArtifactFiles.within`).

Records that do not parse (a torn or foreign record) are skipped: they cannot name a file to remove. The journal is
emptied once opening has finished (:meth:`SaveJournal.reset`), and after :data:`COMPACT_AT` records otherwise.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from esper_core.storage import AppendOnlyLog, atomic_write_bytes, read_records
from esper_core.telemetry import INFO, Event
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex, canonical_json

#: The journal is emptied after a save once it holds this many records (two per save).
COMPACT_AT = 256


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

    def event(self, root: Path) -> Event | None:
        """The ``journal_replayed`` event telling what the journal replay did, or None if it did nothing."""
        forward, back, orphans = self.rolled_forward, self.rolled_back, self.orphans_removed
        if not (forward or back or orphans):
            return None
        return Event(
            "journal_replayed",
            f"opening {root} finished {forward} interrupted save(s), rolled back {back}, "
            f"removed {orphans} orphan file(s)",
            INFO,
            {"rolled_forward": str(forward), "rolled_back": str(back), "orphans": str(orphans)},
        )


@attrs.frozen
class Intent:
    """A journaled save: the artifact's key, the root-relative path of its file and the file's SHA-256."""

    transaction: str
    key: str
    path: str
    sha256: str


class SaveJournal:
    """The append-only journal at ``path`` (``journal.log``); the caller holds the writer lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records = 0

    @contextmanager
    def transaction(self, key: str, path: str, sha256: str) -> Iterator[None]:
        """Journal an intent, run the body (write the file, upsert the row), journal the commit. If the body raises,
        no commit is written: the next opening decides the save from what reached the disk."""
        transaction = uuid.uuid4().hex
        intent = {"op": "intent", "tx": transaction, "key": key, "path": path, "sha256": sha256}
        with AppendOnlyLog(self.path) as log:
            log.append(canonical_json(intent).encode())
            yield
            log.append(canonical_json({"op": "commit", "tx": transaction}).encode())
            self._records = log.record_count

    def compact(self) -> None:
        """Empty the journal if the last transaction left it holding :data:`COMPACT_AT` records or more (every save
        in it is committed, so none of them is needed any more)."""
        if self._records >= COMPACT_AT:
            self.reset()

    def reset(self) -> None:
        atomic_write_bytes(self.path, b"")
        self._records = 0

    def unfinished(self) -> list[Intent]:
        """Intents without a commit, in journal order; records that do not parse are skipped."""
        intents: dict[str, Intent] = {}
        committed: set[str] = set()
        for payload in read_records(self.path):
            try:
                entry = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            transaction = str(entry.get("tx"))
            if entry.get("op") == "intent":
                intents[transaction] = Intent(
                    transaction, str(entry.get("key", "")), str(entry.get("path", "")), str(entry.get("sha256"))
                )
            elif entry.get("op") == "commit":
                committed.add(transaction)
        return [intent for transaction, intent in intents.items() if transaction not in committed]

    def replay(self, index: ArtifactIndex, files: ArtifactFiles) -> tuple[int, int]:
        """Keep or roll back every interrupted save (see the module's docstring); returns ``(kept, rolled_back)``."""
        kept = rolled_back = 0
        for intent in self.unfinished():
            location = index.location(intent.key)
            if location is not None and location.path == intent.path and files.sha256(intent.path) == intent.sha256:
                kept += 1
                continue
            if not index.path_in_use(intent.path):
                files.unlink(intent.path)
            rolled_back += 1
        return kept, rolled_back
