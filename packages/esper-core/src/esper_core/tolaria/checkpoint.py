"""Checkpoints: everything a run needs to continue exactly, written atomically at each epoch's end, checked on load.

A checkpoint holds the model with its slots (their stages, alphas, embargoes and seed weights travel in the model's
``state_dict``), the optimizer, the seed executor's and the controller's state, the RNG state, the loop's own
history, and where the run record ended (a byte offset). It is one file written with the core atomic write: a
header, the SHA-256 of the payload, and the payload (``torch.save``, loaded with ``weights_only=True``). torch does
not check its archive's CRCs, so without the digest a flipped byte inside a tensor would load silently and the run
would continue with different weights; with it, a damaged checkpoint is refused. ``latest`` names the newest one;
when it is damaged or missing, :func:`load_newest` falls back to the newest intact one and says what it skipped.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.errors import EsperError
from esper_core.storage import atomic_write_bytes, atomic_write_text

DIRECTORY = "checkpoints"
LATEST = "latest"
#: The first bytes of every checkpoint (files without it were written before checkpoints carried a digest).
MAGIC = b"ESPER-CHECKPOINT v1\n"
DIGEST_BYTES = 32


class DamagedCheckpoint(EsperError):
    """A checkpoint file whose bytes do not match its digest, or that cannot be read at all."""


@attrs.frozen
class Skipped:
    """A checkpoint passed over on resume, and why."""

    path: Path
    reason: str


@attrs.frozen
class Loaded:
    """The checkpoint a run resumes from, and the newer ones it had to skip."""

    path: Path
    state: dict[str, Any]
    skipped: list[Skipped]


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save_checkpoint(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    directory = run_dir / DIRECTORY
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = directory / checkpoint_name(epoch)
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)
    atomic_write_text(directory / LATEST, path.name + "\n")
    checkpoints = sorted(directory.glob("epoch-*.pt"))
    for stale in checkpoints[:-keep]:
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in ``path``, after checking its digest; :class:`DamagedCheckpoint` when it is damaged."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DamagedCheckpoint(f"checkpoint {path} cannot be read: {error}") from error
    if data.startswith(MAGIC):
        digest = data[len(MAGIC) : len(MAGIC) + DIGEST_BYTES]
        payload = data[len(MAGIC) + DIGEST_BYTES :]
        if len(digest) < DIGEST_BYTES or hashlib.sha256(payload).digest() != digest:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: its content does not match its SHA-256")
    else:
        payload = data  # written before checkpoints carried a digest: torch's own checks are all there is
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as error:
        raise DamagedCheckpoint(f"checkpoint {path} cannot be loaded: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"checkpoint {path} does not hold a run's state")
    return state


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to resume from, best first: the one ``latest`` names, then the others, newest epoch first."""
    directory = run_dir / DIRECTORY
    found = sorted(directory.glob("epoch-*.pt"), reverse=True)
    pointer = directory / LATEST
    try:
        named = directory / pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return found
    return [named, *(path for path in found if path != named)]


def load_newest(run_dir: Path, accept: Callable[[dict[str, Any]], str | None] | None = None) -> Loaded | None:
    """The newest checkpoint that is intact (and that ``accept`` does not refuse, by returning a reason).

    ``None`` when the run has no checkpoint at all. :class:`DamagedCheckpoint` naming each one when there are
    checkpoints but none can be used.
    """
    skipped: list[Skipped] = []
    for path in candidates(run_dir):
        if not path.exists():
            skipped.append(Skipped(path, "latest names it, but it does not exist"))
            continue
        try:
            state = load_checkpoint(path)
        except DamagedCheckpoint as error:
            skipped.append(Skipped(path, str(error)))
            continue
        problem = accept(state) if accept is not None else None
        if problem is not None:
            skipped.append(Skipped(path, problem))
            continue
        return Loaded(path, state, skipped)
    if skipped:
        reasons = "; ".join(f"{entry.path.name}: {entry.reason}" for entry in skipped)
        raise DamagedCheckpoint(
            f"{run_dir} has no usable checkpoint ({reasons}). Start the run again under another name "
            "(--set run.name=...), or restore its checkpoints directory from a backup"
        )
    return None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
