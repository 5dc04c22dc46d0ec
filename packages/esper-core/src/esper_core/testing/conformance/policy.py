"""Every Tamiyo policy, for any valid state packet, returns a valid command it is allowed to return.

Subclass :class:`TamiyoPolicyConformance` and provide two fixtures: ``policy`` (a fresh policy) and ``blueprints``
(the descriptors it may choose from). The suite checks what the executor relies on: the command is valid Leyline;
it targets an existing slot or none; a germination targets a DORMANT slot, names an offered blueprint that supports
the slot's kind, and keeps its parameters within the blueprint's bounds; an advance targets a slot whose stage
allows it; and the policy leaves the packet and the blueprint descriptors it was given exactly as they were.
Signing is the controller's job and is checked by :class:`ControllerConformance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    CommandType,
    SeedOperation,
    SystemStatePacket,
    growth,
    lifecycle,
)
from esper_core.protocols import SlotShape, TamiyoPolicy
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
        misfit = growth.misfit(descriptor, SlotShape.of(slot))
        assert misfit is None, f"chose a blueprint that does not fit the slot: {misfit}"
        for name, value in command.seed_operation.parameters.items():
            assert name in descriptor.allowed_parameters, f"parameter {name!r} is not one of {blueprint_id}'s"
            bounds = descriptor.allowed_parameters[name]
            assert bounds.min_value <= value <= bounds.max_value, f"{name}={value} is outside its bounds"


def decide_read_only(
    policy: TamiyoPolicy, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]
) -> AdaptationCommand:
    """``policy.decide(state, blueprints)``, asserting that the policy changed neither the packet nor the descriptors.

    Both are shared, not copies: after the decision the controller and Tolaria hand the same packet to the field
    reports, the run record, the lifecycle hooks and the bus, and the controller's risk engine reviews every later
    germination against the same descriptor objects (a policy that lowered a blueprint's ``risk`` would slip past
    it). The check compares their deterministic serializations before and after the call.
    """
    packet = state.SerializeToString(deterministic=True)
    offered = [descriptor.SerializeToString(deterministic=True) for descriptor in blueprints]
    command = policy.decide(state, blueprints)
    if state.SerializeToString(deterministic=True) != packet:
        changed = _listed(differences(SystemStatePacket.FromString(packet), state))
        raise AssertionError(
            f"policy {policy.name!r} changed the SystemStatePacket it was given ({changed}). The packet is "
            "read-only: the field reports, the run record and the bus receive this same object after the "
            "decision. Work on a copy (copy = SystemStatePacket(); copy.CopyFrom(state)) or on plain values."
        )
    now = [descriptor.SerializeToString(deterministic=True) for descriptor in blueprints]
    if now != offered:
        if len(now) != len(offered):
            changed = f"the list went from {len(offered)} to {len(now)} descriptors"
        else:
            changed = "; ".join(
                f"{descriptor.blueprint_id or f'blueprints[{index}]'}: "
                + _listed(differences(BlueprintDescriptor.FromString(before), descriptor))
                for index, (before, descriptor) in enumerate(zip(offered, blueprints, strict=True))
                if descriptor.SerializeToString(deterministic=True) != before
            )
        raise AssertionError(
            f"policy {policy.name!r} changed the blueprint descriptors it was offered ({changed}). They are "
            "read-only: the controller's risk engine reviews every germination against these same objects, and "
            "later decisions are offered them again. Copy a descriptor before changing it, or keep your own data."
        )
    return command


def differences(before: Message, after: Message, prefix: str = "") -> list[str]:
    """The dotted paths of the fields that differ between two messages of one type (``seeds[2].stage``), descending
    into nested messages and lists of messages of equal length."""
    paths: list[str] = []
    for field in before.DESCRIPTOR.fields:
        name = f"{prefix}{field.name}"
        old, new = getattr(before, field.name), getattr(after, field.name)
        presence = field.has_presence and before.HasField(field.name) != after.HasField(field.name)
        if _same(old, new) and not presence:
            continue
        nested = field.message_type is not None and not field.message_type.GetOptions().map_entry
        if nested and field.is_repeated and len(old) == len(new):
            for index, (old_item, new_item) in enumerate(zip(old, new, strict=True)):
                paths.extend(differences(old_item, new_item, f"{name}[{index}]."))
        elif nested and not field.is_repeated and not presence:
            paths.extend(differences(old, new, f"{name}."))
        else:
            paths.append(name)
    return paths


def _same(old: object, new: object) -> bool:
    """Equal, counting NaN as equal to NaN (a packet may carry NaN metrics that no policy touched)."""
    both_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    return bool(old == new) or both_nan


def _listed(paths: list[str], shown: int = 6) -> str:
    if not paths:
        return "a field's presence"
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


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
            # Fresh copies at every call: a policy that changes them fails every example the same way, instead of
            # spoiling the fixture for the examples after the first.
            offered = [BlueprintDescriptor.FromString(descriptor.SerializeToString()) for descriptor in blueprints]
            check_command(decide_read_only(policy, state, offered), state, offered)
