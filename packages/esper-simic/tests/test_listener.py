"""A run record mirrored through the bus is rebuilt byte for byte: in order, delivered twice, cut back by a resume,
with a gap (given up, named), and across a listener's restart; Tolaria's side publishes each durable entry once and
never lets a failing bus stop the run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from esper_core.leyline import RunRecordEntry
from esper_core.oona import Oona
from esper_core.oona.memory import MemoryBackend
from esper_core.signing import SigningKey
from esper_core.storage.appendlog import encode_record
from esper_core.tolaria.record import RECORD_FILE, RunRecord
from esper_core.tolaria.record_mirror import RecordMirror
from esper_simic.listener import RecordListener, RecordMirrors

CONFIG = '[run]\nname = "r1"\n'


def bus() -> Oona:
    return Oona(MemoryBackend(), signing_key=SigningKey.from_secret("listener-test-secret-0123456789abcdef"),
                group="simic-listener", consumer="listener")  # fmt: skip


class Published:
    """What a run publishes: its record written through a :class:`RecordMirror` on an in-memory bus."""

    def __init__(self, tmp_path: Path, run: str = "r1") -> None:
        self.directory = tmp_path / "runs" / run
        self.directory.mkdir(parents=True)
        (self.directory / "config.toml").write_text(CONFIG)
        self.bus = bus()
        self.bus.subscribe([self.bus.streams.record], from_start=True)
        self.mirror = RecordMirror(self.bus, run, self.directory / "config.toml")
        self.record = RunRecord(self.directory / RECORD_FILE, on_written=self.mirror)

    def epochs_then_finish(self, epochs: int) -> list[RunRecordEntry]:
        """Write ``epochs`` epoch entries and the run's end; what went on the bus."""
        for epoch in range(epochs):
            self.record.append("epoch", epoch=epoch)
        self.record.append("run_finished", epochs=epochs)
        return self.messages()

    def assert_mirrored_in(self, mirrors: RecordMirrors) -> None:
        [finished] = mirrors.finished()
        assert (finished / RECORD_FILE).read_bytes() == (self.directory / RECORD_FILE).read_bytes()

    def messages(self) -> list[RunRecordEntry]:
        found = []
        while polled := self.bus.poll([self.bus.streams.record], count=100):
            found += [m.payload for m in polled if isinstance(m.payload, RunRecordEntry)]
            self.bus.ack_many(polled)
        return found


def feed(mirrors: RecordMirrors, messages: Sequence[RunRecordEntry]) -> list[str]:
    return [run for message in messages if (run := mirrors.receive(message)) is not None]


def test_a_record_arrives_whole_and_byte_for_byte_with_its_configuration(tmp_path: Path) -> None:
    run = Published(tmp_path)
    run.record.append("run_started", run_id="r1")
    with run.record.batch():
        run.record.append("epoch", epoch=1)
        run.record.append("decision", epoch=1)
    run.record.append("run_finished", epochs=1)
    messages = run.messages()
    ends = [m.offset + len(encode_record(m.entry)) for m in messages]
    assert [m.offset for m in messages] == [0, *ends[:-1]] and ends[-1] == run.record.end_offset
    assert messages[0].config_toml == CONFIG and all(not m.config_toml for m in messages[1:])
    mirrors = RecordMirrors(tmp_path / "incoming")
    assert feed(mirrors, messages) == ["r1"]
    run.assert_mirrored_in(mirrors)
    assert (mirrors.finished()[0] / "config.toml").read_text() == CONFIG
    assert not (tmp_path / "incoming" / "open" / "r1").exists()


def test_an_entry_delivered_twice_is_kept_once(tmp_path: Path) -> None:
    run = Published(tmp_path)
    messages = run.epochs_then_finish(3)
    mirrors = RecordMirrors(tmp_path / "incoming")
    feed(mirrors, [messages[0], messages[1], messages[0], messages[1], messages[2], messages[1], messages[3]])
    run.assert_mirrored_in(mirrors)


