"""The seed lifecycle of ARCHITECTURE.md section 7, on the Leyline ``SeedLifecycleStage`` enum.

DORMANT → GERMINATED → TRAINING → BLENDING → SHADOWING → PROBATIONARY → FOSSILIZED;
any active stage → CULLED → EMBARGOED → RESETTING → DORMANT; DORMANT or FOSSILIZED → TERMINATED.
Only these transitions exist; :func:`check_transition` refuses every other one.
"""

from __future__ import annotations

from typing import TypeAlias

from esper_core.leyline import SeedLifecycleGate, SeedLifecycleStage, SeedOperation

Stage: TypeAlias = SeedLifecycleStage.ValueType
Gate: TypeAlias = SeedLifecycleGate.ValueType

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

#: Stages in which a seed can be culled (it exists and is not yet permanent).
ACTIVE = frozenset({GERMINATED, TRAINING, BLENDING, SHADOWING, PROBATIONARY})
#: Stages in which a seed module exists (a culled seed's module is dropped at once).
HAS_SEED = frozenset({GERMINATED, TRAINING, BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED})
#: Stages in which the seed is part of the host's forward pass.
IN_FORWARD = frozenset({TRAINING, BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED})
#: Stages whose counterfactual contribution is measured at decision points.
MEASURED = frozenset({TRAINING, BLENDING, SHADOWING, PROBATIONARY})
#: Stages whose parameters are in the optimizer.
OPTIMIZED = frozenset({GERMINATED, TRAINING, BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED})

#: The stage each advance operation moves a seed into, and the stage it must come from.
ADVANCES: dict[SeedOperation.ValueType, tuple[Stage, Stage]] = {
    SeedOperation.SEED_OP_START_TRAINING: (GERMINATED, TRAINING),
    SeedOperation.SEED_OP_START_GRAFTING: (TRAINING, BLENDING),
    SeedOperation.SEED_OP_STABILIZE: (BLENDING, SHADOWING),
    SeedOperation.SEED_OP_EVALUATE: (SHADOWING, PROBATIONARY),
    SeedOperation.SEED_OP_FOSSILIZE: (PROBATIONARY, FOSSILIZED),
}


class IllegalTransition(ValueError):
    """A transition the lifecycle does not have."""


def stage_name(stage: Stage) -> str:
    return SeedLifecycleStage.Name(stage).removeprefix("SEED_STAGE_")


def gate_name(gate: Gate) -> str:
    return SeedLifecycleGate.Name(gate).removeprefix("SEED_GATE_")


def check_transition(current: Stage, target: Stage) -> None:
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(stage_name(s) for s in TRANSITIONS.get(current, frozenset()))) or "none"
        raise IllegalTransition(
            f"{stage_name(current)} -> {stage_name(target)} is not a lifecycle transition "
            f"(from {stage_name(current)}: {allowed})"
        )
