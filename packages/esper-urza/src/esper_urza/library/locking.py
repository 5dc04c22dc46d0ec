"""One writer at a time: the library's threads share a re-entrant mutex, and processes share an ``flock``.

Why a lock file and not SQLite's own locking: a save spans more than the database (the journal, the artifact file,
the row, the commit record, the removal of the replaced file), and recovery on open rewrites all of them. Two
processes interleaving those steps could each roll back the other's half-finished save, so every writer, and every
opening, holds an exclusive ``flock`` on ``.lock`` for the whole sequence. Readers in this process need only the
mutex: the index and the cache are not thread-safe, but SQLite's WAL lets them read while another process writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers in one process are still serialized
    fcntl = None  # type: ignore[assignment]


class LibraryLock:
    """The library's mutex (:attr:`mutex`, for this process's threads) and its writer lock (:meth:`exclusive`)."""

    def __init__(self, path: Path) -> None:
        #: Held by every public method of the library: the index, cache and metrics are shared by its threads.
        self.mutex = threading.RLock()
        self._depth = 0
        self._file = open(path, "a+b")  # noqa: SIM115 - held for the library's lifetime

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """This thread, and no other process, writes the library for the duration (re-entrant: the ``flock`` is
        taken by the outermost call and released when it ends)."""
        with self.mutex:
            if self._depth == 0 and fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and fcntl is not None and not self._file.closed:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (which releases the ``flock`` if a writer still held it)."""
        self._file.close()
