"""Host models for the built-in tasks, with named modules for seed slots.

``ConvHost``: ``blocks.{i}`` are convolution blocks (conv 3x3, ReLU, then 2x2 max-pool for all but the last), the
head is global average pooling and a linear layer. Its capacity is set by its channel widths, which is what makes
growth measurable: a narrow host is clearly under capacity. Slot points: ``blocks.{i}`` (conv activations) and
``pool`` (the pooled vector).

``MlpHost``: ``layers.{i}`` are linear + ReLU layers; slot points ``layers.{i}`` (vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvHost(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], classes: int) -> None:
        super().__init__()
        if not widths:
            raise ValueError("a conv host needs at least one block width")
        blocks = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.head(self.pool(self.blocks(x)))
        return output

    def slot_points(self) -> list[str]:
        return [f"blocks.{index}" for index in range(len(self.blocks))] + ["pool"]


class MlpHost(nn.Module):
    def __init__(self, features: int, widths: Sequence[int], classes: int) -> None:
        super().__init__()
        if not widths:
            raise ValueError("an MLP host needs at least one hidden width")
        layers = []
        previous = features
        for width in widths:
            layers.append(nn.Sequential(nn.Linear(previous, width), nn.ReLU()))
            previous = width
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(previous, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.head(self.layers(self.flatten(x)))
        return output

    def slot_points(self) -> list[str]:
        return [f"layers.{index}" for index in range(len(self.layers))]
