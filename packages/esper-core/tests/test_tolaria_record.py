"""The run record: a decision point's entries are written together and made durable by one fsync, not one each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from esper_core.tolaria.record import RunRecord, read_record


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors fsynced, in order."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def kinds(path: Path) -> list[str]:
    return [entry["kind"] for entry in read_record(path)]


def test_a_batch_writes_its_entries_when_it_ends_with_one_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "record.log"
    record = RunRecord(path)
    record.append("run_started")
    fsyncs.clear()
    with record.batch():
        record.append("epoch", epoch=1)
        record.append("decision", epoch=1)
        with record.batch():  # nested: written with the outer batch
            record.append("transition", epoch=1)
        assert len(record) == 4  # a checkpoint taken now records the position the file will have
        offset = record.end_offset
        assert kinds(path) == ["run_started"]
        assert fsyncs == []
    assert kinds(path) == ["run_started", "epoch", "decision", "transition"]
    assert path.stat().st_size == offset == record.end_offset
    assert len(fsyncs) == 1
    record.append("epoch", epoch=2)  # outside a batch, every entry is durable at once again
    assert len(fsyncs) == 2 and kinds(path)[-1] == "epoch"
    record.close()


def test_a_batch_ended_by_an_error_still_writes_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "record.log"
    record = RunRecord(path)
    with pytest.raises(RuntimeError, match="plugin"), record.batch():
        record.append("epoch", epoch=1)
        raise RuntimeError("a plugin failed")
    assert kinds(path) == ["epoch"]
    with record.batch():
        pass  # nothing appended: nothing written
    assert len(record) == 1
    record.truncate(0)
    assert kinds(path) == [] and len(record) == 0
    record.close()
