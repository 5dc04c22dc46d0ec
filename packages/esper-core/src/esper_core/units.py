"""Quantities shown to people (the run's summary, the report), formatted the same way everywhere; no torch needed."""

from __future__ import annotations

from collections.abc import Sequence

#: SI prefixes for FLOP counts, largest first.
_PREFIXES = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0))


def format_flops(total: float, parts: Sequence[tuple[str, float]] = ()) -> str:
    """A FLOP count with an SI prefix, and its parts in the same unit: ``4.21 TFLOP (training 3.9, validation
    0.12)``."""
    prefix, scale = next(((p, s) for p, s in _PREFIXES if abs(total) >= s), _PREFIXES[-1])
    text = f"{total / scale:.3g} {prefix}FLOP"
    if parts:
        text += " (" + ", ".join(f"{name} {value / scale:.3g}" for name, value in parts) + ")"
    return text
