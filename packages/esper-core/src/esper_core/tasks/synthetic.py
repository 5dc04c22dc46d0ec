"""The ``synthetic`` task: a small, seeded classification problem for fast tests and demonstrations.

Inputs are ``features``-dimensional Gaussian points; the label is decided by a fixed random two-layer network, so the
problem is learnable but not linear. With ``shape = "image"`` the inputs are reshaped to ``1 x side x side`` images
for the conv host. Nothing is downloaded; the same seed always gives the same data.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from esper_core.config import section
from esper_core.protocols import TaskData


@section("run.synthetic")
@attrs.frozen
class SyntheticOptions:
    samples: int = 2048
    test_samples: int = 512
    #: Input width (for images, a square number: 64 gives 8x8 images).
    features: int = 16
    classes: int = 4
    host: Literal["mlp", "cnn"] = "mlp"
    widths: list[int] = attrs.Factory(lambda: [16, 16])
    slots: list[str] = attrs.Factory(list)
    #: Seed of the data (independent of the run's seed, so runs with different seeds share the data).
    data_seed: int = 1234


class SyntheticTask:
    name = "synthetic"

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()
        if self.options.host == "cnn":
            side = round(self.options.features**0.5)
            if side * side != self.options.features:
                raise ValueError(f"run.synthetic.features = {self.options.features}: a cnn host needs a square number")

    def build_model(self) -> Any:
        from esper_core.tasks.hosts import ConvHost, MlpHost

        o = self.options
        if o.host == "cnn":
            return ConvHost(1, o.widths, o.classes, side=round(o.features**0.5), head="gap")
        return MlpHost(o.features, o.widths, o.classes)

    def slot_points(self) -> list[str]:
        return list(self.options.slots) or list(self.build_model().slot_points())

    def data(self) -> TaskData:
        import torch

        o = self.options
        generator = torch.Generator().manual_seed(o.data_seed)
        total = o.samples + o.test_samples
        inputs = torch.randn(total, o.features, generator=generator)
        teacher_in = torch.randn(o.features, 32, generator=generator)
        teacher_out = torch.randn(32, o.classes, generator=generator)
        targets = (torch.tanh(inputs @ teacher_in) @ teacher_out).argmax(dim=1)
        if o.host == "cnn":
            side = round(o.features**0.5)
            inputs = inputs.view(total, 1, side, side)
        return TaskData(
            train_inputs=inputs[: o.samples],
            train_targets=targets[: o.samples],
            test_inputs=inputs[o.samples :],
            test_targets=targets[o.samples :],
        )

    def loss(self, outputs: Any, targets: Any) -> Any:
        from torch.nn import functional

        return functional.cross_entropy(outputs, targets)

    def correct(self, outputs: Any, targets: Any) -> Any:
        return (outputs.argmax(dim=1) == targets).sum()
