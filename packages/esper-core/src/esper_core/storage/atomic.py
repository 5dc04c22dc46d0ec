"""Atomic file replacement: a reader sees the old file or the new one, never a mix, even after a crash.

The data goes to a temporary file in the same directory, is flushed and fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_name_pattern(target.name).split("*")
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(target.parent)


def temporary_name_pattern(target_name: str = "*") -> str:
    """The glob that matches :func:`atomic_write_bytes`'s temporary files for ``target_name``."""
    return f".{target_name}.*.tmp"


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files that atomic writes killed mid-way left in ``directory``; return them.

    Only call it where no atomic write can be under way (a run directory while its one writer is starting): the
    files it removes are the ones :func:`atomic_write_bytes` names, and nothing else.
    """
    removed = []
    for stale in Path(directory).glob(temporary_name_pattern()):
        if stale.is_file():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
    return removed


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
