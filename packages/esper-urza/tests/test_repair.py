"""What survives what: a damaged or missing index is set aside and rebuilt from the verified artifact files; a
damaged journal is replayed and set aside; stale temporaries are removed; what the library must not decide alone is
a clear error; and every repair, like every corrupt artifact, reaches the run's telemetry through the bus.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper_core import hookimpl
from esper_core.errors import UnknownComponentError
from esper_core.leyline import SlotKind, TelemetryPacket
from esper_core.oona import MemoryBackend, Oona
from esper_core.plugins import Registry, RunInfo, TelemetrySinkSpec
from esper_core.protocols import SlotShape
from esper_core.signing import SigningKey
from esper_core.storage import AppendOnlyLog
from esper_core.telemetry import ERROR, INFO, WARNING
from esper_core.tolaria.assembly import reopen_run, start_run
from esper_core.tolaria.trainer import Trainer
from esper_urza.errors import LibraryFileError
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.library.files import ArtifactFiles
from esper_urza.options import UrzaOptions
from esper_urza.records import ArtifactRecord
from esper_urza.tezzeret import Tezzeret

VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))
REQUESTS = [("BP052", {"hidden_multiple": float(m)}) for m in (1, 2, 3)]


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory, karn: KarnCatalog) -> Path:
    """A library holding three artifacts (copied by each test that damages it)."""
    root = tmp_path_factory.mktemp("stocked") / "urza"
    with UrzaLibrary(root, [karn]) as library:
        for blueprint_id, parameters in REQUESTS:
            library.fetch(blueprint_id, VECTOR_SLOT, parameters)
    return root


@pytest.fixture
def root(stocked: Path, tmp_path: Path) -> Path:
    copied = tmp_path / "urza"
    shutil.copytree(stocked, copied)
    return copied


def rows(root: Path, karn: KarnCatalog) -> dict[str, ArtifactRecord]:
    with UrzaLibrary(root, [karn]) as library:
        return {record.key: record for record in library.query()}


def artifact_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "artifacts").rglob("*") if p.is_file()}


def events(library: UrzaLibrary) -> list[Any]:
    return [event for packet in library.drain_telemetry() for event in packet.events]


def same_rows(found: dict[str, ArtifactRecord], expected: dict[str, ArtifactRecord]) -> None:
    """The rebuilt rows say what the originals said (every column but the extras, which only the index held)."""
    assert found.keys() == expected.keys()
    for key, record in expected.items():
        assert found[key].to_json() == record.to_json(), key
        assert (found[key].path, found[key].sha256, found[key].size_bytes) == (
            record.path,
            record.sha256,
            record.size_bytes,
        )


def fetch_all(library: UrzaLibrary) -> list[str]:
    return [library.fetch(blueprint_id, VECTOR_SLOT, parameters).source for blueprint_id, parameters in REQUESTS]


# -- 1. the index ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"not a database at all " * 100, id="garbage"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated to half"),
        pytest.param(lambda data: data[:100], id="truncated to 100 bytes"),
        pytest.param(lambda data: data[:16] + bytes(b ^ 0xFF for b in data[16:40]) + data[40:], id="header flipped"),
    ],
)
def test_a_damaged_index_is_set_aside_and_rebuilt_from_the_artifact_files(
    root: Path, karn: KarnCatalog, damage: Any
) -> None:
    expected = rows(root, karn)
    index = root / "catalog.sqlite"
    damaged = damage(index.read_bytes())
    index.write_bytes(damaged)
    with UrzaLibrary(root, [karn]) as library:
        report = library.recovery
        assert report.rows_rebuilt == 3 and report.artifacts_dropped == () and report.index_problem
        assert report.index_set_aside is not None and (root / report.index_set_aside).read_bytes() == damaged
        same_rows({record.key: record for record in library.query()}, expected)
        (event,) = [event for event in events(library) if event.name == "index_rebuilt"]
        assert event.level == WARNING and event.attributes["rows_rebuilt"] == "3"
        assert event.attributes["set_aside"] == report.index_set_aside
        assert fetch_all(library) == ["disk"] * 3  # nothing rebuilt by Tezzeret: the artifacts were kept
    assert rows(root, karn).keys() == expected.keys()  # and the new index is itself sound


def test_a_missing_or_emptied_index_is_rebuilt_from_the_artifact_files(root: Path, karn: KarnCatalog) -> None:
    expected = rows(root, karn)
    (root / "catalog.sqlite").unlink()
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.index_missing and library.recovery.rows_rebuilt == 3
        same_rows({record.key: record for record in library.query()}, expected)
        (event,) = [event for event in events(library) if event.name == "index_rebuilt"]
        assert event.attributes["problem"] == "missing"
    (root / "catalog.sqlite").write_bytes(b"")
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.index_missing and library.recovery.rows_rebuilt == 3


def test_a_row_whose_columns_disagree_with_its_record_makes_the_index_rebuilt(root: Path, karn: KarnCatalog) -> None:
    """A changed byte inside a value is invisible to SQLite; a query by tier would then be silently wrong."""
    expected = rows(root, karn)
    with sqlite3.connect(root / "catalog.sqlite") as db:
        db.execute("UPDATE artifacts SET tier = 'HIGH_RISK' WHERE rowid = 1")
    with UrzaLibrary(root, [karn]) as library:
        assert "says tier = 'HIGH_RISK'" in library.recovery.index_problem
        assert len(library.query(tier="SAFE")) == 3 and library.query(tier="HIGH_RISK") == []
        same_rows({record.key: record for record in library.query()}, expected)


def test_a_damaged_artifact_met_while_rebuilding_is_dropped_never_indexed(root: Path, karn: KarnCatalog) -> None:
    expected = rows(root, karn)
    victim = sorted(expected.values(), key=lambda record: record.path)[0]
    data = bytearray((root / victim.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (root / victim.path).write_bytes(bytes(data))
    (root / "catalog.sqlite").write_bytes(b"garbage" * 64)
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.rows_rebuilt == 2
        assert library.recovery.artifacts_dropped == ((victim.path, "corrupt"),)
        assert victim.path not in artifact_files(root) and library.get(victim.key) is None
        names = {event.name: event for event in events(library)}
        assert names["artifact_corrupt"].level == ERROR and names["artifact_corrupt"].attributes["path"] == victim.path
        assert names["index_rebuilt"].attributes["artifacts_dropped"] == "1"
        assert sorted(fetch_all(library)) == ["built", "disk", "disk"]
        assert library.metrics_snapshot()["urza.integrity.failures_total"] == 1


def test_of_two_verified_versions_of_an_artifact_the_newer_is_indexed(tmp_path: Path, karn: KarnCatalog) -> None:
    tezzeret, files = Tezzeret(), ArtifactFiles(tmp_path)
    older, newer = (tezzeret.build(karn, "BP052", VECTOR_SLOT, {}) for _ in range(2))
    assert older.record.created_at < newer.record.created_at and older.record.sha256 != newer.record.sha256
    for built in (newer, older):
        files.write(ArtifactFiles.relative_path(built.record), built.data)
    with UrzaLibrary(tmp_path, [karn]) as library:
        (record,) = library.query()
        assert record.sha256 == newer.record.sha256
        assert library.recovery.rows_rebuilt == 1 and library.recovery.orphans_removed == 1
        assert artifact_files(tmp_path) == {record.path}


def test_an_index_found_damaged_during_a_fetch_is_rebuilt_and_the_fetch_goes_on(root: Path, karn: KarnCatalog) -> None:
    with UrzaLibrary(root, [karn]) as library:
        # Another process (sharing the directory) replaced the index with a damaged file.
        (root / "replacement").write_bytes(b"garbage" * 64)
        os.replace(root / "replacement", root / "catalog.sqlite")
        for suffix in ("-wal", "-shm"):
            (root / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
        assert fetch_all(library) == ["disk"] * 3
        assert library.recovery.rows_rebuilt == 3 and library.recovery.index_set_aside is not None
        assert "index_rebuilt" in [event.name for event in events(library)]


def test_an_index_of_a_newer_release_is_refused_and_left_alone(root: Path, karn: KarnCatalog) -> None:
    with sqlite3.connect(root / "catalog.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    before = (root / "catalog.sqlite").read_bytes()
    with pytest.raises(LibraryFileError, match="schema version 99, written by a newer esper-urza") as caught:
        UrzaLibrary(root, [karn])
    assert caught.value.path == str(root / "catalog.sqlite") and "upgrade esper-urza" in str(caught.value)
    assert (root / "catalog.sqlite").read_bytes() == before


def test_an_index_sqlite_cannot_open_is_a_clear_error(root: Path, karn: KarnCatalog) -> None:
    (root / "catalog.sqlite").unlink()
    (root / "catalog.sqlite").mkdir()
    with pytest.raises(LibraryFileError, match="SQLite cannot") as caught:
        UrzaLibrary(root, [karn])
    assert caught.value.path == str(root / "catalog.sqlite") and "move it away" in caught.value.fix


# -- 1. the journal -------------------------------------------------------------------------------------------------
def journal_records(*entries: dict[str, str]) -> list[bytes]:
    return [json.dumps(entry).encode() for entry in entries]


def test_a_journal_damaged_mid_file_is_replayed_reported_and_set_aside(root: Path, karn: KarnCatalog) -> None:
    stray = "artifacts/karn/BP052/interrupted.pt"
    (root / stray).write_bytes(b"half a save")
    (root / "journal.log").unlink()
    with AppendOnlyLog(root / "journal.log") as log:
        for payload in journal_records(
            {"op": "intent", "tx": "t1", "key": "k" * 64, "path": "artifacts/karn/BP052/other.pt", "sha256": "0"},
            {"op": "intent", "tx": "t2", "key": "k" * 64, "path": stray, "sha256": "0" * 64},
        ):
            log.append(payload)
    data = bytearray((root / "journal.log").read_bytes())
    data[20] ^= 0xFF  # inside the first record: it is lost, the second survives
    (root / "journal.log").write_bytes(bytes(data))
    with UrzaLibrary(root, [karn]) as library:
        report = library.recovery
        assert report.journal_damaged_bytes > 0 and report.rolled_back == 1  # the intact intent was still decided
        assert report.journal_set_aside is not None and (root / report.journal_set_aside).read_bytes() == data
        assert stray not in artifact_files(root) and len(library.query()) == 3
        (event,) = [event for event in events(library) if event.name == "journal_damaged"]
        assert event.level == WARNING and event.attributes["set_aside"] == report.journal_set_aside
        assert fetch_all(library) == ["disk"] * 3


def test_a_torn_last_journal_record_is_what_a_kill_leaves_and_is_dropped_quietly(root: Path, karn: KarnCatalog) -> None:
    with AppendOnlyLog(root / "journal.log") as log:
        log.append(b'{"op": "commit", "tx": "t0"}')  # after the three saves' records
    whole = (root / "journal.log").read_bytes()
    (root / "journal.log").write_bytes(whole + whole[:10])  # a second append, killed 10 bytes in
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.journal_damaged_bytes == 0 and library.recovery.journal_set_aside is None
        assert not any(name.startswith("journal.log.damaged") for name in os.listdir(root))
        assert "journal_damaged" not in [event.name for event in events(library)]


def test_a_journal_the_library_cannot_read_is_a_clear_error(root: Path, karn: KarnCatalog) -> None:
    (root / "journal.log").unlink()
    (root / "journal.log").mkdir()
    with pytest.raises(LibraryFileError, match="journal cannot be read") as caught:
        UrzaLibrary(root, [karn])
    assert caught.value.path == str(root / "journal.log") and "move it away" in caught.value.fix


# -- 1. the directories ---------------------------------------------------------------------------------------------
def test_a_missing_artifacts_directory_drops_its_rows_says_so_and_rebuilds_on_fetch(
    root: Path, karn: KarnCatalog
) -> None:
    shutil.rmtree(root / "artifacts")
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.artifacts_missing and len(library.recovery.rows_dropped) == 3
        assert library.query() == []
        (event,) = [event for event in events(library) if event.name == "artifacts_missing"]
        assert event.level == WARNING and event.attributes["rows_dropped"] == "3"
        assert fetch_all(library) == ["built"] * 3


@pytest.mark.parametrize("where", ["artifacts", "."])
def test_a_file_where_the_library_keeps_a_directory_is_a_clear_error(
    tmp_path: Path, karn: KarnCatalog, where: str
) -> None:
    library_root = tmp_path / "urza"
    if where == ".":
        library_root.write_bytes(b"a file")
    else:
        library_root.mkdir()
        (library_root / where).write_bytes(b"a file")
    with pytest.raises(LibraryFileError, match="it is a file, where the library keeps a directory") as caught:
        UrzaLibrary(library_root, [karn])
    assert caught.value.path == str((library_root / where) if where != "." else library_root)


# -- 3. stale temporaries -------------------------------------------------------------------------------------------
def test_opening_removes_the_stale_temporaries_of_its_own_writes_and_nothing_else(
    root: Path, karn: KarnCatalog
) -> None:
    record = next(iter(rows(root, karn).values()))
    artifact_dir = (root / record.path).parent
    ours = [
        root / ".journal.log.k2j4x9_a.tmp",  # a journal reset killed mid-write
        artifact_dir / f".{Path(record.path).name}.q8w3e5r1.tmp",  # an artifact write killed mid-write
    ]
    theirs = [
        root / ".config.toml.a1b2c3d4.tmp",  # not a file the library writes
        root.parent / ".journal.log.a1b2c3d4.tmp",  # outside the library's directory
    ]
    for path in ours + theirs:
        path.write_bytes(b"partial")
    with UrzaLibrary(root, [karn]) as library:
        assert library.recovery.temporaries_removed == 2 and library.recovery.orphans_removed == 0
        assert not any(path.exists() for path in ours) and all(path.exists() for path in theirs)
        (event,) = [event for event in events(library) if event.name == "stale_temporaries_removed"]
        assert event.level == INFO and event.attributes["removed"] == "2"
        assert len(library.query()) == 3


# -- 2. telemetry on the run's bus ----------------------------------------------------------------------------------
class Listening:
    """The run's bus, and Tolaria's group on its telemetry and emergency streams."""

    def __init__(self) -> None:
        self.bus = Oona(MemoryBackend(), signing_key=SigningKey.generate(), group="tolaria-run", consumer="run")
        self.streams = [self.bus.streams.telemetry, self.bus.streams.emergency]
        self.bus.subscribe(self.streams)

    def packets(self) -> list[TelemetryPacket]:
        messages = self.bus.poll(self.streams, count=256)
        self.bus.ack_many(messages)
        return [message.payload for message in messages]  # type: ignore[misc]


@pytest.fixture
def listening() -> Iterator[Listening]:
    listener = Listening()
    yield listener
    listener.bus.close()


def test_a_corrupt_artifact_met_by_a_fetch_is_published_on_the_runs_bus(
    root: Path, karn: KarnCatalog, listening: Listening
) -> None:
    options = UrzaOptions(verify_on_open=False)
    with UrzaLibrary(root, [karn], options=options, bus=listening.bus, training_run_id="run-7") as library:
        assert listening.packets() == []  # a clean opening says nothing
        assert fetch_all(library) == ["disk"] * 3
        assert listening.packets() == []  # fetches alone publish nothing: no work per fetch, let alone per batch
        library.clear_cache()
        victim = library.query()[0]
        data = bytearray((root / victim.path).read_bytes())
        data[-10] ^= 0x01
        (root / victim.path).write_bytes(bytes(data))
        assert sorted(fetch_all(library)) == ["built", "disk", "disk"]
        (packet,) = listening.packets()
        assert packet.source_subsystem == "urza" and packet.training_run_id == "run-7"
        (event,) = packet.events
        assert event.name == "artifact_corrupt" and event.attributes["key"] == victim.key
        assert library.drain_telemetry()[0].events == []  # published, so not drained twice


def test_what_opening_repaired_waits_on_a_bus_until_it_is_published(
    root: Path, karn: KarnCatalog, listening: Listening
) -> None:
    (root / "catalog.sqlite").write_bytes(b"garbage" * 64)
    with UrzaLibrary(root, [karn], bus=listening.bus) as library:
        assert listening.packets() == []  # the run is still being assembled: nobody may be listening yet
        assert library.publish_telemetry() == 1
        (packet,) = listening.packets()
        assert [event.name for event in packet.events] == ["index_rebuilt"]
        assert library.publish_telemetry() == 0


class Refusing:
    """A bus that is down for its first ``failures`` publications."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[TelemetryPacket] = []

    def publish(self, message: TelemetryPacket, *, priority: Any) -> None:
        from esper_core.oona.backend import BusUnavailableError

        if self.failures:
            self.failures -= 1
            raise BusUnavailableError("redis is down")
        self.published.append(message)


