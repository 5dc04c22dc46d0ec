"""Seeds' parameters in the host's optimizer, each seed as its own parameter group.

Adding a group never touches the host's groups or their state (momentum, Adam moments); removing a seed deletes its
group and its parameters' state, and nothing else. Groups carry an ``esper_slot`` key, so a checkpoint records which
slot each group belongs to and a resumed run re-adds them in the same order before loading the optimizer's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

SLOT_KEY = "esper_slot"


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

    def host_learning_rate(self) -> float:
        for group in self._groups():
            if SLOT_KEY not in group:
                return float(group["lr"])
        return 1e-3

    def order(self) -> list[str]:
        """The slots with a group, in the optimizer's group order (saved in checkpoints)."""
        return [group[SLOT_KEY] for group in self._groups() if SLOT_KEY in group]

    def parameters_of(self, slot_id: str) -> list[nn.Parameter]:
        for group in self._groups():
            if group.get(SLOT_KEY) == slot_id:
                return list(group["params"])
        return []
