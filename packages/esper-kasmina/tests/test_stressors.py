"""HIGH_RISK stressors exist to prove the gates work: a seed that emits NaN and one whose gradients explode are
culled with the right reason, and the host's weights are untouched."""

from __future__ import annotations

from collections.abc import Callable

import torch

from esper_core.leyline import CommandStatus, SeedLifecycleStage, SeedOperation

from kasmina_rig import Rig

QUARANTINE = ("SAFE", "EXPERIMENTAL", "HIGH_RISK")


def host_weights(rig: Rig) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in rig.model.state_dict().items() if not name.startswith("esper_slots")}


def unchanged(before: dict[str, torch.Tensor], rig: Rig) -> bool:
    after = host_weights(rig)
    return all(torch.equal(before[name], after[name]) for name in before)


def test_a_nan_emitting_seed_is_culled_by_the_training_gate(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv", allowed=QUARANTINE)
    rig.decide()
    assert (
        rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP990", delay=1).status
        == CommandStatus.COMMAND_STATUS_APPLIED
    )
    before = host_weights(rig)
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    failure = next(gate for gate in result.gates if not gate.passed)
    assert (failure.gate, failure.check) == (2, "finite_output")
    assert "G1_GRADIENT_HEALTH/finite_output" in result.detail
    assert rig.stage("features.5") == SeedLifecycleStage.SEED_STAGE_EMBARGOED
    culled = next(e for e in result.transitions if e.to_stage == SeedLifecycleStage.SEED_STAGE_CULLED)
    assert culled.gates[0].check == "finite_output"
    assert unchanged(before, rig)
    assert not rig.kasmina.groups.has("features.5")


def test_a_seed_with_exploding_gradients_is_culled_by_the_training_gate(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector", allowed=QUARANTINE)
    rig.decide()
    assert (
        rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP991", scale=1e9).status
        == CommandStatus.COMMAND_STATUS_APPLIED
    )
    before = host_weights(rig)
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, "1")
    failure = next(gate for gate in result.gates if not gate.passed)
    assert (failure.check, failure.gate) == ("seed_gradient_bounded", 2)
    assert failure.measured > failure.threshold == 1e3
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_EMBARGOED
    assert unchanged(before, rig)


def test_a_seed_that_turns_bad_later_is_culled_by_the_watchdog(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv", allowed=QUARANTINE)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP990", delay=100)  # healthy through G0 and G1
    assert (
        rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5").status == CommandStatus.COMMAND_STATUS_APPLIED
    )
    rig.kasmina.bank.get("features.5").seed.delay = 0  # type: ignore[union-attr]  # ...and now it turns bad
    before = host_weights(rig)
    rig.epoch += 1
    events = rig.kasmina.decision_point(rig.epoch, 100)
    culled = next(e for e in events if e.to_stage == SeedLifecycleStage.SEED_STAGE_CULLED)
    assert culled.reason.startswith("watchdog: G3_INTERFACE/finite_output")
    assert unchanged(before, rig)


def test_stressors_are_quarantined_unless_high_risk_is_allowed(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    rig.decide()
    result = rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP991")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    assert next(g for g in result.gates if not g.passed).check == "tier_allowed"
