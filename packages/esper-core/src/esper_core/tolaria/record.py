"""The run record: every epoch's metrics, every command and its result, every lifecycle transition with its gate
results, every field report, rollback and the final summary, as JSON objects in the core append-only log.

A resumed run cuts the record back to what its checkpoint had seen, so an interrupted run and an uninterrupted one
end with the same record. ``esper report`` and :func:`read_record` read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esper_core.storage import AppendOnlyLog, atomic_write_bytes, read_records
from esper_core.storage.appendlog import encode_record

RECORD_FILE = "record.log"


def read_record(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a run record (a run directory or the record file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / RECORD_FILE
    return [json.loads(raw) for raw in read_records(file)]


class RunRecord:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = AppendOnlyLog(path)

    def __len__(self) -> int:
        return self.log.record_count

    def append(self, kind: str, **fields: Any) -> None:
        entry = {"kind": kind, **fields}
        self.log.append(json.dumps(entry, sort_keys=True, default=_plain).encode("utf-8"))

    def entries(self) -> list[dict[str, Any]]:
        return read_record(self.path)

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries (rewritten atomically), e.g. back to a checkpoint."""
        self.log.close()
        kept = read_records(self.path)[:count]
        atomic_write_bytes(self.path, b"".join(encode_record(record) for record in kept))
        self.log = AppendOnlyLog(self.path)

    def close(self) -> None:
        self.log.close()


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
