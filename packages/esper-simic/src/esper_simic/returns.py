"""The two recursions every return estimate over one episode is made of (GAE, V-trace)."""

from __future__ import annotations

import torch

__all__ = ["discounted_backward", "shifted"]


def shifted(values: torch.Tensor, bootstrap: float) -> torch.Tensor:
    """``values[t + 1]`` for every step ``t``, with ``bootstrap`` after the last (0 for an episode that ended)."""
    return torch.cat([values[1:], torch.tensor([float(bootstrap)], dtype=values.dtype)])


def discounted_backward(terms: torch.Tensor, decay: torch.Tensor | float) -> torch.Tensor:
    """``out[t] = terms[t] + decay[t] * out[t + 1]`` (``out`` is 0 after the last step); ``decay`` per step or one."""
    factors = torch.as_tensor(decay, dtype=terms.dtype).expand_as(terms)
    out = torch.zeros_like(terms)
    running = 0.0
    for step in range(len(terms) - 1, -1, -1):
        running = float(terms[step]) + float(factors[step]) * running
        out[step] = running
    return out
