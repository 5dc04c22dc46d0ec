"""Atomic file replacement: readers (and crashes) see the old file or the new one, never a mix."""

from __future__ import annotations

import os
import random
import signal
import stat
import sys
import time

import pytest

from esper_core.storage import atomic_write_bytes, atomic_write_text
from esper_core.testing.processes import Child


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
number = start + 1
atomic_write_bytes(path, b"%012d" % number * (size // 12))
print("ready", flush=True)  # one payload of this run is in place: the file must never go back before it
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
    """SIGKILL a process that keeps rewriting a file: while it runs a reader sees one whole payload, and after each
    kill the file is one whole payload, never older than what the killed run had already written."""
    rng = random.Random(1234)
    target = tmp_path / "target.bin"
    atomic_write_bytes(target, b"%012d" % 0 * (_SIZE // 12))
    for run in range(5):
        start = (run + 1) * 1_000_000
        with Child([sys.executable, "-c", _WRITER, str(target), str(_SIZE), str(start)]) as writer:
            writer.wait_for("ready")
            # The random moment of the kill is the test; meanwhile, read as a concurrent reader would.
            kill_at = time.monotonic() + rng.uniform(0.0, 0.15)
            seen = start + 1
            while time.monotonic() < kill_at:
                number = _check_whole(target.read_bytes())
                assert number >= seen, "a reader saw the file go back to an older payload"
                seen = number
            assert writer.kill() == -signal.SIGKILL, "the writer died on its own"
        number = _check_whole(target.read_bytes())
        assert number >= seen, "the file went back to an older payload"
        leftovers = [p for p in tmp_path.iterdir() if p != target]
        assert len(leftovers) <= 1, f"temporary files accumulate: {leftovers}"
        for leftover in leftovers:
            assert leftover.name.startswith(".target.bin.") and leftover.name.endswith(".tmp")
            leftover.unlink()


# The child stops inside its very first atomic_write_bytes at a chosen step, says so, and waits to be killed
# (stdin is never written; its end means the test is gone).
_HELD_WRITER = """
import os, sys
from esper_core.storage import atomic, atomic_write_bytes

def hold(*_args, **_kwargs):
    print("holding", flush=True)
    sys.stdin.read()
    os._exit(3)

step = sys.argv[3]
if step == "fsync-data":
    os.fsync = hold  # the data is written to the temporary file, not yet flushed to disk nor renamed
elif step == "rename":
    os.replace = hold  # the temporary file is complete and synced, about to be renamed over the target
else:
    atomic.fsync_directory = hold  # renamed, the directory not yet synced
atomic_write_bytes(sys.argv[1], b"%012d" % 1 * (int(sys.argv[2]) // 12))
"""


@pytest.mark.parametrize(
    ("step", "target_exists"), [("fsync-data", False), ("rename", False), ("fsync-directory", True)]
)
def test_kill_during_the_first_write_leaves_no_target_or_a_whole_one(tmp_path, step, target_exists):
    """A crash at each step of the very first write: before the rename there is no target at all (only a
    temporary file, which later writes do not read), after it the target is the whole payload."""
    target = tmp_path / "fresh.bin"
    with Child([sys.executable, "-c", _HELD_WRITER, str(target), str(_SIZE), step]) as writer:
        writer.wait_for("holding")
        assert writer.kill() == -signal.SIGKILL
    assert target.exists() is target_exists
    if target_exists:
        assert _check_whole(target.read_bytes()) == 1
    temporaries = [p for p in tmp_path.iterdir() if p != target]
    assert len(temporaries) == (0 if target_exists else 1)
    for temporary in temporaries:
        assert temporary.name.startswith(".fresh.bin.") and temporary.name.endswith(".tmp")
        if step == "rename":
            assert _check_whole(temporary.read_bytes()) == 1
