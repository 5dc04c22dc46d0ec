"""The artifact files under ``<root>/artifacts``: where each one goes, and a wall around that directory.

Every path the library handles from the outside world (a row of the SQLite index, an entry of the journal) is
relative to the root and goes through :meth:`ArtifactFiles.within` before it is read or removed: a path that
resolves outside ``artifacts/`` (``../precious.txt``, an absolute path, a symlink out) is never touched. A damaged or
hand-edited journal or database can therefore make the library forget artifacts, but never delete other files.

Files are named by the artifact's key and content hash and never rewritten in place, so a row always names a
complete file. Files without a row are temporary files of interrupted writes (:meth:`ArtifactFiles.temporaries`),
files that a newer save replaced, and, after the index lost rows, artifacts that opening verifies and indexes again
(:mod:`.repair`); :meth:`ArtifactFiles.unindexed` lists them.
"""

from __future__ import annotations

import re
from contextlib import suppress
from pathlib import Path

from esper_core.storage import atomic_write_bytes
from esper_core.storage.atomic import temporary_name_pattern
from esper_urza.records import ArtifactRecord, sha256_of

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: What :meth:`ArtifactFiles.relative_path` makes: the key's first 32 hex digits and the hash's first 16.
ARTIFACT_PATH = re.compile(r"artifacts/[^/]+/[^/]+/(?P<key>[0-9a-f]{32})-(?P<sha256>[0-9a-f]{16})\.pt")
#: The temporary file :func:`esper_core.storage.atomic_write_bytes` makes while it writes an artifact file.
_ARTIFACT_TEMPORARY = re.compile(r"\.[0-9a-f]{32}-[0-9a-f]{16}\.pt\.[A-Za-z0-9_]+\.tmp")


def _safe(part: str) -> str:
    """A catalog or blueprint id as one path component: no separators, never ``.`` or ``..``."""
    cleaned = _UNSAFE.sub("_", part)
    return cleaned if cleaned and cleaned not in (".", "..") else "_"


class ArtifactFiles:
    """Reads, writes and removes artifact files by their root-relative path (``artifacts/<catalog>/...``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "artifacts"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._resolved = self.directory.resolve()

    @staticmethod
    def relative_path(record: ArtifactRecord) -> str:
        """Where ``record``'s file goes: ``artifacts/<catalog>/<blueprint>/<key>-<sha256>.pt`` (prefixes of both)."""
        return (
            f"artifacts/{_safe(record.catalog)}/{_safe(record.blueprint_id)}/{record.key[:32]}-{record.sha256[:16]}.pt"
        )

    def within(self, relative: str) -> Path | None:
        """The absolute path of a root-relative artifact path, or None if it points outside ``artifacts/``."""
        path = (self.root / relative).resolve()
        return path if path.is_relative_to(self._resolved) else None

    def write(self, relative: str, data: bytes) -> None:
        """Write a file atomically and durably (temporary file, fsync, rename, fsync of the directory)."""
        path = self.within(relative)
        if path is None:
            raise ValueError(f"artifact path {relative!r} is outside {self.directory}")
        atomic_write_bytes(path, data)

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None if it is missing (or outside ``artifacts/``)."""
        path = self.within(relative)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def exists(self, relative: str) -> bool:
        path = self.within(relative)
        return path is not None and path.is_file()

    def sha256(self, relative: str) -> str | None:
        """The SHA-256 of the file, or None if it is missing (or outside ``artifacts/``)."""
        data = self.read(relative)
        return None if data is None else sha256_of(data)

    def unlink(self, relative: str) -> bool:
        """Remove the file; False if it was missing, or outside ``artifacts/`` (then left alone)."""
        path = self.within(relative)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def discard(self, relative: str) -> bool:
        """Remove an entry of a directory under ``artifacts/`` that no row names: a file, or a link (the link
        itself, never what it points to). False if it was missing, or its directory is outside ``artifacts/``."""
        path = self.root / relative
        if not path.parent.resolve().is_relative_to(self._resolved):
            return False
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return False
        return True

    def temporaries(self) -> list[str]:
        """The temporary files that an interrupted :meth:`write` left (named as ``atomic_write_bytes`` names the
        temporary file of an artifact file), root-relative. Only the writer lock's holder may remove them: a write
        in progress holds that lock too."""
        found = []
        for path in self.directory.rglob(temporary_name_pattern()):
            if _ARTIFACT_TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                relative = path.relative_to(self.root).as_posix()
                if self.within(relative) is not None:
                    found.append(relative)
        return sorted(found)

    def unindexed(self, in_use: set[str]) -> list[str]:
        """Every file under ``artifacts/`` whose root-relative path is not in ``in_use``, sorted."""
        return sorted(
            relative
            for path in self.directory.rglob("*")
            if not path.is_dir() and (relative := path.relative_to(self.root).as_posix()) not in in_use
        )

    def remove_empty_directories(self) -> None:
        """Remove the directories under ``artifacts/`` that hold nothing (the deepest first)."""
        for path in sorted(self.directory.rglob("*"), key=lambda item: len(item.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                with suppress(OSError):
                    path.rmdir()  # only empty directories go

    def remove_orphans(self, in_use: set[str]) -> int:
        """Remove every file under ``artifacts/`` whose relative path is not in ``in_use``, then empty directories.
        Returns how many files went."""
        removed = sum(self.discard(relative) for relative in self.unindexed(in_use))
        self.remove_empty_directories()
        return removed
