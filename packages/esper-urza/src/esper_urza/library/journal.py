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

A damaged journal loses only the records it damaged (the append-only log checksums each one), and no decision
rests on the journal alone: a lost commit leaves an intent that the disk decides, a lost intent leaves a file no row
names, which opening verifies and indexes or removes (:mod:`.repair`). So opening recovers from any damage to the
journal; a torn last record is what a kill mid-append leaves and is simply dropped, while damage before an intact
record (what a kill cannot cause) is reported and the damaged journal set aside for inspection
(:meth:`SaveJournal.scan`). A journal that cannot be read at all (a directory, a file without permission) is a
:class:`~esper_urza.errors.LibraryFileError` naming it.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

from esper_core.storage import AppendOnlyLog, atomic_write_bytes
from esper_core.storage.appendlog import HEADER_SIZE, MAGIC, scan
from esper_core.telemetry import INFO, WARNING, Event
from esper_urza.errors import LibraryFileError
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex, canonical_json

#: The journal is emptied after a save once it holds this many records (two per save).
COMPACT_AT = 256


@attrs.frozen
class RecoveryReport:
    """What opening the library repaired (its events: :meth:`events`)."""

    #: Journaled saves that had reached their row (kept).
    rolled_forward: int = 0
    #: Journaled saves that had not (their files removed).
    rolled_back: int = 0
    #: Artifact files no row named and that were not indexed again (removed): files a newer save replaced, files
    #: that are not artifacts.
    orphans_removed: int = 0
    #: ``(key, reason)`` of rows dropped because their file was missing or did not hash right.
    rows_dropped: tuple[tuple[str, str], ...] = ()
    #: Temporary files of writes a kill interrupted (the journal's and the artifact files'), removed.
    temporaries_removed: int = 0
    #: Rows made again from artifact files that no row named and that verified (every row, after a rebuild).
    rows_rebuilt: int = 0
    #: ``(path, reason)`` of artifact files without a row that failed verification (removed, never indexed).
    artifacts_dropped: tuple[tuple[str, str], ...] = ()
    #: Why the index could not be trusted (``""``: it could); it was then set aside and rebuilt.
    index_problem: str = ""
    #: Where the damaged index was moved (root-relative), or None.
    index_set_aside: str | None = None
    #: Whether ``catalog.sqlite`` was missing or empty while artifact files were present.
    index_missing: bool = False
    #: Unreadable bytes of the journal that a kill during an append does not explain (damage, not a torn last
    #: record); 0 if none.
    journal_damaged_bytes: int = 0
    #: Where the damaged journal was moved (root-relative), or None.
    journal_set_aside: str | None = None
    #: Whether the ``artifacts`` directory was missing while the index had rows (they were dropped).
    artifacts_missing: bool = False

    @property
    def repaired(self) -> bool:
        return bool(
            self.rolled_back
            or self.orphans_removed
            or self.rows_dropped
            or self.temporaries_removed
            or self.rows_rebuilt
            or self.artifacts_dropped
            or self.index_problem
            or self.journal_damaged_bytes
        )

    @property
    def index_rebuilt(self) -> bool:
        """Whether rows were made from the artifact files, or files without a row failed verification."""
        return bool(self.index_problem or self.rows_rebuilt or self.artifacts_dropped)

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

    def events(self, root: Path) -> list[Event]:
        """Every event of this opening: ``index_rebuilt`` and ``journal_damaged`` (WARNING), ``artifacts_missing``
        (WARNING), ``journal_replayed`` and ``stale_temporaries_removed`` (INFO). Rows dropped and files that failed
        verification are reported one by one as ``artifact_<reason>`` when they are removed."""
        found: list[Event] = []
        if self.index_rebuilt:
            index = root / "catalog.sqlite"
            if self.index_problem:
                why = f"{index} was damaged ({self.index_problem}); set aside as {self.index_set_aside}"
            elif self.index_missing:
                why = f"{index} was missing"
            else:
                why = f"{index} had no row for {self.rows_rebuilt + len(self.artifacts_dropped)} artifact file(s)"
            found.append(
                Event(
                    "index_rebuilt",
                    f"{why}: rebuilt {self.rows_rebuilt} row(s) from verified artifact files, dropped "
                    f"{len(self.artifacts_dropped)} file(s) that failed verification (rebuilt on their next fetch)",
                    WARNING,
                    {
                        "rows_rebuilt": str(self.rows_rebuilt),
                        "artifacts_dropped": str(len(self.artifacts_dropped)),
                        "problem": self.index_problem or ("missing" if self.index_missing else "rows missing"),
                        "set_aside": self.index_set_aside or "",
                    },
                )
            )
        if self.journal_damaged_bytes:
            found.append(
                Event(
                    "journal_damaged",
                    f"{root / 'journal.log'} had {self.journal_damaged_bytes} unreadable byte(s) that a kill during "
                    f"an append does not explain (set aside as {self.journal_set_aside}); its intact records were "
                    "replayed",
                    WARNING,
                    {"damaged_bytes": str(self.journal_damaged_bytes), "set_aside": self.journal_set_aside or ""},
                )
            )
        if self.artifacts_missing:
            found.append(
                Event(
                    "artifacts_missing",
                    f"{root / 'artifacts'} was missing: the {len(self.rows_dropped)} row(s) naming its files were "
                    "dropped; each artifact is rebuilt on its next fetch",
                    WARNING,
                    {"rows_dropped": str(len(self.rows_dropped))},
                )
            )
        replayed = self.event(root)
        if replayed is not None:
            found.append(replayed)
        if self.temporaries_removed:
            found.append(
                Event(
                    "stale_temporaries_removed",
                    f"opening {root} removed {self.temporaries_removed} temporary file(s) of interrupted writes",
                    INFO,
                    {"removed": str(self.temporaries_removed)},
                )
            )
        return found


