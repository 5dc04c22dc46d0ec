"""Checks the built-in tasks share: layer widths, how far a conv host may pool, and slot points that exist.

They run where the user's mistake can still be named by its key: the widths when the configuration is loaded (an
attrs validator, so the loader adds where the value came from), the slot points when the task is asked for them
(only the built host knows its module paths). Importing this module does not import torch: the options modules that
use it are imported whenever a configuration loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from esper_core.errors import ConfigError
from esper_core.leyline.growth import SlotPoint


def widths(_instance: object, attribute: attrs.Attribute[Any], value: Sequence[int]) -> None:
    """At least one width, each a whole number of at least 1 (channels of a conv block, units of a layer)."""
    if not value:
        raise ValueError(f"{attribute.name} must list at least one width, got []")
    bad = [width for width in value if isinstance(width, bool) or not width >= 1]
    if bad:
        raise ValueError(
            f"{attribute.name} must be whole numbers of at least 1 (channels or units per layer), got {list(value)}"
        )


def pooled_side(side: int, blocks: int, head: str) -> int:
    """The side of the last feature map of a :class:`~esper_core.tasks.hosts.ConvHost`: every block halves the
    image, except the last one under a ``gap`` head (the mean over space replaces its pool)."""
    for _ in range(blocks if head == "flatten" else blocks - 1):
        side //= 2
    return side


def most_blocks(side: int, head: str) -> int:
    """How many blocks a conv host on ``side`` x ``side`` images can have before its feature map vanishes."""
    blocks = 1
    while pooled_side(side, blocks + 1, head) >= 1:
        blocks += 1
    return blocks


def built_aside(build: Callable[[], Any]) -> Any:
    """``build()`` (a host, to read its module paths) without drawing from torch's global generator, so that
    checking the slot points does not change the run's initial weights or data order."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return build()


def check_slot_points(key: str, requested: Sequence[str], model: Any) -> list[str]:
    """``requested`` if every entry is a module path of ``model``, once; otherwise a :class:`ConfigError` naming
    ``key``, the repeated paths, or those that are not modules with the host's default slot points and its module
    paths.

    Kasmina would refuse them too, when it attaches the slots; this check runs first so that the message can name
    the configuration key the user set.
    """
    repeated = sorted({point for point in requested if list(requested).count(point) > 1})
    if repeated:
        raise ConfigError(f"{key} = {list(requested)!r} names {', '.join(map(repr, repeated))} more than once")
    try:
        parsed = [SlotPoint.parse(point) for point in requested]
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    names = [name for name, _ in model.named_modules() if name]
    unknown = [path for point in parsed for path in point.modules if path not in names]
    if not unknown:
        return list(requested)
    defaults = list(model.slot_points()) if hasattr(model, "slot_points") else []
    shown = ", ".join(names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
    what = "is not a module path" if len(unknown) == 1 else "are not module paths"
    raise ConfigError(
        f"{key} = {list(requested)!r}: {', '.join(repr(point) for point in unknown)} {what} of the "
        f"{type(model).__name__} host. Its default slot points are {', '.join(defaults) or '(none)'} "
        f"(leave {key} empty to use them); every module path: {shown}"
    )
