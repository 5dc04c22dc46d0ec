"""The in-memory snapshot of fast rollback: a deep copy that later training cannot touch, restored as a fresh copy
each time, and not taken beyond its memory cap."""

from __future__ import annotations

import torch

from esper_core.tolaria.snapshot import MemorySnapshot, state_bytes


def test_the_snapshot_is_a_copy_the_run_cannot_change_and_each_restore_is_fresh() -> None:
    weights = torch.ones(4)
    state = {"model": {"w": weights}, "history": {"epoch": 3, "losses": [0.5]}, "rng": (torch.zeros(2),)}
    snapshot = MemorySnapshot.take(state, max_bytes=1 << 20)
    assert snapshot is not None and snapshot.nbytes == 4 * 4 + 2 * 4
    weights.add_(1.0)  # training goes on in place
    state["history"]["losses"].append(0.4)
    restored = snapshot.state()
    assert torch.equal(restored["model"]["w"], torch.ones(4)) and restored["history"]["losses"] == [0.5]
    restored["model"]["w"].add_(5.0)  # a restored run trains on
    assert torch.equal(snapshot.state()["model"]["w"], torch.ones(4)), "a second rollback finds it as it was"


def test_a_state_beyond_the_cap_or_a_cap_of_zero_keeps_no_snapshot() -> None:
    state = {"model": {"w": torch.zeros(1024)}}
    assert state_bytes(state) == 4096
    assert MemorySnapshot.take(state, max_bytes=4095) is None
    assert MemorySnapshot.take(state, max_bytes=0) is None
    assert MemorySnapshot.take(state, max_bytes=4096) is not None