def test_a_resumed_run_that_cut_its_record_back_is_mirrored_as_it_ends(tmp_path: Path) -> None:
    run = Published(tmp_path)
    run.record.append("run_started", run_id="r1")
    checkpoint = run.record.end_offset
    run.record.append("epoch", epoch=1, val_accuracy=0.5)  # trained, then the run was killed before its checkpoint
    run.record.append("epoch", epoch=2, val_accuracy=0.6)
    run.record.cut_to(checkpoint)  # the resume cuts the record back to the checkpoint's offset and trains again
    run.record.append("epoch", epoch=1, val_accuracy=0.55)
    run.record.append("run_finished", epochs=1)
    messages = run.messages()
    assert [m.offset for m in messages].count(checkpoint) == 2
    mirrors = RecordMirrors(tmp_path / "incoming")
    assert feed(mirrors, messages) == ["r1"]
    run.assert_mirrored_in(mirrors)


def test_a_run_whose_first_entries_never_arrived_is_given_up_with_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Published(tmp_path)
    messages = run.epochs_then_finish(4)
    mirrors = RecordMirrors(tmp_path / "incoming")
    with caplog.at_level(logging.WARNING, logger="esper.simic.listener"):
        assert feed(mirrors, messages[2:]) == []
    assert mirrors.finished() == [] and list((tmp_path / "incoming" / "open").iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "run r1 is not learned from" in warnings[0] and "never arrived" in warnings[0]
    # The same name starting again (a new run) is mirrored from its first entry.
    assert feed(mirrors, messages) == ["r1"]


def test_a_restarted_listener_continues_from_its_files(tmp_path: Path) -> None:
    run = Published(tmp_path)
    messages = run.epochs_then_finish(4)
    first = RecordMirrors(tmp_path / "incoming")
    feed(first, messages[:3])
    first.close()
    again = RecordMirrors(tmp_path / "incoming")
    assert feed(again, messages[2:]) == ["r1"]  # the last entry the first one wrote arrives again, unacknowledged
    run.assert_mirrored_in(again)


def test_an_entry_naming_no_usable_directory_is_ignored(tmp_path: Path) -> None:
    mirrors = RecordMirrors(tmp_path / "incoming")
    for name in ("", "..", "a/b", "../escape"):
        assert mirrors.receive(RunRecordEntry(version=1, training_run_id=name, offset=0, entry=b"{}")) is None
    assert list((tmp_path / "incoming" / "open").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_the_listener_drains_the_stream_into_the_mirrors(tmp_path: Path) -> None:
    shared = bus()
    listener = RecordListener(shared, RecordMirrors(tmp_path / "incoming"))
    record = RunRecord(tmp_path / RECORD_FILE, on_written=RecordMirror(shared, "r2", tmp_path / "none.toml"))
    record.append("run_started", run_id="r2")
    record.append("run_finished", epochs=0)
    assert listener.drain() == 2 and listener.finished_runs == 1
    assert [p.name for p in listener.mirrors.finished()] == ["r2"]
    assert shared.poll([shared.streams.record]) == [], "every entry was acknowledged"


class BrokenBus:
    def publish_many(self, messages: object) -> None:
        raise ConnectionError("the server went away")


def test_a_bus_that_fails_never_stops_the_run_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = RecordMirror(BrokenBus(), "r3", tmp_path / "config.toml")  # type: ignore[arg-type]
    record = RunRecord(tmp_path / RECORD_FILE, on_written=mirror)
    with caplog.at_level(logging.WARNING, logger="esper.tolaria.record"):
        for epoch in range(3):
            record.append("epoch", epoch=epoch)
    assert len(record.entries()) == 3, "the record on disk is complete"
    assert mirror.failures == 3 and mirror.published == 0
    [warning] = [r.getMessage() for r in caplog.records]
    assert "r3" in warning and "ConnectionError" in warning and "complete on disk" in warning
