"""Alpha schedules: how a BLENDING seed's weight ramps from 0 to 1.

All take the progress ``t`` in [0, 1] (ramp steps done over ramp length) and give alpha in [0, 1]. They are
computed in-graph from a step counter on the device, so advancing alpha per optimizer step costs no host sync.

- linear: ``t``
- cosine: ``(1 - cos(pi t)) / 2``
- tanh (the prototype's ramp, scale-free): ``(1 + tanh(5 (t - 1/2))) / 2``; with 20 steps this is exactly the
  prototype's ``1/2 (1 + tanh((step - 10) / 4))``: 0.5 at the middle, 0.993 at the end.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias

from esper_core.leyline import BlendSchedule

if TYPE_CHECKING:
    import torch

Schedule: TypeAlias = BlendSchedule.ValueType

UNSPECIFIED = BlendSchedule.BLEND_SCHEDULE_UNSPECIFIED
LINEAR = BlendSchedule.BLEND_SCHEDULE_LINEAR
COSINE = BlendSchedule.BLEND_SCHEDULE_COSINE
TANH = BlendSchedule.BLEND_SCHEDULE_TANH
TANH_SHARPNESS = 5.0

BY_NAME: dict[str, Schedule] = {"linear": LINEAR, "cosine": COSINE, "tanh": TANH}


def alpha_at(schedule: Schedule, progress: float) -> float:
    """Alpha for ``progress`` in [0, 1] (clamped)."""
    t = min(max(progress, 0.0), 1.0)
    if schedule == LINEAR:
        return t
    if schedule == COSINE:
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if schedule == TANH:
        return 0.5 * (1.0 + math.tanh(TANH_SHARPNESS * (t - 0.5)))
    raise ValueError(f"unknown blend schedule {schedule}")


def alpha_tensor(schedule: Schedule, steps: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """The same as :func:`alpha_at`, computed on the device from a step-counter tensor."""
    import torch

    t = steps.clamp(0, total).to(dtype) / float(max(total, 1))
    if schedule == LINEAR:
        return t
    if schedule == COSINE:
        return 0.5 * (1.0 - torch.cos(math.pi * t))
    if schedule == TANH:
        return 0.5 * (1.0 + torch.tanh(TANH_SHARPNESS * (t - 0.5)))
    raise ValueError(f"unknown blend schedule {schedule}")
