"""Fast rollback: the newest checkpoint's state also kept in memory, so a rollback does not read it back from disk.

Every checkpoint Tolaria writes is also copied into a :class:`MemorySnapshot` (a deep copy: the live model and
optimizer keep changing after it), when it fits ``tolaria.fast_rollback_max_mb``. A rollback restores from the
snapshot when the run record still agrees with it, and from disk otherwise (no snapshot yet, as after a resume; a
state too large to keep; a record cut behind it). Both restore exactly the same state: the snapshot holds the very
dictionary the checkpoint file was written from, and restoring copies it again, so the snapshot stays as it was for
a second rollback. The tier each rollback used is recorded (``rollback`` entries, ``tier``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs
import torch

__all__ = ["MemorySnapshot", "state_bytes"]


def state_bytes(value: Any) -> int:
    """The bytes of every tensor in a (nested) state: what a snapshot of it costs in memory."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, Mapping):
        return sum(state_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(item) for item in value)
    return 0


@attrs.frozen
class MemorySnapshot:
    """A checkpoint's state, copied; :meth:`state` gives a fresh copy to restore from."""

    held: dict[str, Any]
    nbytes: int

    @classmethod
    def take(cls, state: dict[str, Any], max_bytes: int) -> MemorySnapshot | None:
        """A copy of ``state``, or None when its tensors take more than ``max_bytes`` (0: never)."""
        size = state_bytes(state)
        if max_bytes <= 0 or size > max_bytes:
            return None
        return cls(copy.deepcopy(state), size)

    def state(self) -> dict[str, Any]:
        held: dict[str, Any] = copy.deepcopy(self.held)
        return held
