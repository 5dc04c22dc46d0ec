"""The seed lifecycle's contract facts (ARCHITECTURE.md section 7), on the Leyline enums.

DORMANT → GERMINATED → TRAINING → BLENDING → SHADOWING → PROBATIONARY → FOSSILIZED;
any in-flight stage → CULLED → EMBARGOED → RESETTING → DORMANT; DORMANT or FOSSILIZED → TERMINATED.

Kasmina enforces these rules, Tamiyo's policies plan with them, Tolaria reports with them, and the testing kit
checks plugins against them. They live here, once, beside the messages they describe, so that no two subsystems
can disagree about which stage an operation starts from or whether a stage is in the forward pass. A third-party
policy or seed executor uses them too::

    from esper_core.leyline import lifecycle

    if seed.stage in lifecycle.IN_FLIGHT: ...
    source, target = lifecycle.ADVANCES[SeedOperation.SEED_OP_START_GRAFTING]

The names of enum values (:func:`stage_name`, :func:`operation_name`, ...) never raise: a value this version of
Leyline does not know (a newer peer's) is shown as ``UNKNOWN(77)``.
"""

from __future__ import annotations

from typing import TypeAlias

from esper_core.leyline import (
    AdaptationCommand,
    CommandType,
    SeedLifecycleGate,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    value_name,
)

Stage: TypeAlias = SeedLifecycleStage.ValueType
Gate: TypeAlias = SeedLifecycleGate.ValueType
Operation: TypeAlias = SeedOperation.ValueType

DORMANT = SeedLifecycleStage.SEED_STAGE_DORMANT
GERMINATED = SeedLifecycleStage.SEED_STAGE_GERMINATED
TRAINING = SeedLifecycleStage.SEED_STAGE_TRAINING
BLENDING = SeedLifecycleStage.SEED_STAGE_BLENDING
SHADOWING = SeedLifecycleStage.SEED_STAGE_SHADOWING
PROBATIONARY = SeedLifecycleStage.SEED_STAGE_PROBATIONARY
FOSSILIZED = SeedLifecycleStage.SEED_STAGE_FOSSILIZED
CULLED = SeedLifecycleStage.SEED_STAGE_CULLED
EMBARGOED = SeedLifecycleStage.SEED_STAGE_EMBARGOED
RESETTING = SeedLifecycleStage.SEED_STAGE_RESETTING
TERMINATED = SeedLifecycleStage.SEED_STAGE_TERMINATED

G0 = SeedLifecycleGate.SEED_GATE_G0_SANITY
G1 = SeedLifecycleGate.SEED_GATE_G1_GRADIENT_HEALTH
G2 = SeedLifecycleGate.SEED_GATE_G2_STABILITY
G3 = SeedLifecycleGate.SEED_GATE_G3_INTERFACE
G4 = SeedLifecycleGate.SEED_GATE_G4_SYSTEM_IMPACT
G5 = SeedLifecycleGate.SEED_GATE_G5_RESET

#: Every legal transition; anything else is refused (:func:`check_transition`).
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    DORMANT: frozenset({GERMINATED, TERMINATED}),
    GERMINATED: frozenset({TRAINING, CULLED}),
    TRAINING: frozenset({BLENDING, CULLED}),
    BLENDING: frozenset({SHADOWING, CULLED}),
    SHADOWING: frozenset({PROBATIONARY, CULLED}),
    PROBATIONARY: frozenset({FOSSILIZED, CULLED}),
    FOSSILIZED: frozenset({TERMINATED}),
    CULLED: frozenset({EMBARGOED}),
    EMBARGOED: frozenset({RESETTING}),
    RESETTING: frozenset({DORMANT}),
    TERMINATED: frozenset(),
}

#: The gate a transition into each stage must pass.
ENTRY_GATE: dict[Stage, Gate] = {
    GERMINATED: G0,
    TRAINING: G1,
    BLENDING: G2,
    SHADOWING: G3,
    PROBATIONARY: G4,
    DORMANT: G5,
}

# -- the stage sets ---------------------------------------------------------------------------------------------