@attrs.frozen
class JournalScan:
    """What :meth:`SaveJournal.scan` read: the intact records, and how many other bytes were damaged."""

    records: list[bytes]
    damaged_bytes: int = 0


_FIELDS = struct.Struct("<III")


def _torn(tail: bytes) -> bool:
    """Whether the bytes after the last intact record are what a kill during an append leaves: the start of a
    record (a prefix of its header, or a valid header announcing more bytes than follow)."""
    if len(tail) < HEADER_SIZE:
        return MAGIC.startswith(tail[: len(MAGIC)])
    length, payload_crc, header_crc = _FIELDS.unpack_from(tail, len(MAGIC))
    del payload_crc
    valid = tail[: len(MAGIC)] == MAGIC and zlib.crc32(tail[: HEADER_SIZE - 4]) == header_crc
    return valid and length > len(tail) - HEADER_SIZE


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

    def scan(self) -> JournalScan:
        """The journal's intact records, and how many of its other bytes were damaged (a torn last record is not
        counted: a kill leaves one). :class:`~esper_urza.errors.LibraryFileError` if it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return JournalScan([])
        except OSError as error:
            raise LibraryFileError(
                self.path,
                f"the journal cannot be read ({error.strerror or error})",
                "it must be a file this user can read and write: fix its permissions, or move it away (opening "
                "recovers without it: every artifact file without a row is verified and indexed again)",
            ) from error
        found = scan(data)
        torn = len(data) - found.end_of_last_record
        damaged = found.skipped_bytes - (torn if _torn(data[found.end_of_last_record :]) else 0)
        return JournalScan(found.records, damaged)

    def unfinished(self, records: Sequence[bytes] | None = None) -> list[Intent]:
        """Intents without a commit, in journal order; records that do not parse are skipped. ``records``: those of
        a :meth:`scan` (by default the journal is read now)."""
        intents: dict[str, Intent] = {}
        committed: set[str] = set()
        for payload in self.scan().records if records is None else records:
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

    def replay(
        self, index: ArtifactIndex, files: ArtifactFiles, records: Sequence[bytes] | None = None
    ) -> tuple[int, int]:
        """Keep or roll back every interrupted save (see the module's docstring); returns ``(kept, rolled_back)``.
        ``records``: those of a :meth:`scan` (by default the journal is read now)."""
        kept = rolled_back = 0
        for intent in self.unfinished(records):
            location = index.location(intent.key)
            if location is not None and location.path == intent.path and files.sha256(intent.path) == intent.sha256:
                kept += 1
                continue
            if not index.path_in_use(intent.path):
                files.unlink(intent.path)
            rolled_back += 1
        return kept, rolled_back
