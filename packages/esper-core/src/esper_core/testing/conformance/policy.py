"""Every Tamiyo policy, for any valid state packet, returns a valid command it is allowed to return.

Subclass :class:`TamiyoPolicyConformance` and provide two fixtures: ``policy`` (a fresh policy) and ``blueprints``
(the descriptors it may choose from). The suite checks what the executor relies on: the command is valid Leyline;
it targets an existing slot or none; a germination targets a DORMANT slot, names an offered blueprint that supports
the slot's kind, and keeps its parameters within the blueprint's bounds; an advance targets a slot whose stage
allows it. Signing is the controller's job and is checked by :class:`ControllerConformance`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    CommandType,
    SeedLifecycleStage,
    SeedOperation,
    SystemStatePacket,
)
from esper_core.protocols import TamiyoPolicy
from esper_core.testing.conformance.properties import SHARED_ACROSS_SUBCLASSES
from esper_core.testing.strategies import state_packets

#: The stage a slot must be in for each advance operation.
REQUIRED_STAGE = {
    SeedOperation.SEED_OP_START_TRAINING: SeedLifecycleStage.SEED_STAGE_GERMINATED,
    SeedOperation.SEED_OP_START_GRAFTING: SeedLifecycleStage.SEED_STAGE_TRAINING,
    SeedOperation.SEED_OP_STABILIZE: SeedLifecycleStage.SEED_STAGE_BLENDING,
    SeedOperation.SEED_OP_EVALUATE: SeedLifecycleStage.SEED_STAGE_SHADOWING,
    SeedOperation.SEED_OP_FOSSILIZE: SeedLifecycleStage.SEED_STAGE_PROBATIONARY,
}
CULLABLE = {
    SeedLifecycleStage.SEED_STAGE_GERMINATED,
    SeedLifecycleStage.SEED_STAGE_TRAINING,
    SeedLifecycleStage.SEED_STAGE_BLENDING,
    SeedLifecycleStage.SEED_STAGE_SHADOWING,
    SeedLifecycleStage.SEED_STAGE_PROBATIONARY,
}


def check_command(
    command: AdaptationCommand, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]
) -> None:
    """Assert that ``command`` is one a policy may return for ``state`` (raises AssertionError otherwise)."""
    assert isinstance(command, AdaptationCommand), f"decide() returned {type(command).__name__}"
    AdaptationCommand.FromString(command.SerializeToString())
    slots = {seed.slot_id: seed for seed in state.seeds}
    if command.command_type != CommandType.COMMAND_SEED:
        assert command.command_type in (
            CommandType.COMMAND_NOOP,
            CommandType.COMMAND_PAUSE,
            CommandType.COMMAND_OPTIMIZER,
        ), f"unexpected command type {CommandType.Name(command.command_type)}"
        assert not command.target_slot_id or command.target_slot_id in slots
        return
    assert command.WhichOneof("payload") == "seed_operation", "a seed command carries a seed operation"
    assert command.target_slot_id in slots, f"targets unknown slot {command.target_slot_id!r}"
    slot = slots[command.target_slot_id]
    operation = command.seed_operation.operation
    if operation == SeedOperation.SEED_OP_GERMINATE:
        assert slot.stage == SeedLifecycleStage.SEED_STAGE_DORMANT, "germinates into a slot that is not DORMANT"
        assert slot.embargo_epochs_remaining == 0, "germinates into an embargoed slot"
        offered = {descriptor.blueprint_id: descriptor for descriptor in blueprints}
        blueprint_id = command.seed_operation.blueprint_id
        assert blueprint_id in offered, f"chose blueprint {blueprint_id!r}, which was not offered"
        descriptor = offered[blueprint_id]
        if descriptor.slot_kinds:
            assert slot.slot_kind in descriptor.slot_kinds, "chose a blueprint that does not fit the slot's kind"
        for name, value in command.seed_operation.parameters.items():
            assert name in descriptor.allowed_parameters, f"parameter {name!r} is not one of {blueprint_id}'s"
            bounds = descriptor.allowed_parameters[name]
            assert bounds.min_value <= value <= bounds.max_value, f"{name}={value} is outside its bounds"
    elif operation in (SeedOperation.SEED_OP_CULL, SeedOperation.SEED_OP_CANCEL):
        assert slot.stage in CULLABLE, f"culls a slot in stage {SeedLifecycleStage.Name(slot.stage)}"
    elif operation in REQUIRED_STAGE:
        assert slot.stage == REQUIRED_STAGE[operation], (
            f"{SeedOperation.Name(operation)} on a slot in stage {SeedLifecycleStage.Name(slot.stage)}"
        )
    else:
        raise AssertionError(f"unexpected seed operation {SeedOperation.Name(operation)}")


class TamiyoPolicyConformance:
    """Subclasses provide ``policy`` and ``blueprints`` fixtures."""

    def test_policy_satisfies_the_protocol(self, policy: TamiyoPolicy) -> None:
        assert isinstance(policy, TamiyoPolicy)
        assert isinstance(policy.name, str) and policy.name

    @settings(max_examples=80, deadline=None, suppress_health_check=SHARED_ACROSS_SUBCLASSES)
    @given(data=st.data())
    def test_any_state_gets_a_valid_command(
        self, policy: TamiyoPolicy, blueprints: Sequence[BlueprintDescriptor], data: st.DataObject
    ) -> None:
        ids = [descriptor.blueprint_id for descriptor in blueprints] or ["BP001"]
        for _ in range(3):  # a short trajectory, so stateful policies are exercised too
            state = data.draw(state_packets(blueprint_ids=ids))
            check_command(policy.decide(state, blueprints), state, blueprints)
