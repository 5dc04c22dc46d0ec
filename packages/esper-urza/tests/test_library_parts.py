"""The library's parts, each on its own: the cache's eviction order, the journal's recovery decisions, the wall
around ``artifacts/``, the index's guarded delete, the durable save, the latency metrics and the writer lock.

What a user sees through :class:`~esper_urza.library.UrzaLibrary` is in test_library.py and test_crash.py; these
tests pin the decisions those rest on, without torch or a catalog (artifacts here are arbitrary bytes with a record
whose SHA-256 matches them).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper_core.leyline import SlotKind
from esper_core.protocols import SlotShape
from esper_core.storage import AppendOnlyLog, read_records
from esper_core.telemetry import Event
from esper_urza.errors import ArtifactIntegrityError
from esper_urza.library import journal, metrics
from esper_urza.library.building import ArtifactBuilder
from esper_urza.library.cache import ArtifactCache, CachedArtifact
from esper_urza.library.files import ArtifactFiles
from esper_urza.library.index import ArtifactIndex
from esper_urza.library.journal import SaveJournal
from esper_urza.library.locking import LibraryLock
from esper_urza.library.metrics import LibraryMetrics
from esper_urza.options import TezzeretOptions, UrzaOptions
from esper_urza.records import ArtifactRecord, BuiltArtifact, GuardSpec, sha256_of

VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))


def record(
    key: str, data: bytes = b"weights", *, path: str = "", catalog: str = "karn", blueprint_id: str = "BP052"
) -> ArtifactRecord:
    """A record of an artifact whose file holds ``data``."""
    return ArtifactRecord(
        key=key,
        catalog=catalog,
        blueprint_id=blueprint_id,
        name="residual_mlp",
        tier="SAFE",
        risk=0.3,
        stage=1,
        quarantine_only=False,
        approval_required=False,
        parameters={"hidden_multiple": 2.0},
        guard=GuardSpec("vector", (12,), "float32"),
        sha256=sha256_of(data),
        size_bytes=len(data),
        parameter_count=0,
        forward_latency_ms=0.1,
        build_ms=1.0,
        initial_output_ratio=0.0,
        compiled=False,
        created_at=0.0,
        descriptor_bytes=b"",
        versions={},
        path=path,
    )


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ArtifactIndex]:
    opened = ArtifactIndex(tmp_path / "catalog.sqlite")
    opened.create_schema()
    yield opened
    opened.close()


@pytest.fixture
def files(tmp_path: Path) -> ArtifactFiles:
    return ArtifactFiles(tmp_path)


def stored(index: ArtifactIndex, files: ArtifactFiles, key: str, data: bytes) -> ArtifactRecord:
    """An artifact as a completed save leaves it: its file written and its row naming it."""
    relative = ArtifactFiles.relative_path(record(key, data))
    files.write(relative, data)
    saved = record(key, data, path=relative)
    index.upsert(saved)
    return saved


# -- the cache ------------------------------------------------------------------------------------------------------
def entry(key: str) -> CachedArtifact:
    return CachedArtifact(record(key), {}, catalog=object())  # type: ignore[arg-type]


def test_the_cache_evicts_the_least_recently_used_first() -> None:
    cache = ArtifactCache(2)
    cache.put("a", entry("a"))
    cache.put("b", entry("b"))
    assert cache.get("a") is not None  # a hit makes "a" the most recently used...
    cache.put("c", entry("c"))  # ...so "b" goes
    assert cache.keys() == ["a", "c"] and "b" not in cache and cache.evictions == 1
    cache.put("a", entry("a"))  # storing a cached key again refreshes it, evicting nothing
    assert cache.keys() == ["c", "a"] and cache.evictions == 1
    cache.put("d", entry("d"))
    assert cache.keys() == ["a", "d"] and cache.evictions == 2


def test_peeking_replacing_and_popping_do_not_count_as_use_or_eviction() -> None:
    cache = ArtifactCache(3)
    for key in "abc":
        cache.put(key, entry(key))
    assert cache.peek("a") is not None and cache.keys() == ["a", "b", "c"]
    newer = entry("a")
    cache.replace("a", newer)
    assert cache.peek("a") is newer and cache.keys() == ["a", "b", "c"]
    cache.replace("z", entry("z"))  # not cached: not inserted
    assert "z" not in cache
    cache.touch("a")
    assert cache.keys() == ["b", "c", "a"]
    assert cache.pop("b") is not None and cache.pop("b") is None
    assert cache.get("missing") is None
    assert len(cache) == 2 and cache.evictions == 0


def test_a_cache_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match=r"at least 1 \(urza.cache_size\), not 0"):
        ArtifactCache(0)


# -- the journal and its recovery decisions -------------------------------------------------------------------------
def append(path: Path, *payloads: bytes) -> None:
    with AppendOnlyLog(path) as log:
        for payload in payloads:
            log.append(payload)


def intent(tx: str, key: str, path: str, sha256: str) -> bytes:
    return json.dumps({"op": "intent", "tx": tx, "key": key, "path": path, "sha256": sha256}).encode()


def commit(tx: str) -> bytes:
    return json.dumps({"op": "commit", "tx": tx}).encode()


def test_unfinished_saves_are_intents_without_a_commit_and_junk_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    append(
        path,
        intent("t1", "k1", "artifacts/a.pt", "1" * 64),
        b"not json",
        b"[1, 2]",
        intent("t2", "k2", "artifacts/b.pt", "2" * 64),
        commit("t1"),
        intent("t3", "k3", "artifacts/c.pt", "3" * 64),
    )
    assert [(i.transaction, i.key, i.path) for i in SaveJournal(path).unfinished()] == [
        ("t2", "k2", "artifacts/b.pt"),
        ("t3", "k3", "artifacts/c.pt"),
    ]
    assert SaveJournal(tmp_path / "absent.log").unfinished() == []


def test_replay_keeps_a_save_whose_row_names_its_intact_file(
    tmp_path: Path, index: ArtifactIndex, files: ArtifactFiles
) -> None:
    saved = stored(index, files, "k1", b"version 1")
    append(tmp_path / "journal.log", intent("t1", "k1", saved.path, saved.sha256))
    assert SaveJournal(tmp_path / "journal.log").replay(index, files) == (1, 0)
    assert files.read(saved.path) == b"version 1"


def test_replay_rolls_back_a_save_that_never_reached_its_row(
    tmp_path: Path, index: ArtifactIndex, files: ArtifactFiles
) -> None:
    old = stored(index, files, "k1", b"version 1")
    new_path = ArtifactFiles.relative_path(record("k1", b"version 2"))
    files.write(new_path, b"version 2")  # the file was written, the kill came before the row
    append(tmp_path / "journal.log", intent("t1", "k1", new_path, sha256_of(b"version 2")))
    assert SaveJournal(tmp_path / "journal.log").replay(index, files) == (0, 1)
    assert files.read(new_path) is None  # the half-done save's file is gone...
    assert files.read(old.path) == b"version 1" and index.get("k1").path == old.path  # type: ignore[union-attr]


def test_replay_never_removes_a_file_that_a_row_names(
    tmp_path: Path, index: ArtifactIndex, files: ArtifactFiles
) -> None:
    saved = stored(index, files, "k1", b"version 1")
    # another key's interrupted save of a file that row k1 names; and k1's own intent with a hash the file lacks
    append(
        tmp_path / "journal.log",
        intent("t1", "k2", saved.path, saved.sha256),
        intent("t2", "k1", saved.path, "f" * 64),
    )
    assert SaveJournal(tmp_path / "journal.log").replay(index, files) == (0, 2)
    assert files.read(saved.path) == b"version 1"  # left for the sweep of rows to judge


def test_replay_refuses_journal_paths_outside_the_artifacts(
    tmp_path: Path, index: ArtifactIndex, files: ArtifactFiles
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-precious.txt"
    outside.write_text("keep me")
    beside = tmp_path / "catalog-notes.txt"  # inside the root, but not under artifacts/
    beside.write_text("keep me too")
    append(
        tmp_path / "journal.log",
        intent("t1", "k1", str(outside), "0" * 64),  # absolute
        intent("t2", "k2", "catalog-notes.txt", "0" * 64),
        intent("t3", "k3", "artifacts/../catalog-notes.txt", "0" * 64),
    )
    assert SaveJournal(tmp_path / "journal.log").replay(index, files) == (0, 3)
    assert outside.read_text() == "keep me" and beside.read_text() == "keep me too"
    outside.unlink()


def test_a_transaction_commits_only_when_its_body_finishes(tmp_path: Path) -> None:
    saves = SaveJournal(tmp_path / "journal.log")
    with saves.transaction("k1", "artifacts/a.pt", "1" * 64):
        pass
    with pytest.raises(OSError, match="disk full"), saves.transaction("k2", "artifacts/b.pt", "2" * 64):
        raise OSError("disk full")
    ops = [json.loads(payload)["op"] for payload in read_records(saves.path)]
    assert ops == ["intent", "commit", "intent"]
    assert [i.key for i in saves.unfinished()] == ["k2"]


def test_the_journal_is_emptied_once_it_holds_enough_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_AT", 4)
    saves = SaveJournal(tmp_path / "journal.log")
    with saves.transaction("k1", "artifacts/a.pt", "1" * 64):
        pass
    saves.compact()
    assert len(read_records(saves.path)) == 2  # below the limit: kept
    with saves.transaction("k2", "artifacts/b.pt", "2" * 64):
        pass
    saves.compact()
    assert read_records(saves.path) == []


# -- the files, and the wall around them ----------------------------------------------------------------------------
def test_only_paths_under_artifacts_are_ever_touched(tmp_path: Path, files: ArtifactFiles) -> None:
    (tmp_path / "catalog.sqlite").write_bytes(b"the index")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.pt").write_bytes(b"not ours")
    (files.directory / "escape").symlink_to(elsewhere, target_is_directory=True)
    for relative in (
        "catalog.sqlite",
        "../catalog.sqlite",
        "artifacts/../catalog.sqlite",
        "artifacts/escape/target.pt",
    ):
        assert files.within(relative) is None, relative
        assert not files.unlink(relative) and files.read(relative) is None and files.sha256(relative) is None
    with pytest.raises(ValueError, match="outside"):
        files.write("artifacts/../catalog.sqlite", b"overwritten")
    assert (tmp_path / "catalog.sqlite").read_bytes() == b"the index"
    assert (elsewhere / "target.pt").read_bytes() == b"not ours"


def test_file_names_cannot_climb_out_of_their_directory() -> None:
    hostile = record("k" * 64, catalog="..", blueprint_id="../../etc")
    relative = ArtifactFiles.relative_path(hostile)
    assert relative.startswith("artifacts/_/.._.._etc/") and relative.endswith(f"-{hostile.sha256[:16]}.pt")


def test_orphans_and_empty_directories_are_removed_and_named_files_kept(
    index: ArtifactIndex, files: ArtifactFiles
) -> None:
    kept = stored(index, files, "k1", b"version 1")
    (files.directory / "karn/BP052/.tmp-123").write_bytes(b"an interrupted write")
    (files.directory / "karn/BP009/empty").mkdir(parents=True)
    (files.directory / "other/replaced.pt").parent.mkdir()
    (files.directory / "other/replaced.pt").write_bytes(b"a replaced version")
    assert files.remove_orphans(index.paths()) == 2
    remaining = {p.relative_to(files.root).as_posix() for p in files.directory.rglob("*")}
    assert remaining == {kept.path, "artifacts/karn", "artifacts/karn/BP052"}


# -- the index ------------------------------------------------------------------------------------------------------
def test_a_guarded_delete_spares_a_row_that_names_another_version(index: ArtifactIndex) -> None:
    index.upsert(record("k1", b"version 2", path="artifacts/v2.pt"))
    assert not index.delete("k1", sha256=sha256_of(b"version 1"))  # another process replaced it meanwhile
    assert index.get("k1") is not None and index.path_in_use("artifacts/v2.pt")
    assert index.delete("k1", sha256=sha256_of(b"version 2"))
    assert index.get("k1") is None and index.paths() == set() and not index.delete("k1")


def test_rows_round_trip_with_their_extras(index: ArtifactIndex) -> None:
    index.upsert(record("k1", path="artifacts/a.pt"))
    index.set_extras("k1", {"bsds": {"hazard_band": "LOW"}})
    got = index.get("k1")
    assert got is not None and got.extras == {"bsds": {"hazard_band": "LOW"}} and got.path == "artifacts/a.pt"
    assert got.to_json() == record("k1").to_json()
    assert index.location("k1") == ("k1", "artifacts/a.pt", sha256_of(b"weights"), "BP052")
    assert index.location("k2") is None


# -- the durable save -----------------------------------------------------------------------------------------------
@pytest.fixture
def builder(tmp_path: Path, index: ArtifactIndex, files: ArtifactFiles) -> Iterator[ArtifactBuilder]:
    lock = LibraryLock(tmp_path / ".lock")
    yield ArtifactBuilder(
        index=index,
        files=files,
        journal=SaveJournal(tmp_path / "journal.log"),
        lock=lock,
        metrics=LibraryMetrics(UrzaOptions()),
        options=TezzeretOptions(),
    )
    lock.close()


def test_a_new_version_replaces_the_old_file_and_keeps_the_extras(
    builder: ArtifactBuilder, index: ArtifactIndex, files: ArtifactFiles, tmp_path: Path
) -> None:
    first = builder.save(BuiltArtifact(b"version 1", record("k1", b"version 1")))
    index.set_extras("k1", {"bsds": {"hazard_band": "LOW"}})
    second = builder.save(BuiltArtifact(b"version 2", record("k1", b"version 2")))
    assert second.path != first.path and second.extras == {"bsds": {"hazard_band": "LOW"}}
    assert files.read(first.path) is None and files.read(second.path) == b"version 2"
    assert index.get("k1").sha256 == sha256_of(b"version 2")  # type: ignore[union-attr]
    assert SaveJournal(tmp_path / "journal.log").unfinished() == []


def test_bytes_that_do_not_match_their_record_are_not_saved(builder: ArtifactBuilder, index: ArtifactIndex) -> None:
    with pytest.raises(ArtifactIntegrityError, match="does not match its own SHA-256"):
        builder.save(BuiltArtifact(b"tampered", record("k1", b"original")))
    assert index.get("k1") is None


# -- the latency metrics --------------------------------------------------------------------------------------------
def test_each_source_is_held_to_its_own_budget() -> None:
    measured = LibraryMetrics(UrzaOptions(fetch_budget_ms=10.0, build_budget_ms=100.0))
    measured.observe_fetch("built", 50.0, "BP052", VECTOR_SLOT)  # a build: within its 100 ms
    measured.observe_fetch("disk", 9.0, "BP052", VECTOR_SLOT)
    measured.observe_fetch("memory", 11.0, "BP052", VECTOR_SLOT)  # over 10 ms
    measured.observe_fetch("built", 101.0, "BP052", VECTOR_SLOT)  # over 100 ms
    (packet,) = measured.drain(cache_size=0, cache_evictions=0)
    assert [(e.attributes["source"], e.attributes["budget_ms"]) for e in packet.events] == [
        ("memory", "10"),
        ("built", "100"),
    ]
    assert packet.events[0].description == (
        "fetch of BP052 at vector[12] from memory took 11.00 ms, over its 10 ms budget"
    )
    values = {metric.name: metric.value for metric in packet.metrics}
    assert values["urza.fetch.over_budget_total"] == 2 and values["urza.fetch.total"] == 4
    assert values["urza.fetch.built_total"] == 2 and values["urza.fetch.disk_total"] == 1


def test_latency_percentiles_per_source() -> None:
    measured = LibraryMetrics(UrzaOptions(fetch_budget_ms=1e9))
    for latency in range(1, 101):  # 1 .. 100 ms from memory
        measured.observe_fetch("memory", float(latency), "BP052", VECTOR_SLOT)
    for disk_latency in (3.0, 1.0, 5.0):  # out of order: percentiles sort
        measured.observe_fetch("disk", disk_latency, "BP052", VECTOR_SLOT)
    snapshot = measured.snapshot(cache_size=7, cache_evictions=2)
    assert snapshot["urza.fetch.memory.p50_ms"] == 50.5 and snapshot["urza.fetch.memory.p95_ms"] == 95.0
    assert snapshot["urza.fetch.disk.p50_ms"] == 3.0 and snapshot["urza.fetch.disk.p95_ms"] == 5.0
    assert snapshot["urza.fetch.built.p50_ms"] == 0.0 and snapshot["urza.fetch.built.p95_ms"] == 0.0  # no samples
    assert snapshot["urza.cache.size"] == 7 and snapshot["urza.cache.evictions_total"] == 2


def test_what_waits_for_a_drain_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_PENDING_EVENTS", 3)
    monkeypatch.setattr(metrics, "LATENCY_WINDOW", 4)
    measured = LibraryMetrics(UrzaOptions())
    assert measured.drain(cache_size=0, cache_evictions=0) == []  # nothing happened: no packet
    for number in range(5):
        measured.report(Event(f"event_{number}"))
    for latency in (100.0, 100.0, 1.0, 1.0, 1.0, 1.0):  # only the last four count
        measured.observe_fetch("memory", latency, "BP052", VECTOR_SLOT)
    assert measured.snapshot(cache_size=0, cache_evictions=0)["urza.fetch.memory.p95_ms"] == 1.0
    (packet,) = measured.drain(cache_size=0, cache_evictions=0)
    assert [event.name for event in packet.events] == ["event_4", "timeout_urza", "timeout_urza"]
    assert measured.drain(cache_size=0, cache_evictions=0) == []


# -- the writer lock ------------------------------------------------------------------------------------------------
def test_the_writer_lock_excludes_other_processes_until_the_outermost_writer_is_done(tmp_path: Path) -> None:
    lock = LibraryLock(tmp_path / ".lock")

    def another_process_can_write() -> bool:
        with open(tmp_path / ".lock", "a+b") as other:  # a separate open file: flock treats it as another process
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other.fileno(), fcntl.LOCK_UN)
            return True

    assert another_process_can_write()
    with lock.exclusive():
        assert not another_process_can_write()
        with lock.exclusive():  # re-entrant: a save inside a fetch
            assert not another_process_can_write()
        assert not another_process_can_write()  # the inner writer's end does not release it
    assert another_process_can_write()
    lock.close()