#: A seed is in the slot and not yet permanent. These are the stages CULL (and CANCEL) start from, and the seeds
#: that count against ``max_concurrent_seeds``.
IN_FLIGHT: frozenset[Stage] = frozenset({GERMINATED, TRAINING, BLENDING, SHADOWING, PROBATIONARY})
#: A seed module is in the slot: its parameters exist, are saved with the model and are in the optimizer. A culled
#: seed's module is dropped at once, so CULLED is not here.
HAS_SEED: frozenset[Stage] = IN_FLIGHT | {FOSSILIZED}
#: The seed is part of the host's forward pass (in TRAINING through a straight-through path that leaves the host's
#: output value unchanged, so a seed that emits NaN still poisons it).
IN_FORWARD: frozenset[Stage] = frozenset({TRAINING, BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED})
#: The seed's counterfactual contribution is measured at decision points: in the forward pass and still removable.
MEASURED: frozenset[Stage] = IN_FORWARD & IN_FLIGHT
#: The slot is being cleared after a cull; it returns to DORMANT when the embargo is over.
CLEARING: frozenset[Stage] = frozenset({CULLED, EMBARGOED, RESETTING})

# -- operations -------------------------------------------------------------------------------------------------

#: The advance operations, in lifecycle order: each moves a seed from its source stage into its target stage.
ADVANCES: dict[Operation, tuple[Stage, Stage]] = {
    SeedOperation.SEED_OP_START_TRAINING: (GERMINATED, TRAINING),
    SeedOperation.SEED_OP_START_GRAFTING: (TRAINING, BLENDING),
    SeedOperation.SEED_OP_STABILIZE: (BLENDING, SHADOWING),
    SeedOperation.SEED_OP_EVALUATE: (SHADOWING, PROBATIONARY),
    SeedOperation.SEED_OP_FOSSILIZE: (PROBATIONARY, FOSSILIZED),
}
#: Operations that remove a seed (CANCEL is CULL under another name, kept for the prototype's vocabulary).
REMOVALS: frozenset[Operation] = frozenset({SeedOperation.SEED_OP_CULL, SeedOperation.SEED_OP_CANCEL})

#: The stages each seed operation may start from. A germination also needs the slot's embargo to be over
#: (:func:`can_germinate`).
SOURCE_STAGES: dict[Operation, frozenset[Stage]] = {
    SeedOperation.SEED_OP_GERMINATE: frozenset({DORMANT}),
    **{operation: frozenset({source}) for operation, (source, _target) in ADVANCES.items()},
    **dict.fromkeys(REMOVALS, IN_FLIGHT),
    SeedOperation.SEED_OP_FINE_TUNE: HAS_SEED,
}


def can_germinate(seed: SeedState) -> bool:
    """Whether a GERMINATE into this slot is legal now: the slot is DORMANT and no embargo remains."""
    return seed.stage == DORMANT and seed.embargo_epochs_remaining == 0


def allows(operation: Operation, seed: SeedState) -> bool:
    """Whether the lifecycle allows ``operation`` on this slot now (gates may still refuse it when applied)."""
    if operation == SeedOperation.SEED_OP_GERMINATE:
        return can_germinate(seed)
    return seed.stage in SOURCE_STAGES.get(operation, frozenset())


class IllegalTransition(ValueError):
    """A transition the lifecycle does not have."""


def check_transition(current: Stage, target: Stage) -> None:
    """Raise :class:`IllegalTransition`, naming the legal targets, unless ``current -> target`` is a transition."""
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(stage_name(s) for s in TRANSITIONS.get(current, frozenset()))) or "none"
        raise IllegalTransition(
            f"{stage_name(current)} -> {stage_name(target)} is not a lifecycle transition "
            f"(from {stage_name(current)}: {allowed})"
        )


# -- names ------------------------------------------------------------------------------------------------------


def stage_name(stage: int) -> str:
    """``"TRAINING"`` for ``SEED_STAGE_TRAINING``."""
    return value_name(SeedLifecycleStage, stage, "SEED_STAGE_")


def gate_name(gate: int) -> str:
    """``"G1_GRADIENT_HEALTH"`` for ``SEED_GATE_G1_GRADIENT_HEALTH``."""
    return value_name(SeedLifecycleGate, gate, "SEED_GATE_")


def operation_name(operation: int) -> str:
    """``"START_GRAFTING"`` for ``SEED_OP_START_GRAFTING``."""
    return value_name(SeedOperation, operation, "SEED_OP_")


def command_name(command: AdaptationCommand) -> str:
    """What a command does, in lower case: its seed operation (``"germinate"``), else its type (``"noop"``)."""
    if command.command_type == CommandType.COMMAND_SEED:
        return operation_name(command.seed_operation.operation).lower()
    return value_name(CommandType, command.command_type, "COMMAND_").lower()
