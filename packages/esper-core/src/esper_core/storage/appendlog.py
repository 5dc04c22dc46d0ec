"""An append-only log of length-prefixed, checksummed records that survives a crash at any byte.

Record layout (little-endian)::

    magic (4 bytes) | length (u32) | payload CRC32 (u32) | header CRC32 over the previous 12 bytes (u32) | payload

The reader walks records from the start. A record whose header or payload checksum fails, or that runs past the
end of the file, is skipped by scanning forward for the next magic whose header checksum is valid; so a torn tail
loses only the record being written, and a corrupted byte loses only the record that contains it. Every whole,
intact record is recovered.

On opening for append, a torn tail after the last intact record is cut off, so new records follow good ones.

A known limit of any format that resynchronizes on a marker: if a payload itself contains a complete encoded record
and the outer record is damaged, the reader returns the inner one. Esper's logs hold protobuf messages, which never
embed encoded log records.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

from esper_core.storage.atomic import fsync_directory

MAGIC = b"\xe5\x5e\x1a\x0b"
_FIELDS = struct.Struct("<II")
_CRC = struct.Struct("<I")
HEADER_SIZE = len(MAGIC) + _FIELDS.size + _CRC.size
#: Records larger than this are refused (and a header claiming more is treated as corrupt).
MAX_RECORD_BYTES = 64 * 1024 * 1024


def encode_record(payload: bytes) -> bytes:
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"a log record holds at most {MAX_RECORD_BYTES} bytes, got {len(payload)}")
    fields = MAGIC + _FIELDS.pack(len(payload), zlib.crc32(payload))
    return fields + _CRC.pack(zlib.crc32(fields)) + payload


@attrs.frozen
class LogScan:
    """What a scan found: the intact records, where the last one ends, and how many bytes were unreadable."""

    records: list[bytes]
    end_of_last_record: int
    skipped_bytes: int
    #: Where the first unreadable byte is (``None`` when every byte belongs to an intact record).
    first_damage: int | None = None

    @property
    def intact_prefix(self) -> int:
        """How many bytes from the start are whole, intact records (up to the first damage)."""
        return self.end_of_last_record if self.first_damage is None else self.first_damage


def _header_at(data: bytes, offset: int) -> tuple[int, int] | None:
    """(length, payload CRC) of a valid header at ``offset``, or None."""
    if offset + HEADER_SIZE > len(data) or data[offset : offset + 4] != MAGIC:
        return None
    fields = data[offset : offset + 12]
    (header_crc,) = _CRC.unpack_from(data, offset + 12)
    if zlib.crc32(fields) != header_crc:
        return None
    length, payload_crc = _FIELDS.unpack_from(data, offset + 4)
    if length > MAX_RECORD_BYTES:
        return None
    return length, payload_crc


def scan(data: bytes) -> LogScan:
    records: list[bytes] = []
    offset = 0
    end_of_last = 0
    skipped = 0
    first_damage: int | None = None
    while offset < len(data):
        header = _header_at(data, offset)
        if header is not None:
            length, payload_crc = header
            start = offset + HEADER_SIZE
            payload = data[start : start + length]
            if len(payload) == length and zlib.crc32(payload) == payload_crc:
                records.append(payload)
                offset = start + length
                end_of_last = offset
                continue
        if first_damage is None:
            first_damage = offset
        next_magic = data.find(MAGIC, offset + 1)
        resume = len(data) if next_magic < 0 else next_magic
        skipped += resume - offset
        offset = resume
    return LogScan(records, end_of_last, skipped, first_damage)


def read_records(path: str | Path) -> list[bytes]:
    """Every intact record of the log at ``path`` (an empty list if it does not exist)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return scan(data).records


class AppendOnlyLog:
    """Appends records to a file; ``sync=True`` fsyncs each append so a record is durable once append returns."""

    def __init__(self, path: str | Path, *, sync: bool = True) -> None:
        self.path = Path(path)
        self.sync = sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        data = b"" if created else self.path.read_bytes()
        found = scan(data)
        #: Bytes of a torn tail that were cut off when the log was opened.
        self.repaired_bytes = len(data) - found.end_of_last_record
        self.record_count = len(found.records)
        #: The byte offset where the next record will start (a position that survives damage before it).
        self.end_offset = found.end_of_last_record
        self._handle: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - held open for the log's lifetime
        if self.repaired_bytes:
            self._handle.truncate(found.end_of_last_record)
            self._fsync()
        if created:
            fsync_directory(self.path.parent)

    def append(self, payload: bytes) -> None:
        encoded = encode_record(payload)
        self._handle.write(encoded)
        self._handle.flush()
        if self.sync:
            self._fsync()
        self.record_count += 1
        self.end_offset += len(encoded)

    def records(self) -> Iterator[bytes]:
        yield from read_records(self.path)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            self._fsync()
            self._handle.close()

    def __enter__(self) -> AppendOnlyLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fsync(self) -> None:
        os.fsync(self._handle.fileno())
