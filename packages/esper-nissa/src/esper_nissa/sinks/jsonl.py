"""The ``jsonl`` telemetry sink: every telemetry packet as one line of JSON, appended to a file in the run directory.

Each line is ``MessageToDict(packet)``: protobuf's canonical JSON mapping (camelCase field names, enums by name,
64-bit integers as strings, fields at their default value left out), nothing added. ``ParseDict`` turns a line back
into the packet (:func:`read_packets`).

Durability: a line goes to the file in a single ``write`` to a descriptor opened with ``O_APPEND``, so the file only
ever ends inside the line being written; a crash loses at most that line. :func:`read_jsonl` skips such a torn last
line, and opening the sink again (a resumed run) cuts it off so new lines follow whole ones. ``flush()`` fsyncs.
A checkpoint remembers where the file ended (``state_dict``); resuming from it cuts off the lines written after,
which the resumed run emits again (``load_state_dict``), so no packet is in the file twice.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict, ParseDict

from esper_core.errors import EsperError

if TYPE_CHECKING:
    from esper_core.leyline import TelemetryPacket


class JsonlError(EsperError):
    """A JSON-lines telemetry file is damaged somewhere other than a torn last line."""


class JsonlSink:
    """Appends one JSON line per packet to ``path`` (created with its parent directories)."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Read access only to find a torn tail; every write goes to the end (O_APPEND).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            #: Bytes of a torn last line cut off when the file was opened (left by a crash of an earlier writer).
            self.repaired_bytes = _cut_torn_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def emit(self, packet: TelemetryPacket) -> None:
        line = (json.dumps(MessageToDict(packet), separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"the jsonl sink writing {self.path} is closed")
            _write_all(self._fd, line)

    def flush(self) -> None:
        """Nothing is buffered in the process; with ``fsync`` the lines also reach the disk before this returns."""
        with self._lock:
            if self._fd is not None and self.fsync:
                os.fsync(self._fd)

    def state_dict(self) -> dict[str, Any]:
        """Where the file ends now (every line emitted so far is whole in it): what a checkpoint remembers."""
        with self._lock:
            if self._fd is None:
                raise ValueError(f"the jsonl sink writing {self.path} is closed")
            return {"bytes": os.fstat(self._fd).st_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a checkpoint: cut off the lines written after it (a resumed or rolled-back run emits them
        again), so the file never holds a packet twice. A file shorter than the checkpoint remembers is left as it
        is (it was replaced or cut by hand; nothing here is worth refusing to train over)."""
        size = int(state["bytes"])
        with self._lock:
            if self._fd is None:
                raise ValueError(f"the jsonl sink writing {self.path} is closed")
            if os.fstat(self._fd).st_size > size:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)

    def close(self) -> None:
        """Flush and close; closing again does nothing."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}{', closed' if self.closed else ''})"


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` call per line; a regular file takes it whole unless the disk is full or a signal cuts in, and
    only then is the rest written by further calls."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut_torn_tail(fd: int) -> int:
    """Truncate the file behind ``fd`` after its last newline (a torn line from a crash); return the bytes cut."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    chunk = 64 * 1024
    end = size
    while end > 0:
        start = max(0, end - chunk)
        data = os.pread(fd, end - start, start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    if keep < size:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return size - keep


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every packet of a JSON-lines telemetry file, as dicts, in the order written.

    A torn last line (a crash while it was being written) is skipped; a damaged line anywhere else raises
    :class:`JsonlError` naming the file and the line.
    """
    file = Path(path)
    data = file.read_bytes()
    lines = data.split(b"\n")
    # After the final newline comes either nothing or a torn line.
    tail = lines.pop()
    entries: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise JsonlError(f"{file}, line {number}: not a JSON line ({error}); the file is damaged") from None
        if not isinstance(entry, dict):
            raise JsonlError(f"{file}, line {number}: expected a JSON object, found {type(entry).__name__}")
        entries.append(entry)
    if tail.strip():
        # A line cut before its newline is whole only if it still parses as an object: a truncated object never does.
        try:
            entry = json.loads(tail)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return entries
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def read_packets(path: str | Path) -> list[TelemetryPacket]:
    """Every packet of a JSON-lines telemetry file, parsed back into ``TelemetryPacket`` messages."""
    from esper_core.leyline import TelemetryPacket

    return [ParseDict(entry, TelemetryPacket(), ignore_unknown_fields=True) for entry in read_jsonl(path)]
