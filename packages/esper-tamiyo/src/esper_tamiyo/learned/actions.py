"""The learned policy's action space: what it can choose, what each choice means in Leyline, and when it is legal.

One module so that everything that must agree on the choices does: the network sizes its operation and schedule
heads from :data:`NUM_OPERATIONS` and :data:`NUM_SCHEDULES`, the encoder builds its legality masks and ``can_*`` slot
features with :func:`slot_allows`, decoding maps a class to its :data:`SEED_OPERATIONS` entry, the feature schema
documents :data:`MASK_RULES` (so they are part of its digest), and :class:`PolicyAction` turns a decision into the
single integer a command records and back. A change to an order or a rule here changes them all together.

- **operations**: :data:`OPERATION_NAMES` (index 0 is NOOP) and the Leyline operation of each;
- **schedules**: :data:`SCHEDULES`, the classes of the schedule head;
- **widths**: :data:`WIDTH_CLASSES`, the classes of the width head, for blueprints with an integer ``width``
  parameter (:func:`width_choices` says which width each class stands for, :func:`nearest_width_class` reads a
  width back into a class);
- **targets**: at most :data:`MAX_SLOTS` slots and :data:`MAX_BLUEPRINTS` blueprints can be chosen (the encoder
  encodes no more), which bounds the mixed-radix :attr:`PolicyAction.index`;
- **legality** per slot: :func:`slot_allows` and :func:`ramp_complete`, the executor's preconditions
  (docs/kasmina.md, ``esper_core.testing.conformance.check_command``); the parameter budget is the encoder's (it
  needs the blueprint catalogs' costs), and :data:`MASK_RULES` states it.

Imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from esper_core.leyline import BlendSchedule, BlueprintDescriptor, SeedOperation, SeedState, lifecycle

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

#: The blueprint parameter the width head chooses: the number of new channels, neurons or hidden units.
WIDTH_PARAMETER = "width"
#: The width head's classes: the widths Kasmina predicts a loss decrease for at every DORMANT width slot
#: (``esper_kasmina.growth_statistics.CANDIDATE_WIDTHS``; written out here, as Tamiyo may not import Kasmina), so
#: each class has its own prediction among the slot features.
WIDTH_CLASSES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
NUM_WIDTHS = len(WIDTH_CLASSES)

# -- one decision as indices ------------------------------------------------------------------------------------

_SLOT_RADIX = MAX_SLOTS + 1
_BLUEPRINT_RADIX = MAX_BLUEPRINTS + 1
_SCHEDULE_RADIX = NUM_SCHEDULES + 1
_WIDTH_RADIX = NUM_WIDTHS + 1
#: Columns of :meth:`PolicyAction.as_row` (and of the action tensors a trainer passes to ``evaluate_actions``).
ACTION_COLUMNS = ("operation", "slot", "blueprint", "schedule", "width")


@attrs.frozen
class PolicyAction:
    """One decision in index form: operation class, and slot, blueprint, schedule and width indices (-1: not used).

    Slots index ``EncodedState.slot_ids`` (packet order); blueprints index ``EncodedState.blueprints`` (sorted by
    id); schedules index :data:`SCHEDULES`; widths index :data:`WIDTH_CLASSES` and are used only by a germination
    of a blueprint with a width factor (an integer ``width`` parameter; see :func:`width_choices`).
    """

    operation: int
    slot: int = -1
    blueprint: int = -1
    schedule: int = -1
    width: int = -1

    @property
    def index(self) -> int:
        """A single integer for ``DecisionMetadata.action_index``: mixed radix, each part shifted by one so that
        -1 ("not used") is 0, and NOOP is 0 as a whole::

            ((((op * 33 + slot + 1) * 65 + blueprint + 1) * 4 + schedule + 1) * 8 + width + 1

        (33 = MAX_SLOTS + 1, 65 = MAX_BLUEPRINTS + 1, 4 = schedules + 1, 8 = width classes + 1).
        :meth:`from_index` inverts it.
        """
        index = (self.operation * _SLOT_RADIX + self.slot + 1) * _BLUEPRINT_RADIX + self.blueprint + 1
        return ((index * _SCHEDULE_RADIX) + self.schedule + 1) * _WIDTH_RADIX + self.width + 1

    @classmethod
    def from_index(cls, index: int) -> PolicyAction:
        index, width = divmod(index, _WIDTH_RADIX)
        index, schedule = divmod(index, _SCHEDULE_RADIX)
        index, blueprint = divmod(index, _BLUEPRINT_RADIX)
        operation, slot = divmod(index, _SLOT_RADIX)
        return cls(operation, slot - 1, blueprint - 1, schedule - 1, width - 1)

    def as_row(self) -> list[int]:
        """The action as a row of :data:`ACTION_COLUMNS`."""
        return [self.operation, self.slot, self.blueprint, self.schedule, self.width]


# -- germination parameters ---------------------------------------------------------------------------------


def germination_parameters(descriptor: BlueprintDescriptor) -> dict[str, float]:
    """Each declared parameter at its default, forced inside its bounds (and whole for integer parameters): what a
    germination starts from, before the width head sets ``width``.

    Keys are read in sorted order; a parameter whose bounds are empty (min > max) or not finite is left out.
    """
    parameters: dict[str, float] = {}
    for name in sorted(descriptor.allowed_parameters):
        bounds = descriptor.allowed_parameters[name]
        low, high = bounds.min_value, bounds.max_value
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            continue
        value = bounds.default_value if math.isfinite(bounds.default_value) else low
        value = min(max(value, low), high)
        if bounds.integer:
            value = float(round(value))
            if value < low:
                value = float(math.ceil(low))
            if value > high:
                value = float(math.floor(high))
            if not low <= value <= high:
                continue  # no whole number inside the bounds
        parameters[name] = value
    return parameters


# -- widths -------------------------------------------------------------------------------------------------------


def width_choices(descriptor: BlueprintDescriptor) -> tuple[float | None, ...] | None:
    """The width each class of :data:`WIDTH_CLASSES` stands for with ``descriptor``, or ``None`` for a class that
    adds no distinct width; ``None`` as a whole when the blueprint has no width factor.

    A blueprint has a width factor when it declares an integer ``width`` parameter with finite bounds that hold a
    whole number. A class's width is its value clipped into ``[ceil(min_value), floor(max_value)]``. Several classes
    may clip to one width (bounds 1..4: the classes 4 to 64 all give 4); only the class whose value is nearest to
    that width (in log scale, the lower on a tie) keeps it, so every width the policy can choose has exactly one
    class, and an ``action_index`` one meaning.
    """
    bounds = descriptor.allowed_parameters.get(WIDTH_PARAMETER)
    if bounds is None or not bounds.integer:
        return None
    if not (math.isfinite(bounds.min_value) and math.isfinite(bounds.max_value)):
        return None
    low, high = math.ceil(bounds.min_value), math.floor(bounds.max_value)
    if low > high:
        return None
    clipped = [min(max(width, low), high) for width in WIDTH_CLASSES]
    keeper: dict[int, int] = {}
    for index, width in enumerate(clipped):
        best = keeper.get(width)
        if best is None or _log_distance(WIDTH_CLASSES[index], width) < _log_distance(WIDTH_CLASSES[best], width):
            keeper[width] = index
    return tuple(float(width) if keeper[width] == index else None for index, width in enumerate(clipped))


def _log_distance(a: float, b: float) -> float:
    return abs(math.log2(max(a, 1e-9)) - math.log2(max(b, 1e-9)))


def nearest_width_class(width: float, candidates: Sequence[tuple[int, float]]) -> int:
    """Among ``candidates`` (class index, the width it stands for), the class whose width is nearest to ``width``
    in log scale (the lowest index on a tie); -1 when there is no candidate. This is how a command that names a width
    but no ``action_index`` (a heuristic decision being cloned) is read back into a class."""
    if not candidates:
        return -1
    return min(candidates, key=lambda candidate: (_log_distance(candidate[1], width), candidate[0]))[0]


# -- legality -----------------------------------------------------------------------------------------------------


def ramp_complete(seed: SeedState) -> bool:
    """The executor's STABILIZE precondition: the alpha ramp has run all its steps."""
    return seed.alpha_steps >= seed.alpha_total_steps


def slot_allows(seed: SeedState, op: int, any_fit: bool) -> bool:
    """Whether operation class ``op`` is legal on ``seed``'s slot (``any_fit``: an offered blueprint is legal there,
    fitting the slot and the budget; see :data:`CHOICE_RULES`)."""
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
    "GERMINATE": "DORMANT, embargo_epochs_remaining == 0, and an offered blueprint is legal in the slot",
    **{
        OPERATION_NAMES[op]: f"stage SEED_STAGE_{_in_words(lifecycle.SOURCE_STAGES[SEED_OPERATIONS[op]])}"
        + (" and alpha_steps >= alpha_total_steps" if op == STABILIZE else "")
        for op in ADVANCE_CLASSES
    },
    "CULL": f"stage {_in_words(lifecycle.IN_FLIGHT)}",
}

#: When a germination's blueprint and width are legal, in words: the feature schema's ``choice_masks`` (part of its
#: digest, like :data:`MASK_RULES`). The encoder computes them (it holds the blueprint catalogs and the budget).
CHOICE_RULES: dict[str, str] = {
    "blueprint": "fits the slot (esper_core.leyline.growth.fits) and some germination of it is within the budget: "
    "a width class, or for a blueprint without a width factor its default parameters",
    "width": "the class adds a distinct width inside the blueprint's bounds (width_choices) and its catalog cost is "
    "at most the budget left and the per-seed cap; when no catalog knows the cost, only the class nearest the "
    "default width (log scale), which then germinates at the default width; nothing once no budget is left",
    "budget": "host = TrainingMetrics.parameter_count - parameters of the seeds in a slot (GERMINATED to FOSSILIZED), "
    "at least 1; budget left = max_added_parameter_fraction * host - those seeds' parameters; per-seed cap = "
    "max_seed_parameter_fraction * host",
}
