"""The training ground: short, real, randomised runs that make episodes cheap.

Each ground run is an ordinary ``esper run`` of a built-in task (the synthetic task, or a Fashion-MNIST subset) on a
host drawn at random: its family (MLP or CNN), the number and width of its blocks, which of its slot points are
offered (every one, the width slots only, or the residual slots only), the parameter budget and the number of epochs.
A run takes a few seconds on one CPU core. The plan is a pure function of ``(seed, index)``, so a collection that was
killed draws exactly the same runs when it starts again, and an evaluation on held-out configurations is reproducible.

Families (``[simic.ground] families``):

=====================  ========================================================================================
``synthetic-mlp``      the synthetic task (16 features, 4 classes), an MLP host (``layers.i``)
``synthetic-cnn``      the synthetic task as 8x8 images, a CNN host with global average pooling (``blocks.i``)
``fashion-mnist-cnn``  Fashion-MNIST (``train_limit`` training images), a CNN host with a flattened head
=====================  ========================================================================================

The budget is the controller's: the heuristic's and the learned policy's ``max_added_parameter_fraction`` are both
set to it, so every policy grows under the same parameter budget.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, positive

__all__ = ["FAMILIES", "GroundOptions", "GroundRun", "plan", "slot_points"]

FAMILIES = ("synthetic-mlp", "synthetic-cnn", "fashion-mnist-cnn")
SLOT_SETS = ("all", "width", "residual")


def _families(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[str]) -> None:
    unknown = [family for family in value if family not in FAMILIES]
    if not value or unknown:
        raise ValueError(
            f"{attribute.name} = {list(value)}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
            f"choose among {', '.join(FAMILIES)}"
        )


def _pair(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[float]) -> None:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"{attribute.name} = {list(value)}: give [lowest, highest], both positive, lowest first")


def _choices(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[Any]) -> None:
    if not value:
        raise ValueError(f"{attribute.name} is empty: give at least one value to draw from")


@section("simic.ground")
@attrs.frozen
class GroundOptions:
    """What the training ground draws its runs from (docs/simic.md)."""

    #: The synthetic MLP by default: seconds per run, and a narrow host there is far from what a wide one reaches
    #: (about 50% against 73% validation accuracy): room for growth to pay. (The synthetic CNN barely learns in a
    #: dozen epochs at any width, so its runs say little about growth.)
    families: list[str] = attrs.field(factory=lambda: ["synthetic-mlp"], validator=_families)
    #: Widths a block's width is drawn from (MLP units or CNN channels).
    widths: list[int] = attrs.field(factory=lambda: [2, 3, 4, 6, 8], validator=_choices)
    #: Numbers of blocks a host is drawn with.
    blocks: list[int] = attrs.field(factory=lambda: [1, 2, 3], validator=_choices)
    #: Which slot points are offered, drawn among ``all``, ``width`` (width slots only), ``residual``.
    slot_sets: list[str] = attrs.field(factory=lambda: list(SLOT_SETS), validator=_choices)
    #: Epochs, drawn uniformly in [lowest, highest].
    epochs: list[int] = attrs.field(factory=lambda: [10, 16], validator=_pair)
    #: The parameter budget (fraction of the host's parameters seeds may add), drawn uniformly in [lowest, highest].
    budgets: list[float] = attrs.field(factory=lambda: [0.5, 3.0], validator=_pair)
    #: Training examples of the synthetic task (before the validation split).
    samples: int = attrs.field(default=2048, validator=at_least(64))
    #: Training images of the Fashion-MNIST family.
    fashion_mnist_train_limit: int = attrs.field(default=3000, validator=at_least(64))
    batch_size: int = attrs.field(default=128, validator=positive)

    def __attrs_post_init__(self) -> None:
        bad = [name for name in self.slot_sets if name not in SLOT_SETS]
        if bad:
            raise ValueError(f"slot_sets: unknown {', '.join(bad)}; choose among {', '.join(SLOT_SETS)}")
        if any(width < 1 for width in self.widths) or any(count < 1 for count in self.blocks):
            raise ValueError("widths and blocks must be positive integers")


@attrs.frozen
class GroundRun:
    """One planned run: its name, what was drawn, and the ``esper run`` overrides that make it."""

    name: str
    family: str
    widths: tuple[int, ...]
    slot_set: str
    epochs: int
    budget: float
    seed: int
    overrides: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "widths": list(self.widths),
            "slot_set": self.slot_set,
            "epochs": self.epochs,
            "budget": self.budget,
            "seed": self.seed,
        }


def slot_points(family: str, blocks: int, slot_set: str) -> list[str]:
    """The built-in host's slot points of ``slot_set`` (docs/tolaria.md names them)."""
    prefix = "layers" if family == "synthetic-mlp" else "blocks"
    residual = [f"{prefix}.{i}" for i in range(blocks)]
    width = [f"{prefix}.{i}:input->{prefix}.{i + 1}.0" for i in range(blocks - 1)] + [
        f"{prefix}.{blocks - 1}:input->head"
    ]
    return {"all": residual + width, "width": width, "residual": residual}[slot_set]


