"""Host models for the built-in tasks, with named modules for seed slots.

``ConvHost``: ``blocks.{i}`` are convolution blocks (conv 3x3, ReLU, 2x2 max-pool), then a head of one of two
kinds. ``flatten`` (the default) flattens the last block's feature map into a linear layer: the spatial detail
reaches the classifier, so a narrow host is accurate but clearly under capacity, and widening its blocks (or
growing seeds in them) pays. ``gap`` averages each channel over space first (no pool after the last block):
fewer head parameters, but a narrow host loses much more. Residual slot points: ``blocks.{i}`` (conv activations)
and ``pool`` (the vector the linear head reads). Width slot points, one per block, grow new channels in block ``i``:
``blocks.{i}:input->blocks.{i+1}.0`` (they read what enters the block and write into the next block's convolution,
before its activation) and, for the last block, ``blocks.{i}:input->head`` (into the logits).

``MlpHost``: ``layers.{i}`` are linear + ReLU layers; residual slot points ``layers.{i}`` (vectors), width slot points
``layers.{i}:input->layers.{i+1}.0`` and ``layers.{last}:input->head`` (new neurons in layer ``i``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

ConvHead = Literal["flatten", "gap"]


class ConvHost(nn.Module):
    def __init__(
        self, in_channels: int, widths: Sequence[int], classes: int, *, side: int = 28, head: ConvHead = "flatten"
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("a conv host needs at least one block width")
        if head not in ("flatten", "gap"):
            raise ValueError(f"unknown conv head {head!r}: choose 'flatten' or 'gap'")
        blocks = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if head == "flatten" or index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            blocks.append(nn.Sequential(*layers))
            channels = width
        if side < 1:
            raise ValueError(f"{len(widths)} pooled blocks shrink the image to nothing: use fewer widths")
        self.blocks = nn.Sequential(*blocks)
        if head == "flatten":
            self.pool = nn.Sequential(nn.Flatten())
            features = channels * side * side
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = channels
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.head(self.pool(self.blocks(x)))
        return output

    def slot_points(self) -> list[str]:
        return [f"blocks.{index}" for index in range(len(self.blocks))] + ["pool"] + self.width_points()

    def width_points(self) -> list[str]:
        """New channels in each block: read what enters it, write into what reads its output."""
        last = len(self.blocks) - 1
        return [
            f"blocks.{index}:input->" + (f"blocks.{index + 1}.0" if index < last else "head")
            for index in range(len(self.blocks))
        ]


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
        return [f"layers.{index}" for index in range(len(self.layers))] + self.width_points()

    def width_points(self) -> list[str]:
        """New neurons in each hidden layer: read what enters it, write into what reads its output."""
        last = len(self.layers) - 1
        return [
            f"layers.{index}:input->" + (f"layers.{index + 1}.0" if index < last else "head")
            for index in range(len(self.layers))
        ]
