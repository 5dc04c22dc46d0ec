"""Urza: the artifact library (an :class:`esper_core.protocols.ArtifactStore`), :class:`UrzaLibrary`.

Layout under the root directory::

    catalog.sqlite                                      one row per artifact (table ``artifacts``)
    journal.log                                         write-ahead journal (esper_core.storage.AppendOnlyLog)
    artifacts/<catalog>/<blueprint>/<key>-<sha>.pt      one file per artifact, named by its key and content hash
    .lock                                               serializes writers across processes (flock)
    catalog.sqlite.damaged-<time>, journal.log.damaged-<time>   damaged files opening set aside (never read again)

:class:`UrzaLibrary` (:mod:`.facade`) is the one object the rest of Esper uses; each of its jobs is a module here:

- :mod:`.index`: the SQLite catalog of stored artifacts and its queries (by tier, risk, slot kind, blueprint);
- :mod:`.files`: the artifact files, and the wall that keeps every path the library handles inside ``artifacts/``;
- :mod:`.journal`: crash recovery, the write-ahead journal of saves and what opening decides from it;
- :mod:`.cache`: the in-process LRU cache of loaded artifacts;
- :mod:`.loading`: loading from disk, the SHA-256 checked before parsing; broken artifacts evicted and reported;
- :mod:`.building`: building on a miss through Tezzeret, the durable save, modules made from loaded artifacts;
- :mod:`.metrics`: per-source fetch latency, fetches over budget, counters and pending events;
- :mod:`.locking`: one writer at a time, across threads and processes;
- :mod:`.repair`: damaged files set aside, stale temporaries removed, rows made again from the verified artifact files.

torch is imported only when an artifact is loaded or built: writing needs none.
"""

from __future__ import annotations

from esper_urza.library.facade import UrzaLibrary
from esper_urza.library.journal import RecoveryReport
from esper_urza.library.metrics import SOURCES

__all__ = ["SOURCES", "RecoveryReport", "UrzaLibrary"]
