"""The ``example-csv`` telemetry sink (``nissa.sinks = [..., "example-csv"]``, options in ``[nissa.example-csv]``):
one CSV row per metric of every telemetry packet, for a spreadsheet or ``pandas.read_csv``.

Columns: ``timestamp`` (the packet's, RFC 3339, empty if it has none), ``epoch``, ``global_step``, ``source`` (the
subsystem that sent it), ``metric``, ``value`` and ``unit``. A packet without metrics writes no row; events and
spans are left to sinks that keep whole packets (``jsonl``).

The file is opened for appending, so a resumed run adds to it; the header is written only into an empty file.
Rows are buffered by Python between decision points; ``flush()`` (Tolaria calls it at every decision point) hands
them to the operating system, and with ``fsync = true`` waits until they are on disk.
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import attrs
from esper_core.config import section

if TYPE_CHECKING:
    from esper_core.leyline import TelemetryPacket

COLUMNS = ("timestamp", "epoch", "global_step", "source", "metric", "value", "unit")


@section("nissa.example-csv")
@attrs.frozen
class CsvSinkOptions:
    """``[nissa.example-csv]``."""

    #: The CSV file, relative to the run directory, or absolute.
    path: str = "telemetry.csv"
    #: Also fsync the file at every flush (slower; survives a power cut, not just a crash of the run).
    fsync: bool = False


class CsvSink:
    """Appends one row per metric to ``path`` (created with its parent directories). Safe to call from several
    threads; ``close()`` flushes and may be called again."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if self._file.tell() == 0:
            self._writer.writerow(COLUMNS)
        #: Rows written by this sink (the header not counted).
        self.rows = 0

    @property
    def closed(self) -> bool:
        return self._file is None

    def emit(self, packet: TelemetryPacket) -> None:
        timestamp = packet.timestamp.ToJsonString() if packet.HasField("timestamp") else ""
        source, epoch, step = packet.source_subsystem, packet.epoch, packet.global_step
        rows = [(timestamp, epoch, step, source, metric.name, metric.value, metric.unit) for metric in packet.metrics]
        with self._lock:
            if self._file is None:
                raise ValueError(f"the example-csv sink writing {self.path} is closed")
            self._writer.writerows(rows)
            self.rows += len(rows)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._flush(self._file)

    def close(self) -> None:
        with self._lock:
            file, self._file = self._file, None
            if file is None:
                return
            try:
                self._flush(file)
            finally:
                file.close()

    def _flush(self, file: TextIO) -> None:
        file.flush()
        if self.fsync:
            os.fsync(file.fileno())

    def __repr__(self) -> str:
        return f"CsvSink({str(self.path)!r}{', closed' if self.closed else ''})"
