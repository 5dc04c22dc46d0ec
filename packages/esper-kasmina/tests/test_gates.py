"""The measurement gates G2, G3 and G4 with their real thresholds: each failing check culls, names itself and
reports its measured value against its threshold."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from esper_core.leyline import CommandResult, CommandStatus, GateResult, SeedLifecycleStage, SeedOperation

from kasmina_rig import Rig, lenient


def training(rig_factory: Callable[..., Rig], hidden: int = 8, **strict: float) -> Rig:
    rig = rig_factory("vector", options=lenient(**strict))
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901", hidden=hidden)
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


def shadowing(rig_factory: Callable[..., Rig], hidden: int, **strict: float) -> Rig:
    """A BP901 seed of ``hidden`` units at slot "1" of the vector host, SHADOWING: the next advance runs G4."""
    rig = training(rig_factory, hidden=hidden, blend_steps=2, **strict)
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    rig.train(2)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_STABILIZE, "1")
    rig.decide()
    return rig


def overhead(hidden: int) -> float:
    """G4's step overhead of a BP901 seed at slot "1" of the vector host (6 -> 16 -> 16 -> 4), by hand, per sample
    (a multiply-add is 2 FLOPs; biases and activations are not counted).

    Host step: forward 2 (6*16 + 16*16 + 16*4) = 832; backward: the first layer's weight gradient only (the input
    needs none) 2*6*16, the others' input and weight gradients 2*2*(16*16 + 16*4): 1,472; 2,304 in all. The seed,
    trained jointly as in PROBATIONARY, adds its two layers (16 -> hidden -> 16) forward, 64 * hidden, and both
    gradients of each backward, 128 * hidden."""
    return 192 * hidden / 2304


def step_overhead_check(result: CommandResult) -> GateResult:
    return next(gate for gate in result.gates if gate.check == "step_overhead")


def test_g4_refuses_a_seed_that_adds_too_much_compute(rig_factory: Callable[..., Rig]) -> None:
    # A seed may at most double the step's FLOPs (and, here, have up to 10x the host's 452 parameters: 2,128).
    rig = shadowing(rig_factory, hidden=64, max_step_overhead=1.0, max_seed_parameter_fraction=10.0)
    result = rig.command(SeedOperation.SEED_OP_EVALUATE, "1")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE, result.detail
    check = step_overhead_check(result)
    assert not check.passed
    assert check.measured == pytest.approx(overhead(64))  # 5.33: counted, exactly the hand computation
    assert check.threshold == 1.0
    assert "step_overhead" in result.detail and "FLOPs" in result.detail
    assert "14,592 over 2,304 per probe sample" in check.detail  # 2,304 + 192 * 64
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_EMBARGOED


def test_g4_lets_a_cheap_seed_through_however_slow_the_machine_is(rig_factory: Callable[..., Rig]) -> None:
    rig = shadowing(rig_factory, hidden=8, max_step_overhead=1.0)
    seed = rig.kasmina.bank.get("1").seed  # type: ignore[union-attr]
    forward = seed.forward

    def slow(*args: object) -> object:
        time.sleep(0.02)  # far more than this tiny host's whole step takes: a timed gate would see 100x
        return forward(*args)

    seed.forward = slow
    result = rig.command(SeedOperation.SEED_OP_EVALUATE, "1")
    assert result.status == CommandStatus.COMMAND_STATUS_APPLIED, result.detail
    assert step_overhead_check(result).measured == pytest.approx(overhead(8))  # 0.67, whatever the time it took
    assert all(gate.check != "step_time" for gate in result.gates)  # no time limit unless one is configured
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_PROBATIONARY


def test_g4_times_the_step_only_when_given_a_time_limit(rig_factory: Callable[..., Rig]) -> None:
    rig = shadowing(rig_factory, hidden=8, max_step_overhead=1.0, max_step_ms=1e-6)  # 1 ns: no step is that fast
    result = rig.command(SeedOperation.SEED_OP_EVALUATE, "1")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE, result.detail
    timed = next(gate for gate in result.gates if gate.check == "step_time")
    assert not timed.passed and timed.measured > timed.threshold == 1e-6
    assert step_overhead_check(result).passed  # the FLOPs were within budget: the time limit refused it
