"""Tamiyo judges a blueprint by what Urabrask measured, not by what its catalog declared. A third-party blueprint
declared SAFE that explodes its gradients is rated on first use in a real run, quarantined and never germinated; the
decision says the risk was measured, and the policy is never offered it again. Karn's blueprints grow as before,
with measured risk; without rating, the run falls back to the declared risk and says so."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.leyline import AdaptationCommand, BlueprintDescriptor, BlueprintTier, SlotKind
from esper_core.leyline.annotations import OFFERED_BLUEPRINTS
from esper_core.plugins import BlueprintCatalogSpec, Registry
from esper_core.protocols import SlotShape
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import decode_message, read_record
from esper_core.tolaria.trainer import Trainer

from tolaria_runs import BASE

pytestmark = pytest.mark.slow

RUN = [*BASE, "run.epochs=8", "nissa.report.automatic=false", "tamiyo.policy=heuristic",
       "tamiyo.heuristic.min_remaining_epochs=2", "tamiyo.heuristic.plateau_threshold=1.0"]  # fmt: skip


class Amplifier(nn.Module):
    """Looks like a residual MLP seed (zero-started output layer), but each hidden layer multiplies by 30: under
    training its gradients explode. Its catalog calls it SAFE."""

    def __init__(self, width: int, hidden: int = 4) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = 30.0 * layer(x)
        output: torch.Tensor = self.out(x)
        return output


class MislabelledCatalog:
    name = "acme"

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id="AC001", name="amplifier", tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.05,
                slot_kinds=[SlotKind.SLOT_KIND_VECTOR], catalog="acme",
            )
        ]  # fmt: skip

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id != "AC001":
            raise KeyError(blueprint_id)
        return Amplifier(slot.shape[-1])

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        width, hidden = slot.shape[-1], 4
        return (width * hidden + hidden) + 2 * (hidden * hidden + hidden) + (hidden * width + width)


class AcmePlugin:
    @hookimpl
    def esper_urza_blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return [BlueprintCatalogSpec(name="acme", factory=lambda context: MislabelledCatalog())]


def run(tmp_path: Path, name: str, *settings: str, acme: bool = False) -> Path:
    registry = Registry.create(env={})
    if acme:
        registry.pm.register(AcmePlugin(), name="acme")
    config = registry.load_config(env={}, overrides=[*RUN, f"run.runs_dir={tmp_path}", f"run.name={name}", *settings])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return tmp_path / name


def commands(run_dir: Path) -> list[tuple[dict[str, Any], AdaptationCommand]]:
    return [
        (entry, decode_message(entry["command"], AdaptationCommand))
        for entry in read_record(run_dir)
        if entry["kind"] == "decision"
    ]


def growth_commands(run_dir: Path) -> list[tuple[dict[str, Any], AdaptationCommand]]:
    """The decisions on a growth proposal (germinations, and proposals the risk engine held back)."""
    return [(entry, command) for entry, command in commands(run_dir) if command.decision.blueprint_risk_source]


def test_a_mislabelled_safe_blueprint_is_measured_quarantined_and_never_offered_again(tmp_path: Path) -> None:
    run_dir = run(tmp_path, "acme", 'urza.catalogs=["acme"]', acme=True)
    [(entry, command)] = growth_commands(run_dir)  # proposed once: measured on first use, held back
    assert entry["operation"] == "noop" and entry["rules"] == ["bp_quarantine"], entry
    assert command.decision.blueprint_risk_source == "measured" and command.decision.blueprint_risk >= 0.85
    assert "AC001 measured risk" in command.decision.rationale and "exploding_gradients" in command.decision.rationale
    later = [c for e, c in commands(run_dir) if e["epoch"] > entry["epoch"]]
    assert later and all(c.annotations[OFFERED_BLUEPRINTS] == "[]" for c in later), "never offered to the policy again"
    assert not any(e["kind"] == "transition" for e in read_record(run_dir)), "nothing was germinated"
    assert len(list((run_dir / "urza" / "sheets").glob("*.bsds"))) == 1, "rated once, at its slot, and stored"
    # The risk engine's pause is raised on the emergency ladder (NOTICE: recorded), at the same decision point.
    [notice] = [e for e in read_record(run_dir) if e["kind"] == "emergency"]
    assert (notice["epoch"], notice["level"], notice["origin"]) == (entry["epoch"], "NOTICE", "tamiyo")
    assert "bp_quarantine" in notice["reason"] and notice["response"] == "recorded"


def test_karn_grows_judged_by_measured_risk_and_declared_risk_is_the_fallback(tmp_path: Path) -> None:
    measured = growth_commands(run(tmp_path, "measured"))
    assert any(entry["operation"] == "germinate" for entry, _ in measured)
    assert {command.decision.blueprint_risk_source for _, command in measured} == {"measured"}
    declared = growth_commands(run(tmp_path, "declared", "urza.urabrask.rate_on_first_use=false"))
    assert any(entry["operation"] == "germinate" for entry, _ in declared)
    assert {command.decision.blueprint_risk_source for _, command in declared} == {"declared"}
    assert not (tmp_path / "declared" / "urza" / "sheets").exists()
