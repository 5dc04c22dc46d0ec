"""Atomic file replacement: readers (and crashes) see the old file or the new one, never a mix."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from esper_core.storage import atomic_write_bytes, atomic_write_text


def test_writes_a_new_file(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert os.listdir(tmp_path) == ["state.bin"], "no temporary file is left behind"


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old content that is longer")
    atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_empty_payload(tmp_path):
    target = tmp_path / "empty"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""


def test_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "c" / "checkpoint.pt"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"


def test_sets_the_file_mode(tmp_path):
    target = tmp_path / "secret"
    atomic_write_bytes(target, b"x", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_bytes(target, b"y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_text_variant_writes_utf8(tmp_path):
    target = tmp_path / "notes.toml"
    atomic_write_text(target, 'name = "µ-seed ×2"\n')
    assert target.read_bytes() == 'name = "µ-seed ×2"\n'.encode()
    atomic_write_text(target, "replaced")
    assert target.read_text(encoding="utf-8") == "replaced"


def _raise(error: BaseException):
    def fail(*_args, **_kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    ("function", "error"),
    [("replace", OSError("disk gone")), ("fsync", OSError("I/O error")), ("replace", KeyboardInterrupt())],
    ids=["replace-fails", "fsync-fails", "interrupted"],
)
def test_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path, monkeypatch, function, error):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, function, _raise(error))
    with pytest.raises(type(error)):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _raise(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(tmp_path / "new.txt", "hello")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


# --- a crash at any moment -------------------------------------------------------------------------------------

_WRITER = """
import sys
from esper_core.storage import atomic_write_bytes

path, size, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
number = start
while True:
    number += 1
    atomic_write_bytes(path, b"%012d" % number * (size // 12))
"""
_SIZE = 12 * 40_000  # about 480 KB, so a kill often lands in the middle of a write


def _check_whole(data: bytes) -> int:
    """The payload number, after checking the file holds exactly one complete payload."""
    assert len(data) == _SIZE, f"torn file: {len(data)} bytes instead of {_SIZE}"
    tag = data[:12]
    assert data == tag * (_SIZE // 12), "the file mixes two payloads"
    return int(tag)


def test_killed_writer_leaves_one_complete_payload(tmp_path):
    """SIGKILL a process that keeps rewriting a file: after each kill the file is one whole payload."""
    rng = random.Random(1234)
    target = tmp_path / "target.bin"
    previous = 0
    atomic_write_bytes(target, b"%012d" % previous * (_SIZE // 12))
    for run in range(5):
        start = (run + 1) * 1_000_000
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(_SIZE), str(start)])
        try:
            deadline = time.monotonic() + 20.0
            while _check_whole(target.read_bytes()) <= previous:
                assert writer.poll() is None, "the writer died on its own"
                assert time.monotonic() < deadline, "the writer never wrote"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        assert writer.returncode == -signal.SIGKILL
        number = _check_whole(target.read_bytes())
        assert start < number, "the file went back to an older payload"
        previous = number
        leftovers = [p for p in tmp_path.iterdir() if p != target]
        assert len(leftovers) <= 1, f"temporary files accumulate: {leftovers}"
        for leftover in leftovers:
            assert leftover.name.startswith(".target.bin.") and leftover.name.endswith(".tmp")
            leftover.unlink()


def test_kill_before_the_first_write_completes_leaves_no_target(tmp_path):
    """A crash during the very first write must not leave a partial target file."""
    target = tmp_path / "fresh.bin"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(_SIZE), "0"])
    try:
        deadline = time.monotonic() + 20.0
        while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and not target.exists():
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    if target.exists():
        _check_whole(target.read_bytes())
    assert all(p == target or p.name.endswith(".tmp") for p in tmp_path.iterdir())
