"""Helpers for the end-to-end tests of ``esper run`` (on pytest's pythonpath): configurations, a test plugin with a
seed that turns to NaN mid-blending, and comparisons of runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper_core import hookimpl
from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, SlotKind
from esper_core.plugins import BlueprintCatalogSpec, TaskSpec
from esper_core.protocols import SlotShape

#: Every run in these tests: small synthetic data, deterministic decisions (no latency-based rules can fire).
BASE = [
    "run.task=synthetic",
    "run.threads=1",
    "run.batch_size=128",
    "run.synthetic.samples=4096",
    "run.synthetic.widths=[32, 32]",
    "nissa.sinks=[]",
    "kasmina.blend_steps=30",
    "kasmina.max_step_overhead=1e9",
    "kasmina.max_seed_parameter_fraction=5",
    "tamiyo.decision_budget_ms=1e9",
    "tamiyo.risk.hook_budget_ms=1e9",
    "tolaria.decision_timeout_s=120",
    "tolaria.apply_timeout_s=120",
]

#: Volatile fields of record entries: wall-clock durations and random command ids.
VOLATILE = {
    "epoch_seconds",
    "decision_ms",
    "validation_seconds",
    "command_id",
    "wall_seconds",
    "train_seconds",
    "report",
    "packet",  # the state packet and the signed command carry timestamps, nonces and signatures
    "command",
    "replica_check_ms",  # several processes: the replica check's duration
}
#: Gate checks that measure time (G4's optional ``kasmina.max_step_ms``): their numbers are not reproducible. G4's
#: ``step_overhead`` counts FLOPs: its number is.
TIMED_CHECKS = {"step_time"}


def stable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries without wall-clock values, for comparing two runs that should have computed the same thing."""
    kept = []
    for entry in entries:
        copy = {key: value for key, value in entry.items() if key not in VOLATILE}
        if "gates" in copy:
            copy["gates"] = [
                {k: v for k, v in gate.items() if k != "measured"} if gate.get("check") in TIMED_CHECKS else gate
                for gate in copy["gates"]
            ]
        kept.append(copy)
    return kept


def schedule(*epochs: int, blueprint: str = "BP052") -> list[str]:
    """The fixed-schedule policy germinating ``blueprint`` at ``epochs``."""
    entries = ", ".join(f'{{epoch = {e}, blueprint = "{blueprint}"}}' for e in epochs)
    return ["tamiyo.policy=fixed-schedule", f"tamiyo.fixed-schedule.germinations=[{entries}]"]


class TurnsToNaN(nn.Module):
    """Healthy (a zero-started residual) for its first ``healthy`` forward passes in training mode, NaN after."""

    def __init__(self, width: int, healthy: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)
        self.healthy = healthy
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        output: torch.Tensor = self.outer(torch.relu(self.inner(x)))
        return output * math.nan if self.calls > self.healthy else output


class SaboteurCatalog:
    """One vector blueprint, BP990, that turns to NaN after ``healthy`` training-mode forward passes."""

    name = "saboteur"

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id="BP990", name="turns_to_nan", tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.1,
                slot_kinds=[SlotKind.SLOT_KIND_VECTOR], catalog="saboteur",
                allowed_parameters={"healthy": BlueprintParameterBounds(min_value=0, max_value=10_000,
                                                                        default_value=45, integer=True)},
            )
        ]  # fmt: skip

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id != "BP990":
            raise KeyError(blueprint_id)
        return TurnsToNaN(slot.shape[-1], int(parameters.get("healthy", 45)))

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        width = slot.shape[-1]
        return 2 * (width * width + width)


class SaboteurPlugin:
    @hookimpl
    def esper_urza_blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return [BlueprintCatalogSpec(name="saboteur", factory=lambda context: SaboteurCatalog())]

    @hookimpl
    def esper_tolaria_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="poisoned", factory=lambda context: PoisonedTask(healthy_training_losses=40))]


class PoisonedTask:
    """The synthetic task (defaults: 16 training steps an epoch), whose training loss is NaN after its first
    ``healthy_training_losses`` training batches, for good: a run with it can only keep rolling back."""

    name = "poisoned"

    def __init__(self, healthy_training_losses: int) -> None:
        from esper_core.tasks.synthetic import SyntheticTask

        self.inner = SyntheticTask()
        self.healthy = healthy_training_losses
        self.training_losses = 0

    def build_model(self) -> Any:
        return self.inner.build_model()

    def slot_points(self) -> list[str]:
        return self.inner.slot_points()

    def data(self) -> Any:
        return self.inner.data()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.inner.loss(outputs, targets)
        if torch.is_grad_enabled():
            self.training_losses += 1
            if self.training_losses > self.healthy:
                return loss * float("nan")
        return loss

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.inner.correct(outputs, targets)
        return result


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from esper_core.tolaria.checkpoint import load_newest

    loaded = load_newest(run_dir)
    assert loaded is not None and not loaded.skipped
    model: dict[str, torch.Tensor] = loaded.state["model"]
    return {key: value for key, value in model.items() if isinstance(value, torch.Tensor)}
