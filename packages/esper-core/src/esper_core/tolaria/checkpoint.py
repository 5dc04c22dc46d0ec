"""Checkpoints: everything a run needs to continue exactly, written atomically at each epoch's end.

A checkpoint holds the model with its slots (their stages, alphas, embargoes and seed weights travel in the model's
``state_dict``), the optimizer, the seed executor's and the controller's state, the RNG state, the loop's own
history, and how long the run record was. It is one ``torch.save`` file written with the core atomic write, loaded
with ``weights_only=True``; ``latest`` names the newest one, so a crash at any moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from esper_core.storage import atomic_write_bytes, atomic_write_text

DIRECTORY = "checkpoints"
LATEST = "latest"


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save_checkpoint(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    directory = run_dir / DIRECTORY
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = directory / checkpoint_name(epoch)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(directory / LATEST, path.name + "\n")
    checkpoints = sorted(directory.glob("epoch-*.pt"))
    for stale in checkpoints[:-keep]:
        stale.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / DIRECTORY / LATEST
    if not pointer.exists():
        return None
    path = run_dir / DIRECTORY / pointer.read_text().strip()
    return path if path.exists() else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
