"""Seeds' parameters in the host's optimizer, each seed as its own parameter group.

Adding a group never touches the host's groups or their state (momentum, Adam moments); removing a seed deletes its
group and its parameters' state, and nothing else. Groups carry an ``esper_slot`` key, so a checkpoint records which
slot each group belongs to and a resumed run re-adds them in the same order before loading the optimizer's state.

Under Tolaria's learning-rate schedule (``tolaria.lr_schedule``) a group's ``lr`` is its base rate times the
schedule's factor. The rate a seed is given here (at germination, or by a FINE_TUNE) is its *base*: written as
``lr`` without the schedule's mark (``esper_core.protocols.SCHEDULED_LR_KEY``), it becomes the group's base at the
next step, which the schedule then multiplies. The host's rate a seed inherits by default is the host group's base
(``esper_core.protocols.BASE_LR_KEY``), not its scheduled rate of the moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from esper_core.protocols import BASE_LR_KEY, SCHEDULED_LR_KEY, SEED_GROUP_KEY

SLOT_KEY = SEED_GROUP_KEY


class SeedParameterGroups:
    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def _groups(self) -> list[dict[str, Any]]:
        return [] if self.optimizer is None else list(self.optimizer.param_groups)

    def add(self, slot_id: str, parameters: Sequence[nn.Parameter], learning_rate: float, weight_decay: float) -> None:
        if self.optimizer is None or not parameters:
            return
        if self.has(slot_id):
            raise ValueError(f"slot {slot_id!r} already has a parameter group")
        self.optimizer.add_param_group(
            {"params": list(parameters), "lr": learning_rate, "weight_decay": weight_decay, SLOT_KEY: slot_id}
        )

    def remove(self, slot_id: str) -> None:
        if self.optimizer is None:
            return
        groups = self.optimizer.param_groups
        for index in reversed(range(len(groups))):  # by position: dict equality would compare tensors
            if groups[index].get(SLOT_KEY) == slot_id:
                for parameter in groups.pop(index)["params"]:
                    self.optimizer.state.pop(parameter, None)

    def has(self, slot_id: str) -> bool:
        return any(group.get(SLOT_KEY) == slot_id for group in self._groups())

    def set_learning_rate(self, slot_id: str, learning_rate: float) -> None:
        for group in self._groups():
            if group.get(SLOT_KEY) == slot_id:
                group["lr"] = learning_rate
                group.pop(SCHEDULED_LR_KEY, None)  # the schedule's base from now on, even if it equals its last rate

    def host_learning_rate(self) -> float:
        """The host group's base learning rate (its ``lr`` when no schedule runs)."""
        for group in self._groups():
            if SLOT_KEY not in group:
                return float(group.get(BASE_LR_KEY, group["lr"]))
        return 1e-3

    def order(self) -> list[str]:
        """The slots with a group, in the optimizer's group order (saved in checkpoints)."""
        return [group[SLOT_KEY] for group in self._groups() if SLOT_KEY in group]

    def parameters_of(self, slot_id: str) -> list[nn.Parameter]:
        for group in self._groups():
            if group.get(SLOT_KEY) == slot_id:
                return list(group["params"])
        return []
