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
    SeedOperation,
    SystemStatePacket,
    lifecycle,
)
from esper_core.protocols import TamiyoPolicy
from esper_core.testing.conformance.properties import SHARED_ACROSS_SUBCLASSES
from esper_core.testing.strategies import state_packets


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
    assert operation in lifecycle.SOURCE_STAGES, f"unexpected seed operation {lifecycle.operation_name(operation)}"
    needs = " or ".join(sorted(lifecycle.stage_name(stage) for stage in lifecycle.SOURCE_STAGES[operation]))
    embargo = f" with {slot.embargo_epochs_remaining} embargo epochs left" if slot.embargo_epochs_remaining else ""
    assert lifecycle.allows(operation, slot), (
        f"{lifecycle.operation_name(operation)} on slot {slot.slot_id!r}, which is "
        f"{lifecycle.stage_name(slot.stage)}{embargo}: it needs {needs}"
        + (" and no embargo" if operation == SeedOperation.SEED_OP_GERMINATE else "")
    )
    if operation == SeedOperation.SEED_OP_GERMINATE:
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
