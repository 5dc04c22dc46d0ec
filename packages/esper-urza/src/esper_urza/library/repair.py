"""Repairing the library's own files when it opens: damaged files set aside, stale temporaries removed, and rows
made again from the artifact files.

Why the index can be rebuilt: every artifact file carries its own record (descriptor, parameters, slot, what
Tezzeret measured; :mod:`esper_urza.records`), and its name carries the first 32 hex digits of its key and the first
16 of its SHA-256. An artifact file without a row (the index was damaged and set aside, deleted, or lost its last
commits) is therefore **verified** before it is indexed again (:func:`reindex`): its bytes must hash to the SHA-256
its name starts with (a changed byte cannot, but with odds of 2^-64), parse as an artifact with
``weights_only=True``, embed a record whose key is the key of its own catalog, blueprint, parameters and slot, and
sit at the path that key and hash name. A file that fails is removed and reported (``artifact_<reason>``), never
indexed; of two verified files of one key (a replaced version whose removal a kill interrupted), the newer is kept.
What an index row adds to its file, the ``extras`` (Urabrask's safety data sheets), is lost with the index: the
set-aside file keeps it.

Why damaged files are set aside and not deleted (:func:`set_aside`): the bytes may be what a person needs to find
out what damaged them. They are renamed next to the original, ``<name>.damaged-<UTC time>``, and never read again.

Why only these temporaries (:func:`remove_stale_temporaries`): the library removes only the temporary files of its
own atomic writes, named as :func:`esper_core.storage.atomic_write_bytes` names them for its own files (the
journal, artifact files) and inside its own directory, and only while it holds the writer lock, which every write of
the library holds too: no file it removes can belong to a write in progress.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

from esper_core.storage.atomic import temporary_name_pattern
from esper_core.telemetry import ERROR, Event
from esper_urza.errors import ArtifactIntegrityError
from esper_urza.library.files import ARTIFACT_PATH, ArtifactFiles
from esper_urza.library.index import ArtifactIndex
from esper_urza.library.loading import EVICTION_REASONS
from esper_urza.library.metrics import LibraryMetrics
from esper_urza.parameters import artifact_key
from esper_urza.records import ArtifactRecord, sha256_of

#: Sidecar files SQLite keeps beside a database in WAL mode; they go wherever the database goes.
SQLITE_SIDECARS = ("-wal", "-shm")


def set_aside(path: Path, *, sidecars: tuple[str, ...] = ()) -> Path:
    """Rename a damaged file to ``<name>.damaged-<UTC time>`` in its directory (``-2``, ``-3``... if taken), with
    its ``sidecars`` (``<name><suffix>`` becomes ``<new name><suffix>``). Returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    attempt = 1
    while target.exists():
        attempt += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{attempt}")
    os.replace(path, target)
    for suffix in sidecars:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.replace(sidecar, target.with_name(target.name + suffix))
    return target


def remove_stale_temporaries(root: Path, files: ArtifactFiles, owned: tuple[str, ...]) -> int:
    """Remove the temporary files of interrupted atomic writes of the library's files: those of ``owned`` (names
    of files in ``root``) and of artifact files. The caller holds the writer lock. Returns how many went."""
    removed = 0
    for name in owned:
        for stale in root.glob(temporary_name_pattern(name)):
            if stale.is_file() and not stale.is_symlink():
                try:
                    stale.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
    for relative in files.temporaries():
        removed += files.discard(relative)
    return removed


def verify_file(files: ArtifactFiles, relative: str) -> ArtifactRecord | str:
    """The record of the artifact file at ``relative`` (with its path and full SHA-256) if the file verifies (see
    the module's docstring), else the reason it does not: ``missing``, ``corrupt``, ``unreadable`` or
    ``mismatch``."""
    from esper_urza.tezzeret import load_artifact

    named = ARTIFACT_PATH.fullmatch(relative)
    data = files.read(relative)
    if named is None or data is None:
        return "missing"
    digest = sha256_of(data)
    if not digest.startswith(named["sha256"]):
        return "corrupt"
    try:
        record, _ = load_artifact(data, sha256=digest, path=relative)
    except ArtifactIntegrityError:
        return "unreadable"
    try:
        key = artifact_key(record.catalog, record.blueprint_id, record.parameters, record.slot)
    except ValueError:
        return "mismatch"
    if record.key != key or ArtifactFiles.relative_path(record) != relative:
        return "mismatch"
    return record


def reindex(
    index: ArtifactIndex, files: ArtifactFiles, metrics: LibraryMetrics
) -> tuple[int, list[tuple[str, str]], int]:
    """Index again every artifact file that no row names and that verifies, unless its key has a row (then it is a
    replaced version); remove the others. The caller holds the writer lock.

    Returns ``(rows rebuilt, [(path, reason) of files that failed verification], orphans removed)``."""
    in_use = index.paths()
    indexed = {location.key[:32] for location in index.locations()}
    candidates: dict[str, list[ArtifactRecord]] = defaultdict(list)
    failed: list[tuple[str, str]] = []
    orphans = 0
    for relative in files.unindexed(in_use):
        named = ARTIFACT_PATH.fullmatch(relative)
        if named is None or named["key"] in indexed:
            orphans += files.discard(relative)  # not an artifact file, or a version a newer save replaced
            continue
        verdict = verify_file(files, relative)
        if isinstance(verdict, ArtifactRecord):
            candidates[verdict.key].append(verdict)
            continue
        files.discard(relative)
        failed.append((relative, verdict))
        metrics.count("integrity_failures")
        metrics.report(
            Event(
                f"artifact_{verdict}",
                f"removed artifact file {relative}, which no row named: {EVICTION_REASONS.get(verdict, verdict)}; "
                "it will be rebuilt on its next fetch",
                ERROR,
                {"path": relative, "reason": verdict},
            )
        )
    rebuilt = 0
    for versions in candidates.values():
        newest, *older = sorted(versions, key=lambda record: (record.created_at, record.path), reverse=True)
        index.upsert(newest)
        rebuilt += 1
        for record in older:
            orphans += files.discard(record.path)
    files.remove_empty_directories()
    return rebuilt, failed, orphans
