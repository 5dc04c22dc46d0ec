"""The measurement gates G2, G3 and G4 with their real thresholds: each failing check culls, names itself and
reports its measured value against its threshold."""

from __future__ import annotations

import time
from collections.abc import Callable

from esper_core.leyline import CommandStatus, SeedLifecycleStage, SeedOperation

from kasmina_rig import Rig, lenient


def training(rig_factory: Callable[..., Rig], **strict: float) -> Rig:
    rig = rig_factory("vector", options=lenient(**strict))
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_TRAINING, "1")
    rig.train(3)
    rig.decide()
    return rig


def refused(rig: Rig, operation: int, check: str) -> None:
    result = rig.command(operation, "1")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE, result.detail
    failure = next(gate for gate in result.gates if not gate.passed)
    assert failure.check == check
    assert failure.HasField("measured") and failure.HasField("threshold")  # the numbers behind the refusal
    assert check in result.detail
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_EMBARGOED


def test_g2_refuses_a_seed_whose_loss_got_worse_while_training(rig_factory: Callable[..., Rig]) -> None:
    rig = training(rig_factory, max_seed_loss_regression=0.01)
    slot = rig.kasmina.bank.get("1")  # type: ignore[union-attr]
    slot.record.seed_loss_at_training_start = slot.record.seed_loss * 0.5  # it was much better when it began
    refused(rig, SeedOperation.SEED_OP_START_GRAFTING, "seed_loss_trend")


def test_g2_refuses_to_blend_during_a_loss_spike(rig_factory: Callable[..., Rig]) -> None:
    rig = training(rig_factory, max_loss_spike=0.05)
    rig.kasmina.previous_loss = rig.kasmina.last_evaluation.loss / 1.5  # type: ignore[union-attr]
    refused(rig, SeedOperation.SEED_OP_START_GRAFTING, "no_loss_spike")


def test_g3_refuses_a_seed_below_the_contribution_threshold(rig_factory: Callable[..., Rig]) -> None:
    rig = training(rig_factory, min_contribution=0.5, blend_steps=2)
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    rig.train(2)
    rig.decide()
    refused(rig, SeedOperation.SEED_OP_STABILIZE, "contribution")


def test_g4_refuses_a_seed_that_made_validation_worse(rig_factory: Callable[..., Rig]) -> None:
    rig = training(rig_factory, max_regression=0.0, blend_steps=2)
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    rig.train(2)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_STABILIZE, "1")
    rig.decide()
    slot = rig.kasmina.bank.get("1")  # type: ignore[union-attr]
    slot.record.val_loss_at_germination = rig.kasmina.last_evaluation.loss * 0.5  # type: ignore[union-attr]
    refused(rig, SeedOperation.SEED_OP_EVALUATE, "regression")


def test_g4_refuses_a_seed_that_slows_the_step_too_much(rig_factory: Callable[..., Rig]) -> None:
    rig = training(rig_factory, max_step_overhead=1.0, blend_steps=2)  # a seed may at most double the step
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    rig.train(2)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_STABILIZE, "1")
    rig.decide()
    seed = rig.kasmina.bank.get("1").seed  # type: ignore[union-attr]
    forward = seed.forward

    def slow(*args: object) -> object:
        time.sleep(0.005)  # at least 5 ms per forward: far more than this tiny host's whole step takes
        return forward(*args)

    seed.forward = slow
    refused(rig, SeedOperation.SEED_OP_EVALUATE, "step_overhead")
