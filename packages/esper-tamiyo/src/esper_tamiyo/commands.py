"""Building the commands policies return, and the vocabulary of stages and operations they reason with."""

from __future__ import annotations

from collections.abc import Mapping

from esper_core.leyline import (
    AdaptationCommand,
    BlendSchedule,
    BlueprintDescriptor,
    CommandSeedOperation,
    CommandType,
    DecisionMetadata,
    SeedLifecycleStage,
    SeedOperation,
)

S = SeedLifecycleStage
OP = SeedOperation

#: Seeds that are neither permanent nor gone.
IN_FLIGHT = frozenset(
    {S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING,
     S.SEED_STAGE_PROBATIONARY}
)  # fmt: skip
#: The stage each advance operation starts from, latest stage first (finishing seeds comes first).
ADVANCE_FROM: dict[SeedOperation.ValueType, SeedLifecycleStage.ValueType] = {
    OP.SEED_OP_FOSSILIZE: S.SEED_STAGE_PROBATIONARY,
    OP.SEED_OP_EVALUATE: S.SEED_STAGE_SHADOWING,
    OP.SEED_OP_STABILIZE: S.SEED_STAGE_BLENDING,
    OP.SEED_OP_START_GRAFTING: S.SEED_STAGE_TRAINING,
    OP.SEED_OP_START_TRAINING: S.SEED_STAGE_GERMINATED,
}
#: Operations that increase a seed's influence on the host's output (what the risk engine may hold back).
GROWTH = frozenset(
    {OP.SEED_OP_GERMINATE, OP.SEED_OP_START_GRAFTING, OP.SEED_OP_STABILIZE, OP.SEED_OP_EVALUATE, OP.SEED_OP_FOSSILIZE}
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


def fits(descriptor: BlueprintDescriptor, slot_kind: int) -> bool:
    return not descriptor.slot_kinds or slot_kind in descriptor.slot_kinds


def operation_name(command: AdaptationCommand) -> str:
    if command.command_type != CommandType.COMMAND_SEED:
        return CommandType.Name(command.command_type).removeprefix("COMMAND_").lower()
    return SeedOperation.Name(command.seed_operation.operation).removeprefix("SEED_OP_").lower()
