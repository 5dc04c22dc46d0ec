"""What the Simic tests share (on pytest's pythonpath)."""

from __future__ import annotations

#: A quick training ground: small synthetic MLP runs of ten-odd epochs, a second or two each: long enough that the
#: heuristic grows in every one (it waits for warm-up and for enough epochs left).
GROUND = [
    'simic.ground.families=["synthetic-mlp"]',
    "simic.ground.widths=[3, 4]",
    "simic.ground.blocks=[1, 2]",
    "simic.ground.epochs=[10, 12]",
    "simic.ground.samples=512",
    "simic.workers=2",
]
