"""The lifecycle of ARCHITECTURE.md section 7: only its transitions, driven by commands and gates."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from esper_core.leyline import CommandStatus, SeedLifecycleStage, SeedOperation, lifecycle

from kasmina_rig import Rig, lenient

APPLIED, ILLEGAL = CommandStatus.COMMAND_STATUS_APPLIED, CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL

LEGAL = {
    (lifecycle.DORMANT, lifecycle.GERMINATED),
    (lifecycle.DORMANT, lifecycle.TERMINATED),
    (lifecycle.GERMINATED, lifecycle.TRAINING),
    (lifecycle.TRAINING, lifecycle.BLENDING),
    (lifecycle.BLENDING, lifecycle.SHADOWING),
    (lifecycle.SHADOWING, lifecycle.PROBATIONARY),
    (lifecycle.PROBATIONARY, lifecycle.FOSSILIZED),
    (lifecycle.FOSSILIZED, lifecycle.TERMINATED),
    (lifecycle.CULLED, lifecycle.EMBARGOED),
    (lifecycle.EMBARGOED, lifecycle.RESETTING),
    (lifecycle.RESETTING, lifecycle.DORMANT),
    *(
        (active, lifecycle.CULLED)
        for active in (
            lifecycle.GERMINATED,
            lifecycle.TRAINING,
            lifecycle.BLENDING,
            lifecycle.SHADOWING,
            lifecycle.PROBATIONARY,
        )
    ),
}


def test_exactly_the_architecture_transitions_are_legal() -> None:
    stages = [value for value in SeedLifecycleStage.values() if value != SeedLifecycleStage.SEED_STAGE_UNKNOWN]
    for source, target in itertools.product(stages, stages):
        if (source, target) in LEGAL:
            lifecycle.check_transition(source, target)
        else:
            with pytest.raises(lifecycle.IllegalTransition, match="is not a lifecycle transition"):
                lifecycle.check_transition(source, target)


def advance_to_fossilized(rig: Rig, slot: str) -> None:
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP901").status == APPLIED
    rig.decide()
    for operation in (
        SeedOperation.SEED_OP_START_TRAINING,
        SeedOperation.SEED_OP_START_GRAFTING,
        SeedOperation.SEED_OP_STABILIZE,
        SeedOperation.SEED_OP_EVALUATE,
        SeedOperation.SEED_OP_FOSSILIZE,
    ):
        result = rig.command(operation, slot)
        assert result.status == APPLIED, result.detail
        rig.train(5)
        rig.decide()


@pytest.mark.parametrize("host", ["conv", "vector", "sequence"])
def test_a_seed_walks_every_stage_to_fossilized(rig_factory: Callable[..., Rig], host: str) -> None:
    rig = rig_factory(host)
    slot = rig.kasmina.export_seed_states()[-1].slot_id
    rig.decide()
    advance_to_fossilized(rig, slot)
    assert rig.stage(slot) == lifecycle.FOSSILIZED
    stages = [event.to_stage for event in rig.kasmina.drain_events()]
    assert stages == [
        lifecycle.GERMINATED,
        lifecycle.TRAINING,
        lifecycle.BLENDING,
        lifecycle.SHADOWING,
        lifecycle.PROBATIONARY,
        lifecycle.FOSSILIZED,
    ]


@pytest.mark.parametrize(
    "operation",
    [
        SeedOperation.SEED_OP_START_TRAINING,
        SeedOperation.SEED_OP_START_GRAFTING,
        SeedOperation.SEED_OP_STABILIZE,
        SeedOperation.SEED_OP_EVALUATE,
        SeedOperation.SEED_OP_FOSSILIZE,
        SeedOperation.SEED_OP_CULL,
    ],
)
def test_an_operation_on_a_dormant_slot_is_illegal_and_changes_nothing(
    rig_factory: Callable[..., Rig], operation: SeedOperation.ValueType
) -> None:
    rig = rig_factory("vector")
    before = rig.kasmina.export_seed_states()
    result = rig.command(operation, "1")
    assert result.status == ILLEGAL
    assert "DORMANT" in result.detail
    assert rig.kasmina.export_seed_states() == before


def test_germination_needs_a_dormant_slot(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == APPLIED
    again = rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    assert again.status == ILLEGAL and "GERMINATED" in again.detail


def test_advancing_needs_a_measurement_in_the_current_stage(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    assert rig.command(SeedOperation.SEED_OP_START_TRAINING, "1").status == APPLIED
    early = rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    assert early.status == ILLEGAL and "no validation measurement" in early.detail
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1").status == APPLIED


def test_stabilizing_needs_a_finished_ramp(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector", options=lenient(blend_steps=50))
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    rig.command(SeedOperation.SEED_OP_START_TRAINING, "1")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "1")
    rig.train(10)
    rig.decide()
    result = rig.command(SeedOperation.SEED_OP_STABILIZE, "1")
    assert result.status == ILLEGAL and "10/50 steps" in result.detail
    rig.train(40)
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_STABILIZE, "1").status == APPLIED


def test_a_culled_slot_is_embargoed_then_reset(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector", options=lenient(blend_steps=4, embargo_epochs=2))
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    assert rig.command(SeedOperation.SEED_OP_CULL, "1").status == APPLIED
    assert rig.stage("1") == lifecycle.EMBARGOED
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "1")
    assert state.embargo_epochs_remaining == 2
    assert state.blueprint_id == "BP901" and state.parameter_count == 0  # what was culled, without its module
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == ILLEGAL
    rig.decide()
    assert rig.stage("1") == lifecycle.EMBARGOED
    rig.decide()
    assert rig.stage("1") == lifecycle.DORMANT
    path = [event.to_stage for event in rig.kasmina.drain_events()]
    assert path[-4:] == [lifecycle.CULLED, lifecycle.EMBARGOED, lifecycle.RESETTING, lifecycle.DORMANT]
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == APPLIED
    assert next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "1").seed_id == "1#2"


def test_only_dormant_or_fossilized_slots_can_be_terminated(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "3", "BP901")
    with pytest.raises(lifecycle.IllegalTransition):
        rig.kasmina.terminate("3")
    assert rig.kasmina.terminate("1").to_stage == lifecycle.TERMINATED
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == ILLEGAL
