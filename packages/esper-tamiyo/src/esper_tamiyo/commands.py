"""Building the commands policies return.

The lifecycle facts policies reason with (which stage each operation starts from, which seeds are in flight) are
Leyline's: :mod:`esper_core.leyline.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Mapping

from esper_core.leyline import (
    AdaptationCommand,
    BlendSchedule,
    BlueprintDescriptor,
    CommandSeedOperation,
    CommandType,
    DecisionMetadata,
    SeedOperation,
)

#: Operations that increase a seed's influence on the host's output (what the risk engine may hold back).
GROWTH = frozenset(
    {
        SeedOperation.SEED_OP_GERMINATE,
        SeedOperation.SEED_OP_START_GRAFTING,
        SeedOperation.SEED_OP_STABILIZE,
        SeedOperation.SEED_OP_EVALUATE,
        SeedOperation.SEED_OP_FOSSILIZE,
    }
)
SCHEDULES = {
    "linear": BlendSchedule.BLEND_SCHEDULE_LINEAR,
    "cosine": BlendSchedule.BLEND_SCHEDULE_COSINE,
    "tanh": BlendSchedule.BLEND_SCHEDULE_TANH,
}


def noop(rationale: str, policy: str = "") -> AdaptationCommand:
    return AdaptationCommand(
        version=1,
        command_type=CommandType.COMMAND_NOOP,
        decision=DecisionMetadata(policy_name=policy, rationale=rationale),
    )


def seed_command(
    operation: SeedOperation.ValueType,
    slot_id: str,
    rationale: str,
    *,
    policy: str = "",
    blueprint_id: str = "",
    parameters: Mapping[str, float] | None = None,
    schedule: BlendSchedule.ValueType = BlendSchedule.BLEND_SCHEDULE_UNSPECIFIED,
) -> AdaptationCommand:
    return AdaptationCommand(
        version=1,
        command_type=CommandType.COMMAND_SEED,
        target_slot_id=slot_id,
        seed_operation=CommandSeedOperation(
            operation=operation,
            blueprint_id=blueprint_id,
            parameters=dict(parameters or {}),
            blend_schedule=schedule,
        ),
        decision=DecisionMetadata(policy_name=policy, rationale=rationale),
    )


def default_parameters(descriptor: BlueprintDescriptor) -> dict[str, float]:
    """Each declared parameter at its bound's default (sorted, so the command is the same every time)."""
    return {name: descriptor.allowed_parameters[name].default_value for name in sorted(descriptor.allowed_parameters)}
