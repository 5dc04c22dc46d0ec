"""The run record: every epoch's metrics, every command and its result, every lifecycle transition with its gate
results, every field report, rollback and the final summary, as JSON objects in the core append-only log.

A resumed run cuts the record back to what its checkpoint had seen, so an interrupted run and an uninterrupted one
end with the same record. Checkpoints remember the record's position as a byte offset (not a count of entries, which
a damaged entry would shift), and a resume checks that everything before that offset is intact
(:meth:`RunRecord.check_before`): a damaged tail sends the resume to an older checkpoint the record still agrees
with; damage with intact entries after it is an error naming the offset. ``esper report`` and :func:`read_record`
read it.

Every entry is durable (fsynced) once it is written. The entries of one decision point are written together at its
end (:meth:`RunRecord.batch`), with one fsync for all of them instead of one each: on a loaded disk an fsync costs
milliseconds, and a decision point writes several entries. Nothing is lost by it: the checkpoint that follows the
decision point is written after the batch, and a resume cuts the record back to that checkpoint anyway.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from esper_core.errors import EsperError
from esper_core.storage import AppendOnlyLog, atomic_write_bytes, read_records
from esper_core.storage.appendlog import encode_record, scan

RECORD_FILE = "record.log"


MessageT = TypeVar("MessageT", bound=Message)


def encode_message(message: Message) -> str:
    """A protobuf message as a record stores it: its serialized bytes in base64 (exact, schema-evolvable)."""
    return base64.b64encode(message.SerializeToString()).decode("ascii")


def decode_message(text: str, message_type: type[MessageT]) -> MessageT:
    """The message :func:`encode_message` stored; ``ValueError`` naming the type when it does not parse."""
    message = message_type()
    try:
        message.ParseFromString(base64.b64decode(text, validate=True))
    except (ValueError, DecodeError) as error:
        raise ValueError(f"a run record's {message_type.__name__} does not decode: {error}") from None
    return message


def read_record(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a run record (a run directory or the record file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / RECORD_FILE
    return [json.loads(raw) for raw in read_records(file)]


#: Told of entries once they are durable: each one's byte offset in the record and its bytes, in order.
WrittenListener = Callable[[Sequence[tuple[int, bytes]]], None]


class RunRecord:
    def __init__(self, path: Path, *, on_written: WrittenListener | None = None) -> None:
        self.path = path
        self.log = AppendOnlyLog(path)
        #: Entries held back by :meth:`batch` (None outside a batch).
        self._pending: list[bytes] | None = None
        #: Told of every entry once it is durable (``tolaria.publish_record``'s bus mirror).
        self.on_written = on_written

    def __len__(self) -> int:
        return self.log.record_count + len(self._pending or ())

    @property
    def end_offset(self) -> int:
        """Where the next entry will start: the position a checkpoint remembers (entries a batch holds included)."""
        return self.log.end_offset + sum(len(encode_record(payload)) for payload in self._pending or ())

    def append(self, kind: str, **fields: Any) -> None:
        entry = {"kind": kind, **fields}
        payload = json.dumps(entry, sort_keys=True, default=_plain).encode("utf-8")
        if self._pending is not None:
            self._pending.append(payload)
        else:
            self._write([payload])

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the entries appended inside back and write them when it ends (also on an error), made durable by a
        single fsync. Nested batches write with the outermost one."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            self._write(pending)

    def _write(self, payloads: list[bytes]) -> None:
        # An fsync makes everything written to the file before it durable: only the last append needs one.
        written: list[tuple[int, bytes]] = []
        try:
            for index, payload in enumerate(payloads):
                self.log.sync = index == len(payloads) - 1
                offset = self.log.end_offset
                self.log.append(payload)
                written.append((offset, payload))
        finally:
            self.log.sync = True
        if self.on_written is not None and written:
            self.on_written(written)

    def entries(self) -> list[dict[str, Any]]:
        return read_record(self.path)

    def check_before(self, offset: int) -> str | None:
        """``None`` when the first ``offset`` bytes are whole, intact entries; otherwise why they are not.

        :raises RecordDamaged: when entries are damaged and intact ones follow (the middle of the record, which no
            checkpoint can recover from).
        """
        found = scan(self.path.read_bytes() if self.path.exists() else b"")
        if found.first_damage is not None and found.end_of_last_record > found.first_damage:
            raise RecordDamaged(
                f"the run record {self.path} is damaged at byte {found.first_damage}, with intact entries after it; "
                "the run cannot be resumed consistently. Restore the file from a backup, or start the run again "
                "under another name (--set run.name=...)"
            )
        if found.intact_prefix < offset:
            return (
                f"the run record is intact only up to byte {found.intact_prefix}, but this checkpoint was taken at "
                f"byte {offset}"
            )
        return None

    def cut_to(self, offset: int) -> None:
        """Keep only the entries before byte ``offset`` (rewritten atomically), e.g. back to a checkpoint."""
        self.log.close()
        data = self.path.read_bytes() if self.path.exists() else b""
        atomic_write_bytes(self.path, data[:offset])
        self.log = AppendOnlyLog(self.path)

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries (checkpoints written before positions were byte offsets)."""
        self.log.close()
        kept = read_records(self.path)[:count]
        atomic_write_bytes(self.path, b"".join(encode_record(record) for record in kept))
        self.log = AppendOnlyLog(self.path)

    def close(self) -> None:
        self.log.close()


class RecordDamaged(EsperError):
    """A run record damaged where no checkpoint can recover from it."""


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