def _task_overrides(family: str, widths: Sequence[int], slots: Sequence[str], options: GroundOptions) -> list[str]:
    quoted = "[" + ", ".join(f'"{slot}"' for slot in slots) + "]"
    if family == "fashion-mnist-cnn":
        return [
            "run.task=fashion-mnist",
            "run.fashion-mnist.host=cnn",
            f"run.fashion-mnist.widths={list(widths)}",
            "run.fashion-mnist.conv_head=flatten",
            f"run.fashion-mnist.slots={quoted}",
            f"run.fashion-mnist.train_limit={options.fashion_mnist_train_limit}",
        ]
    cnn = family == "synthetic-cnn"
    return [
        "run.task=synthetic",
        f"run.synthetic.host={'cnn' if cnn else 'mlp'}",
        f"run.synthetic.features={64 if cnn else 16}",
        f"run.synthetic.widths={list(widths)}",
        f"run.synthetic.slots={quoted}",
        f"run.synthetic.samples={options.samples}",
    ]


def plan(options: GroundOptions, seed: int, count: int, *, prefix: str = "ground", start: int = 0) -> list[GroundRun]:
    """Runs ``start .. start + count - 1`` of the plan drawn from ``seed`` (each a pure function of seed and index)."""
    runs = []
    for index in range(start, start + count):
        rng = random.Random(f"esper.simic.ground:{seed}:{index}")
        family = rng.choice(options.families)
        blocks = rng.choice(options.blocks)
        if family == "fashion-mnist-cnn":
            blocks = min(blocks, 3)  # 28 -> 14 -> 7 -> 3: a fourth max-pool leaves one pixel
        widths = tuple(rng.choice(options.widths) for _ in range(blocks))
        slot_set = rng.choice(options.slot_sets)
        epochs = rng.randint(options.epochs[0], options.epochs[1])
        budget = round(rng.uniform(options.budgets[0], options.budgets[1]), 3)
        run_seed = rng.randrange(2**31)
        name = f"{prefix}-{seed}-{index:05d}"
        overrides = [
            *_task_overrides(family, widths, slot_points(family, blocks, slot_set), options),
            f"run.epochs={epochs}",
            f"run.seed={run_seed}",
            f"run.batch_size={options.batch_size}",
            f"tamiyo.heuristic.max_added_parameter_fraction={budget}",
            f"tamiyo.learned.max_added_parameter_fraction={budget}",
        ]
        runs.append(GroundRun(name, family, widths, slot_set, epochs, budget, run_seed, tuple(overrides)))
    return runs


def heuristic_exploration(run: GroundRun) -> list[str]:
    """The heuristic with its rules' thresholds drawn per run: behaviour that varies where and when it grows, so
    the experience covers more than the heuristic's one way of deciding (exploration without random commands)."""
    rng = random.Random(f"esper.simic.explore:{run.name}")
    return [
        "tamiyo.policy=heuristic",
        f"tamiyo.heuristic.warmup_epochs={rng.choice([1, 2, 3])}",
        f"tamiyo.heuristic.max_concurrent_seeds={rng.choice([1, 2])}",
        f"tamiyo.heuristic.plateau_threshold={rng.choice([0.003, 0.01, 0.03])}",
        f"tamiyo.heuristic.min_remaining_epochs={rng.choice([3, 5, 6])}",
        f'tamiyo.heuristic.blend_schedule="{rng.choice(["linear", "cosine", "tanh"])}"',
        f'tamiyo.heuristic.sizing="{rng.choice(["share", "default"])}"',
    ]