def test_events_the_bus_refused_are_published_on_the_next_try(root: Path, karn: KarnCatalog) -> None:
    bus = Refusing(failures=1)
    (root / "catalog.sqlite").write_bytes(b"garbage" * 64)
    with UrzaLibrary(root, [karn], bus=bus) as library:
        assert library.publish_telemetry() == 0  # the bus is down: the packet is kept
        assert fetch_all(library) == ["disk"] * 3  # the next call that publishes sends it first
        assert [event.name for event in bus.published[0].events] == ["index_rebuilt"]
        assert len(bus.published) == 2  # the kept packet, then the metrics since


# -- 2. through a run: what the library reports reaches the run's sinks ---------------------------------------------
class Capture:
    """A telemetry sink keeping every packet a run hands it, and the plugin that provides it as ``capture``."""

    def __init__(self) -> None:
        self.packets: list[TelemetryPacket] = []

    def emit(self, packet: TelemetryPacket) -> None:
        self.packets.append(packet)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @hookimpl
    def esper_nissa_telemetry_sinks(self) -> Iterator[TelemetrySinkSpec]:
        yield TelemetrySinkSpec(name="capture", factory=lambda context: self)

    def registry(self) -> Registry:
        registry = Registry.create()
        registry.pm.register(self, name="capture")
        registry.invalidate()
        for lookup, name in ((registry.seed_executor, "kasmina"), (registry.policy, "fixed-schedule")):
            try:
                lookup(name)
            except UnknownComponentError:
                missing = f"a run needs the {name!r} plugin (pip install the esper packages)"
                if os.environ.get("CI"):  # in CI every package is installed: a missing one is a failure
                    pytest.fail(missing)
                pytest.skip(missing)
        return registry

    def urza_events(self) -> list[str]:
        return [event.name for packet in self.packets if packet.source_subsystem == "urza" for event in packet.events]


