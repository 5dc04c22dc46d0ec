"""The torch module behind EX001. Imported only when a seed is built, so that loading the plugin stays cheap."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class GatedBottleneck(nn.Module):
    """``sigmoid(gate(h)) * up(h)`` with ``h = gelu(down(x))``, over the features (see :mod:`.catalog`).

    ``up`` starts at zero, so the first output is exactly zero and only ``up`` receives a gradient at first; once it
    moves, ``gate`` and ``down`` learn too.
    """

    def __init__(self, features: int, width: int, *, gate_bias: float, conv: bool) -> None:
        super().__init__()
        self.down = _layer(features, width, conv)
        self.gate = _layer(width, features, conv)
        self.up = _layer(width, features, conv)
        up_bias, gate_bias_vector = self.up.bias, self.gate.bias
        assert up_bias is not None and gate_bias_vector is not None  # every layer is built with a bias
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(up_bias)
        nn.init.constant_(gate_bias_vector, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = functional.gelu(self.down(x))
        gate: torch.Tensor = torch.sigmoid(self.gate(hidden))
        delta: torch.Tensor = self.up(hidden)
        return gate * delta


def _layer(inputs: int, outputs: int, conv: bool) -> nn.Linear | nn.Conv2d:
    """A linear map of the features: of the last dimension, or of the channels at every position (1x1)."""
    return nn.Conv2d(inputs, outputs, kernel_size=1) if conv else nn.Linear(inputs, outputs)
