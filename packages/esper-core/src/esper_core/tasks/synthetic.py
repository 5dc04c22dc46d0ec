"""The ``synthetic`` task: a small, seeded classification problem for fast tests and demonstrations.

Inputs are ``features``-dimensional Gaussian points; the label is decided by a fixed random two-layer network, so the
problem is learnable but not linear. With ``shape = "image"`` the inputs are reshaped to ``1 x side x side`` images
for the conv host. Nothing is downloaded; the same seed always gives the same data.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative
from esper_core.protocols import TaskData
from esper_core.tasks import checks


@section("run.synthetic")
@attrs.frozen
class SyntheticOptions:
    #: Training examples, before the validation split (``run.validation_fraction``) takes its share.
    samples: int = attrs.field(default=2048, validator=at_least(2))
    #: Test examples, for the final test accuracy (0: no test set).
    test_samples: int = attrs.field(default=512, validator=not_negative)
    #: Input width (for images, a square number: 64 gives 8x8 images).
    features: int = attrs.field(default=16, validator=at_least(1))
    classes: int = attrs.field(default=4, validator=at_least(2))
    host: Literal["mlp", "cnn"] = "mlp"
    widths: list[int] = attrs.field(factory=lambda: [16, 16], validator=checks.widths)
    slots: list[str] = attrs.Factory(list)
    #: Seed of the data (independent of the run's seed, so runs with different seeds share the data).
    data_seed: int = 1234

    def __attrs_post_init__(self) -> None:
        if self.host != "cnn":
            return
        side = math.isqrt(self.features)
        if side * side != self.features:
            raise ValueError(
                f"features ({self.features}) must be a square number with host = 'cnn': the inputs become "
                f"1 x side x side images (16 gives 4x4, 64 gives 8x8)"
            )
        if checks.pooled_side(side, len(self.widths), "gap") < 1:
            fit = checks.most_blocks(side, "gap")
            raise ValueError(
                f"widths ({len(self.widths)} conv blocks) is too many for features = {self.features}: every block "
                f"but the last halves the {side}x{side} image, so at most {fit} fit; give fewer widths or more "
                "features"
            )


class SyntheticTask:
    name = "synthetic"

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()  # the options check themselves (features, widths)

    def build_model(self) -> Any:
        from esper_core.tasks.hosts import ConvHost, MlpHost

        o = self.options
        if o.host == "cnn":
            return ConvHost(1, o.widths, o.classes, side=round(o.features**0.5), head="gap")
        return MlpHost(o.features, o.widths, o.classes)

    def slot_points(self) -> list[str]:
        if self.options.slots:
            model = checks.built_aside(self.build_model)
            return checks.check_slot_points("run.synthetic.slots", self.options.slots, model)
        return list(self.build_model().slot_points())

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
        tested = o.test_samples > 0
        return TaskData(
            train_inputs=inputs[: o.samples],
            train_targets=targets[: o.samples],
            test_inputs=inputs[o.samples :] if tested else None,
            test_targets=targets[o.samples :] if tested else None,
        )

    def loss(self, outputs: Any, targets: Any) -> Any:
        from torch.nn import functional

        return functional.cross_entropy(outputs, targets)

    def correct(self, outputs: Any, targets: Any) -> Any:
        return (outputs.argmax(dim=1) == targets).sum()