RUN = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=256",
    "run.synthetic.widths=[8]",
    "run.batch_size=64",
    "run.epochs=2",
    "run.name=tiny",
    "nissa.sinks=['capture']",
    "tamiyo.policy=fixed-schedule",
    'tamiyo.fixed-schedule.germinations=[{epoch = 1, blueprint = "BP052"}]',
    "kasmina.max_step_overhead=1e9",
    "kasmina.max_seed_parameter_fraction=5",
    "tamiyo.decision_budget_ms=1e9",
    "tamiyo.risk.hook_budget_ms=1e9",
    "urza.verify_on_open=false",  # so that a corrupt artifact is met by a fetch, not by opening's sweep
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run whose seed (BP052, germinated at epoch 1) its library stores."""
    runs = tmp_path_factory.mktemp("runs")
    capture = Capture()
    registry = capture.registry()
    config = registry.load_config(env={}, overrides=[*RUN, f"run.runs_dir={runs}"])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    run_dir = runs / "tiny"
    with UrzaLibrary(run_dir / "urza") as library:
        assert [record.blueprint_id for record in library.query()] == ["BP052"]
    return run_dir


def resume(run_dir: Path) -> Capture:
    """What ``esper run --resume`` does, with a capturing sink: reopen, restore the newest checkpoint, finish."""
    capture = Capture()
    trainer = Trainer(reopen_run(capture.registry(), run_dir))
    try:
        assert trainer.restore_latest() is not None
        trainer.fit()
    finally:
        trainer.close()
    return capture


def test_a_corrupt_artifact_met_while_resuming_reaches_the_runs_sinks(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run, run_dir)
    (artifact,) = (run_dir / "urza" / "artifacts").rglob("*.pt")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 3] ^= 0x10
    artifact.write_bytes(bytes(data))
    capture = resume(run_dir)
    assert "artifact_corrupt" in capture.urza_events()
    (packet,) = [p for p in capture.packets if p.source_subsystem == "urza" and p.events]
    assert packet.training_run_id == "tiny"


def test_a_run_resumes_over_a_damaged_index_and_its_sinks_hear_of_the_rebuild(
    finished_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "urza" / "catalog.sqlite").write_bytes(b"\x00garbage" * 512)
    capture = resume(run_dir)  # no traceback: the index is set aside and rebuilt
    assert "index_rebuilt" in capture.urza_events()
    assert any(name.startswith("catalog.sqlite.damaged-") for name in os.listdir(run_dir / "urza"))
    with UrzaLibrary(run_dir / "urza") as library:
        assert [record.blueprint_id for record in library.query()] == ["BP052"]


def test_the_urza_store_publishes_what_opening_repaired_when_the_run_starts(
    root: Path, karn: KarnCatalog, listening: Listening
) -> None:
    """Tolaria subscribes to the telemetry stream after it built the store: the plugin publishes then."""
    (root / "catalog.sqlite").write_bytes(b"garbage" * 64)
    registry = Registry.create()
    store = registry.build(
        registry.artifact_store("urza"),
        run_dir=root.parent,
        bus=listening.bus,
        catalogs=[karn],
        training_run_id="run-9",
    )
    try:
        assert store.root == root and listening.packets() == []
        registry.run_started(RunInfo(run_id="run-9", run_dir=root.parent, config=registry.load_config(env={})))
        (packet,) = listening.packets()
        assert packet.training_run_id == "run-9" and [event.name for event in packet.events] == ["index_rebuilt"]
    finally:
        store.close()
