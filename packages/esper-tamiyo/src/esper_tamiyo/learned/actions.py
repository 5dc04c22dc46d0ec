"""The learned policy's action space: what it can choose, what each choice means in Leyline, and when it is legal.

One module so that everything that must agree on the choices does: the network sizes its operation and schedule
heads from :data:`NUM_OPERATIONS` and :data:`NUM_SCHEDULES`, the encoder builds its legality masks and ``can_*`` slot
features with :func:`slot_allows`, decoding maps a class to its :data:`SEED_OPERATIONS` entry, the feature schema
documents :data:`MASK_RULES` (so they are part of its digest), and :class:`PolicyAction` turns a decision into the
single integer a command records and back. A change to an order or a rule here changes them all together.

- **operations**: :data:`OPERATION_NAMES` (index 0 is NOOP) and the Leyline operation of each;
- **schedules**: :data:`SCHEDULES`, the classes of the schedule head;
- **targets**: at most :data:`MAX_SLOTS` slots and :data:`MAX_BLUEPRINTS` blueprints can be chosen (the encoder
  encodes no more), which bounds the mixed-radix :attr:`PolicyAction.index`;
- **legality** per slot: :func:`slot_allows`, :func:`fits` and :func:`ramp_complete`, the executor's preconditions
  (docs/kasmina.md, ``esper_core.testing.conformance.check_command``).

Imports no torch.
"""

from __future__ import annotations

import attrs

from esper_core.leyline import BlendSchedule, SeedOperation, SeedState, lifecycle

#: Slots and blueprints beyond these counts are not encoded (the first slots in packet order, the first blueprints
#: by id), so the policy never targets them. Action indices (:attr:`PolicyAction.index`) rely on these bounds.
MAX_SLOTS = 32
MAX_BLUEPRINTS = 64

#: The operation head's classes, in order. Index 0 is "do nothing".
OPERATION_NAMES: tuple[str, ...] = (
    "NOOP",
    "GERMINATE",
    "START_TRAINING",
    "START_GRAFTING",
    "STABILIZE",
    "EVALUATE",
    "FOSSILIZE",
    "CULL",
)
NOOP, GERMINATE, START_TRAINING, START_GRAFTING, STABILIZE, EVALUATE, FOSSILIZE, CULL = range(8)
NUM_OPERATIONS = len(OPERATION_NAMES)
#: The Leyline operation of each class (NOOP has none).
SEED_OPERATIONS: tuple[SeedOperation.ValueType, ...] = (
    SeedOperation.SEED_OP_UNKNOWN,
    SeedOperation.SEED_OP_GERMINATE,
    SeedOperation.SEED_OP_START_TRAINING,
    SeedOperation.SEED_OP_START_GRAFTING,
    SeedOperation.SEED_OP_STABILIZE,
    SeedOperation.SEED_OP_EVALUATE,
    SeedOperation.SEED_OP_FOSSILIZE,
    SeedOperation.SEED_OP_CULL,
)
#: The operation classes that advance a seed, in lifecycle order (their stages: ``lifecycle.ADVANCES``).
ADVANCE_CLASSES: tuple[int, ...] = tuple(SEED_OPERATIONS.index(operation) for operation in lifecycle.ADVANCES)
#: The schedule head's classes, in order.
SCHEDULES: tuple[BlendSchedule.ValueType, ...] = (
    BlendSchedule.BLEND_SCHEDULE_LINEAR,
    BlendSchedule.BLEND_SCHEDULE_COSINE,
    BlendSchedule.BLEND_SCHEDULE_TANH,
)
NUM_SCHEDULES = len(SCHEDULES)

# -- one decision as indices ------------------------------------------------------------------------------------

_SLOT_RADIX = MAX_SLOTS + 1
_BLUEPRINT_RADIX = MAX_BLUEPRINTS + 1
_SCHEDULE_RADIX = NUM_SCHEDULES + 1


@attrs.frozen
class PolicyAction:
    """One decision in index form: operation class, and slot, blueprint and schedule indices (-1: not used).

    Slots index ``EncodedState.slot_ids`` (packet order); blueprints index ``EncodedState.blueprints`` (sorted by
    id); schedules index :data:`SCHEDULES`.
    """

    operation: int
    slot: int = -1
    blueprint: int = -1
    schedule: int = -1

    @property
    def index(self) -> int:
        """A single integer for ``DecisionMetadata.action_index`` (mixed radix; see :meth:`from_index`)."""
        return (
            ((self.operation * _SLOT_RADIX + self.slot + 1) * _BLUEPRINT_RADIX + self.blueprint + 1) * _SCHEDULE_RADIX
            + self.schedule
            + 1
        )

    @classmethod
    def from_index(cls, index: int) -> PolicyAction:
        index, schedule = divmod(index, _SCHEDULE_RADIX)
        index, blueprint = divmod(index, _BLUEPRINT_RADIX)
        operation, slot = divmod(index, _SLOT_RADIX)
        return cls(operation, slot - 1, blueprint - 1, schedule - 1)

    def as_row(self) -> list[int]:
        return [self.operation, self.slot, self.blueprint, self.schedule]


# -- legality -----------------------------------------------------------------------------------------------------


def ramp_complete(seed: SeedState) -> bool:
    """The executor's STABILIZE precondition: the alpha ramp has run all its steps."""
    return seed.alpha_steps >= seed.alpha_total_steps


def slot_allows(seed: SeedState, op: int, any_fit: bool) -> bool:
    """Whether operation class ``op`` is legal on ``seed``'s slot (``any_fit``: an offered blueprint fits it)."""
    if op == NOOP or not lifecycle.allows(SEED_OPERATIONS[op], seed):
        return False
    if op == GERMINATE:
        return any_fit
    return op != STABILIZE or ramp_complete(seed)


def _in_words(stages: frozenset[lifecycle.Stage]) -> str:
    names = [lifecycle.stage_name(stage) for stage in sorted(stages)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


#: :func:`slot_allows` in words, by operation name: the feature schema's ``masks`` (and so part of its digest:
#: the words must not change unless ``FEATURE_SCHEMA_VERSION`` does).
MASK_RULES: dict[str, str] = {
    "GERMINATE": "DORMANT, embargo_epochs_remaining == 0, and an offered blueprint fits the slot kind",
    **{
        OPERATION_NAMES[op]: f"stage SEED_STAGE_{_in_words(lifecycle.SOURCE_STAGES[SEED_OPERATIONS[op]])}"
        + (" and alpha_steps >= alpha_total_steps" if op == STABILIZE else "")
        for op in ADVANCE_CLASSES
    },
    "CULL": f"stage {_in_words(lifecycle.IN_FLIGHT)}",
}
