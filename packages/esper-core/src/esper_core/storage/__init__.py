"""Durable files: atomic writes and a crash-safe append-only log (ARCHITECTURE.md section 9)."""

from esper_core.storage.appendlog import AppendOnlyLog, LogScan, read_records
from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries

__all__ = [
    "AppendOnlyLog",
    "LogScan",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_records",
    "remove_stale_temporaries",
]
