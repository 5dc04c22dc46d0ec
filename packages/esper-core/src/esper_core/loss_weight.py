"""The weight of the loss a training step's backward pass starts from, for modules that add gradient terms of their
own inside the backward pass (Kasmina's TRAINING pull: ``esper_kasmina.slot``).

A training step's gradient is that of the optimizer batch's *mean* loss. When Tolaria accumulates micro-batches, each
micro-batch's mean loss is multiplied by its share of the batch (``m / n``); under fp16 the loss is also multiplied by
the gradient scaler's scale. A term a module adds to a gradient in its own ``backward`` (rather than through the loss)
must be multiplied by the same weight, or accumulation would count it once per micro-batch and fp16 would shrink it
by the scale. Tolaria sets the weight around each micro-batch's forward pass; a module reads it in its forward pass
and keeps it for its backward. Outside a training step (probes, validation, tests) it is 1.

The weight is a float, or under fp16 a scalar tensor on the device (the scale, never read back to the host).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["loss_weight", "weighted_loss"]

_WEIGHT: ContextVar[float | torch.Tensor] = ContextVar("esper_loss_weight", default=1.0)


def loss_weight() -> float | torch.Tensor:
    """The weight of the loss whose forward pass is running (1.0 outside a weighted one)."""
    return _WEIGHT.get()


@contextmanager
def weighted_loss(weight: float | torch.Tensor) -> Iterator[None]:
    """Run a forward pass whose loss will be multiplied by ``weight`` before its backward pass."""
    token = _WEIGHT.set(weight)
    try:
        yield
    finally:
        _WEIGHT.reset(token)
