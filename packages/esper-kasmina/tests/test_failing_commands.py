"""A plugin (or Kasmina itself) raising while a command is carried out leaves the slot exactly as it was; a fetch
whose build raised is a failed G0 check whose exception Tolaria can collect; a seed module that raises in the forward
pass is blamed on its blueprint."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from esper_core.leyline import CommandStatus, SeedLifecycleStage, SeedOperation
from esper_core.plugin_failures import blamed, first_argument, guard
from esper_core.protocols import SlotShape
from esper_kasmina.executor import KasminaSeedExecutor

from kasmina_rig import CatalogStore, Rig, SmallCatalog, lenient, make_rig

STAGE = SeedLifecycleStage
GERMINATE, START_TRAINING = SeedOperation.SEED_OP_GERMINATE, SeedOperation.SEED_OP_START_TRAINING


def snapshot(rig: Rig) -> tuple[object, ...]:
    """Everything a half-done command could leave behind: slot states, optimizer groups, hooks, seed modules."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in rig.optimizer.param_groups]
    slots = rig.kasmina.slots
    return (
        tuple(rig.kasmina.export_seed_states()),
        str(groups),
        tuple(slot.hooked for slot in slots),
        tuple(id(slot.seed) if slot.seed is not None else None for slot in slots),
    )


@pytest.fixture
def rig() -> Rig:
    made = make_rig(SmallCatalog(), "vector", options=lenient())
    made.decide()
    return made


def raising(message: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)

    return fail


def test_a_germination_that_raises_after_the_seed_was_installed_leaves_the_slot_dormant(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(rig)
    monkeypatch.setattr(rig.kasmina.groups, "add", raising("optimizer full"))
    with pytest.raises(RuntimeError, match="optimizer full"):
        rig.command(GERMINATE, "1", "BP901")
    assert snapshot(rig) == before
    assert rig.kasmina.drain_events() == [], "the transitions of a command that failed are undone"
    monkeypatch.undo()
    assert rig.command(GERMINATE, "1", "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED, "the slot is usable"


def test_an_advance_whose_gate_raises_changes_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    assert rig.command(GERMINATE, "1", "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED
    rig.kasmina.drain_events()
    before = snapshot(rig)
    monkeypatch.setattr(rig.kasmina.gates, "training_entry", raising("probe loss raised"))
    with pytest.raises(RuntimeError, match="probe loss raised"):
        rig.command(START_TRAINING, "1")
    assert snapshot(rig) == before and rig.stage("1") == STAGE.SEED_STAGE_GERMINATED


def test_a_cull_that_raises_half_way_puts_the_seed_and_its_optimizer_group_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rig.command(GERMINATE, "1", "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED
    assert rig.command(START_TRAINING, "1").status == CommandStatus.COMMAND_STATUS_APPLIED
    rig.kasmina.drain_events()
    before = snapshot(rig)
    slot = next(slot for slot in rig.kasmina.slots if slot.slot_id == "1")
    real_remove = slot.remove_seed

    def remove_then_fail() -> None:
        real_remove()  # the seed has left the forward pass and its group is gone: half a cull
        raise RuntimeError("interrupted mid-cull")

    monkeypatch.setattr(slot, "remove_seed", remove_then_fail)
    with pytest.raises(RuntimeError, match="mid-cull"):
        rig.command(SeedOperation.SEED_OP_CULL, "1")
    assert snapshot(rig)[0] == before[0] and snapshot(rig)[2:] == before[2:], "stage, seed and hook as before"
    assert rig.kasmina.groups.has("1"), "the seed's optimizer group is back"
    rig.train(2)  # the restored seed trains (its group is in the optimizer again)
    monkeypatch.undo()
    assert rig.command(SeedOperation.SEED_OP_CULL, "1").status == CommandStatus.COMMAND_STATUS_APPLIED


class BrittleCatalog(SmallCatalog):
    """The rig's catalog, whose ``build`` of BP901 raises."""

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id == "BP901":
            raise ZeroDivisionError("the builder divided by zero")
        return super().build(blueprint_id, slot, parameters)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return super().parameter_count("BP950" if blueprint_id == "BP901" else blueprint_id, slot, parameters)


def test_a_build_that_raises_is_a_failed_fetch_and_its_exception_is_kept_for_tolaria() -> None:
    catalog = guard(
        BrittleCatalog(), kind="blueprint catalog", name="brittle", refusals={"build": ()},
        subjects={"build": first_argument("blueprint_id")},
    )  # fmt: skip
    rig = make_rig(catalog, "vector", options=lenient())
    kasmina: KasminaSeedExecutor = rig.kasmina
    kasmina.store = CatalogStore(catalog)
    rig.decide()
    result = rig.command(GERMINATE, "1", "BP901")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE and "artifact_fetch" in result.detail
    (failure,) = kasmina.drain_plugin_failures()
    assert (failure.kind, failure.name, failure.during, failure.subject) == (
        "blueprint catalog", "brittle", "build", "BP901",
    )  # fmt: skip
    assert failure.error_type == "ZeroDivisionError" and "the builder divided by zero" in failure.traceback
    assert kasmina.drain_plugin_failures() == [], "drained once"
    assert rig.stage("1") == STAGE.SEED_STAGE_DORMANT


def test_a_refused_fetch_is_not_a_plugin_failure(rig: Rig) -> None:
    """A gate failure with a reason (here: an unknown blueprint) is Kasmina's answer, not a plugin's crash."""
    assert rig.command(GERMINATE, "1", "BP404").status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    assert rig.kasmina.drain_plugin_failures() == []


class Unreliable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise FloatingPointError("the seed's forward gave up")


def test_a_seed_module_that_raises_in_the_forward_pass_is_blamed_on_its_blueprint(rig: Rig) -> None:
    assert rig.command(GERMINATE, "1", "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED
    assert rig.command(START_TRAINING, "1").status == CommandStatus.COMMAND_STATUS_APPLIED
    slot = next(slot for slot in rig.kasmina.slots if slot.slot_id == "1")
    slot.seed = Unreliable()
    with pytest.raises(FloatingPointError) as raised:
        rig.model(rig.inputs)
    found = blamed(raised.value)
    assert found is not None
    who, _ = found
    assert (who.kind, who.during, who.subject, who.slot) == ("blueprint catalog", "forward", "BP901", "1")
