"""The learned policy's input: a documented, versioned encoding of (state packet, offered blueprints) into tensors.

Three groups of features, each a fixed-width float vector, plus integer indices for a learned blueprint embedding:

- **global** (one vector per decision): progress, losses, accuracies, gradient statistics, learning rate,
  latencies, counters, hardware load and the fraction of slots in each lifecycle stage;
- **slot** (one row per ``SeedState``, in packet order): stage, slot kind, activation size, depth, alpha and its
  ramp, ages, contributions, seed loss trend, gradient norms, activation RMS, embargo, size, risk, isolation
  violations, and which operations the slot allows;
- **blueprint** (one row per offered descriptor, sorted by ``blueprint_id``): risk, tier, curriculum stage, flags,
  supported slot kinds.

Every optional (proto3 ``optional``) field becomes two features: its scaled value (0 when absent) and a presence
flag, so "not measured" is never confused with zero. NaN counts as absent; infinities are clipped to the bound of
their scale; ``global.nonfinite_inputs`` counts both. Maps (``extras``, ``blueprint_parameters``,
``allowed_parameters``) are never iterated in insertion order: where a map is read, its keys are sorted.

Blueprint identity is a **stable vocabulary index**: ``1 + int(SHA-256("esper.blueprint:" + id)[:8]) mod (V - 1)``
with index 0 meaning "no blueprint". Never Python's ``hash()``, whose value changes with every process.

The schema (:func:`feature_schema`) lists every feature with its source and scaling; the SHA-256 of its canonical
JSON is the ``feature_schema_digest`` that a ``PolicyUpdate`` must match. Change any feature, scaling, limit or the
vocabulary size and the digest changes; bump :data:`FEATURE_SCHEMA_VERSION` whenever the encoding code changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import torch

from esper_core.leyline import (
    BlendSchedule,
    BlueprintDescriptor,
    BlueprintTier,
    OptimizerFamily,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
)

#: Bump whenever the meaning, order or scaling of any feature changes (the digest changes with the schema).
FEATURE_SCHEMA_VERSION = 1
#: Slots and blueprints beyond these counts are not encoded (the first slots in packet order, the first blueprints
#: by id), so the policy never targets them. Action indices (:func:`action_index`) rely on these bounds.
MAX_SLOTS = 32
MAX_BLUEPRINTS = 64
DEFAULT_BLUEPRINT_VOCABULARY = 1024
BLUEPRINT_INDEX_PREFIX = "esper.blueprint:"

S = SeedLifecycleStage
OP = SeedOperation

# -- the action space -------------------------------------------------------------------------------------------

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
    OP.SEED_OP_UNKNOWN,
    OP.SEED_OP_GERMINATE,
    OP.SEED_OP_START_TRAINING,
    OP.SEED_OP_START_GRAFTING,
    OP.SEED_OP_STABILIZE,
    OP.SEED_OP_EVALUATE,
    OP.SEED_OP_FOSSILIZE,
    OP.SEED_OP_CULL,
)
#: The stage each advance operation needs (docs/kasmina.md).
ADVANCE_SOURCE: dict[int, SeedLifecycleStage.ValueType] = {
    START_TRAINING: S.SEED_STAGE_GERMINATED,
    START_GRAFTING: S.SEED_STAGE_TRAINING,
    STABILIZE: S.SEED_STAGE_BLENDING,
    EVALUATE: S.SEED_STAGE_SHADOWING,
    FOSSILIZE: S.SEED_STAGE_PROBATIONARY,
}
CULLABLE = frozenset(
    {S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING,
     S.SEED_STAGE_PROBATIONARY}
)  # fmt: skip
#: The schedule head's classes, in order.
SCHEDULES: tuple[BlendSchedule.ValueType, ...] = (
    BlendSchedule.BLEND_SCHEDULE_LINEAR,
    BlendSchedule.BLEND_SCHEDULE_COSINE,
    BlendSchedule.BLEND_SCHEDULE_TANH,
)
NUM_SCHEDULES = len(SCHEDULES)

#: Every lifecycle stage but UNKNOWN (an unknown or future stage encodes as all zeros).
STAGES: tuple[SeedLifecycleStage.ValueType, ...] = tuple(stage for stage in S.values() if stage != S.SEED_STAGE_UNKNOWN)
SLOT_KINDS: tuple[SlotKind.ValueType, ...] = (
    SlotKind.SLOT_KIND_CONV2D,
    SlotKind.SLOT_KIND_VECTOR,
    SlotKind.SLOT_KIND_SEQUENCE,
)
TIERS: tuple[BlueprintTier.ValueType, ...] = (
    BlueprintTier.BLUEPRINT_TIER_SAFE,
    BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL,
    BlueprintTier.BLUEPRINT_TIER_HIGH_RISK,
)
OPTIMIZERS: tuple[OptimizerFamily.ValueType, ...] = tuple(
    family for family in OptimizerFamily.values() if family != OptimizerFamily.OPTIMIZER_FAMILY_UNSPECIFIED
)

# -- scalings ---------------------------------------------------------------------------------------------------

_BOUND = 10.0


@attrs.frozen
class Log1p:
    """``min(log1p(max(x, 0) * mult) / div, 10)`` for non-negative magnitudes spanning decades."""

    div: float = 1.0
    mult: float = 1.0

    def __call__(self, x: float) -> float:
        return min(math.log1p(max(x, 0.0) * self.mult) / self.div, _BOUND)

    def describe(self) -> str:
        inner = f"max(x, 0) * {self.mult:g}" if self.mult != 1.0 else "max(x, 0)"
        return f"log1p({inner})" + (f" / {self.div:g}" if self.div != 1.0 else "") + ", at most 10"


@attrs.frozen
class SignedLog1p:
    """``sign(x) * log1p(|x| * mult)``, clipped to [-10, 10], for signed changes."""

    mult: float = 1.0

    def __call__(self, x: float) -> float:
        return max(-_BOUND, min(math.copysign(math.log1p(abs(x) * self.mult), x), _BOUND))

    def describe(self) -> str:
        return f"sign(x) * log1p(|x| * {self.mult:g}), clipped to [-10, 10]"


@attrs.frozen
class Clip:
    """``x`` clipped to [low, high], divided by ``div``."""

    low: float = 0.0
    high: float = 1.0
    div: float = 1.0

    def __call__(self, x: float) -> float:
        return max(self.low, min(x, self.high)) / self.div

    def describe(self) -> str:
        return f"clip(x, {self.low:g}, {self.high:g})" + (f" / {self.div:g}" if self.div != 1.0 else "")


@attrs.frozen
class Log10:
    """``(log10(max(x, 1e-12)) - center) / div``, clipped to [-5, 5], for rates such as learning rates."""

    center: float = -3.0
    div: float = 2.0

    def __call__(self, x: float) -> float:
        return max(-5.0, min((math.log10(max(x, 1e-12)) - self.center) / self.div, 5.0))

    def describe(self) -> str:
        return f"(log10(max(x, 1e-12)) - ({self.center:g})) / {self.div:g}, clipped to [-5, 5]"


Scale = Log1p | SignedLog1p | Clip | Log10

UNIT = Clip(0.0, 1.0)
LOG = Log1p()
FLAG = "1 if true else 0"
PRESENT = "1 if the field is set (and not NaN) else 0"


@attrs.frozen
class Feature:
    """One column of a feature vector: its name, where it comes from and how it is scaled."""

    name: str
    source: str
    scaling: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "scaling": self.scaling}


# -- global features --------------------------------------------------------------------------------------------

#: Optional ``TrainingMetrics`` fields, each encoded as (scaled value, presence flag).
OPTIONAL_METRICS: tuple[tuple[str, Scale], ...] = (
    ("train_loss", LOG),
    ("train_accuracy", UNIT),
    ("val_loss", LOG),
    ("val_accuracy", UNIT),
    ("best_val_loss", LOG),
    ("loss_delta", SignedLog1p(10.0)),
    ("loss_ewma", LOG),
    ("loss_volatility", Log1p(mult=10.0)),
    ("gradient_norm", LOG),
    ("gradient_norm_ewma", LOG),
    ("gradient_variance", LOG),
    ("learning_rate", Log10(-3.0, 2.0)),
    ("momentum", Clip(0.0, 2.0)),
    ("samples_per_second", Log1p(div=10.0)),
    ("epoch_duration_ms", Log1p(div=10.0)),
    ("step_latency_ms", Log1p(div=5.0)),
    ("hook_latency_ms", Log1p(div=5.0)),
    ("tamiyo_latency_ms", Log1p(div=5.0)),
    ("kasmina_apply_ms", Log1p(div=5.0)),
    ("input_wait_ms", Log1p(div=5.0)),
    ("gradient_conflict_rate", UNIT),
)
EPOCH_SCALE = Log1p(div=5.0)
STEP_SCALE = Log1p(div=15.0)
PARAMETER_SCALE = Log1p(div=20.0)
GAP_SCALE = SignedLog1p(1.0)
ABOVE_BEST_SCALE = SignedLog1p(10.0)
PERCENT_SCALE = Clip(0.0, 150.0, 100.0)
SLOT_COUNT_SCALE = Log1p(div=math.log1p(MAX_SLOTS))
BLUEPRINT_COUNT_SCALE = Log1p(div=math.log1p(MAX_BLUEPRINTS))


def _stage_name(stage: int) -> str:
    return S.Name(stage).removeprefix("SEED_STAGE_")  # type: ignore[arg-type]


def _global_schema() -> list[Feature]:
    m = "TrainingMetrics"
    features = [
        Feature("progress", f"{m}.epoch / {m}.epochs_total", "clip(x, 0, 1); 0 when epochs_total is unset or 0"),
        Feature("progress.present", f"{m}.epochs_total", "1 if epochs_total is set and > 0 else 0"),
        Feature("epochs_remaining", f"{m}.epochs_total - {m}.epoch", EPOCH_SCALE.describe() + "; 0 when unset"),
        Feature("epoch", f"{m}.epoch", EPOCH_SCALE.describe()),
        Feature("global_step", f"{m}.global_step", STEP_SCALE.describe()),
    ]
    for field, scale in OPTIONAL_METRICS:
        features.append(Feature(field, f"{m}.{field}", scale.describe() + "; 0 when absent"))
        features.append(Feature(f"{field}.present", f"{m}.{field}", PRESENT))
    features += [
        Feature("generalization_gap", f"{m}.val_loss - {m}.train_loss", GAP_SCALE.describe()),
        Feature("generalization_gap.present", "both losses", "1 if both are present else 0"),
        Feature("val_loss_above_best", f"{m}.val_loss - {m}.best_val_loss", ABOVE_BEST_SCALE.describe()),
        Feature("val_loss_above_best.present", "both losses", "1 if both are present else 0"),
    ]
    for family in OPTIMIZERS:
        name = OptimizerFamily.Name(family).removeprefix("OPTIMIZER_FAMILY_")
        features.append(Feature(f"optimizer.{name}", f"{m}.optimizer_family", "one-hot; UNSPECIFIED is all zeros"))
    features += [
        Feature("isolation_violations", f"{m}.isolation_violations", LOG.describe()),
        Feature("rollbacks", f"{m}.rollbacks", LOG.describe()),
        Feature("parameter_count", f"{m}.parameter_count", PARAMETER_SCALE.describe()),
        Feature("gpu_utilization", "HardwareContext.utilization_percent", PERCENT_SCALE.describe()),
        Feature("gpu_utilization.present", "HardwareContext.utilization_percent", PRESENT),
        Feature(
            "memory_free_fraction",
            "HardwareContext.available_memory_gb / total_memory_gb",
            "clip(x, 0, 1); 0 when total_memory_gb is 0",
        ),
        Feature("memory_free_fraction.present", "HardwareContext.total_memory_gb", "1 if > 0 else 0"),
        Feature("cpu_utilization", "HardwareContext.cpu_utilization_percent", PERCENT_SCALE.describe()),
        Feature("cpu_utilization.present", "HardwareContext.cpu_utilization_percent", PRESENT),
        Feature("slot_count", "len(SystemStatePacket.seeds), at most 32", SLOT_COUNT_SCALE.describe()),
        Feature("blueprint_count", "offered blueprints (unique ids), at most 64", BLUEPRINT_COUNT_SCALE.describe()),
    ]
    for stage in STAGES:
        features.append(
            Feature(f"stage_fraction.{_stage_name(stage)}", "SeedState.stage over encoded slots", "count / slots")
        )
    features += [
        Feature("germinable_fraction", "slots where GERMINATE is legal", "count / slots"),
        Feature(
            "seed_parameter_fraction",
            f"sum of SeedState.parameter_count / {m}.parameter_count",
            "clip(x, 0, 1); 0 when the host count is 0",
        ),
        Feature("nonfinite_inputs", "NaN or infinite values among every encoded float field", LOG.describe()),
    ]
    return features


# -- slot features ----------------------------------------------------------------------------------------------

#: Optional ``SeedState`` fields, each encoded as (scaled value, presence flag).
OPTIONAL_SLOT_FIELDS: tuple[tuple[str, Scale], ...] = (
    ("contribution", SignedLog1p(10.0)),
    ("contribution_accuracy", SignedLog1p(100.0)),
    ("seed_loss_delta", SignedLog1p(10.0)),
    ("gradient_norm", LOG),
    ("host_gradient_norm", LOG),
    ("activation_rms", LOG),
    ("learning_rate", Log10(-3.0, 2.0)),
)
SIZE_SCALE = Log1p(div=14.0)
WIDTH_SCALE = Log1p(div=7.0)
ALPHA_STEPS_SCALE = Log1p(div=5.0)
AGE_SCALE = Log1p(div=4.0)
EMBARGO_SCALE = Log1p(div=2.0)


def _slot_schema() -> list[Feature]:
    s = "SeedState"
    features = [
        Feature(f"stage.{_stage_name(stage)}", f"{s}.stage", "one-hot; UNKNOWN is all zeros") for stage in STAGES
    ]
    features += [
        Feature(f"kind.{SlotKind.Name(kind).removeprefix('SLOT_KIND_')}", f"{s}.slot_kind", "one-hot")
        for kind in SLOT_KINDS
    ]
    features += [
        Feature("activation_size", f"product of {s}.slot_shape", SIZE_SCALE.describe()),
        Feature("width", f"{s}.slot_shape: C (conv), D (vector, sequence)", WIDTH_SCALE.describe()),
        Feature("extent", f"{s}.slot_shape: H*W (conv), L (sequence), 0 (vector)", WIDTH_SCALE.describe()),
        Feature("depth", f"{s}.layer_depth / max layer_depth in the packet", "in [0, 1]; 0 when every depth is 0"),
        Feature("has_seed", f"{s}.seed_id", "1 if non-empty else 0"),
        Feature("alpha", f"{s}.alpha", UNIT.describe()),
        Feature("alpha_progress", f"{s}.alpha_steps / alpha_total_steps", "clip(x, 0, 1); 0 when total is 0"),
        Feature("ramp_complete", f"{s}.alpha_steps >= alpha_total_steps", FLAG),
        Feature("alpha_total_steps", f"{s}.alpha_total_steps", ALPHA_STEPS_SCALE.describe()),
    ]
    features += [
        Feature(
            f"schedule.{BlendSchedule.Name(schedule).removeprefix('BLEND_SCHEDULE_')}",
            f"{s}.blend_schedule",
            "one-hot; UNSPECIFIED is all zeros",
        )
        for schedule in SCHEDULES
    ]
    features += [
        Feature("age_epochs", f"{s}.age_epochs", AGE_SCALE.describe()),
        Feature("stage_epochs", f"{s}.stage_epochs", AGE_SCALE.describe()),
    ]
    for field, scale in OPTIONAL_SLOT_FIELDS:
        features.append(Feature(field, f"{s}.{field}", scale.describe() + "; 0 when absent"))
        features.append(Feature(f"{field}.present", f"{s}.{field}", PRESENT))
    features += [
        Feature("embargo_epochs", f"{s}.embargo_epochs_remaining", EMBARGO_SCALE.describe()),
        Feature("embargoed", f"{s}.embargo_epochs_remaining > 0", FLAG),
        Feature("parameter_count", f"{s}.parameter_count", PARAMETER_SCALE.describe()),
        Feature(
            "parameter_fraction",
            f"{s}.parameter_count / TrainingMetrics.parameter_count",
            "clip(x, 0, 1); 0 when the host count is 0",
        ),
        Feature("risk_score", f"{s}.risk_score", UNIT.describe()),
        Feature("isolation_violations", f"{s}.isolation_violations", LOG.describe()),
        Feature("blueprint_fit_fraction", "offered blueprints whose slot_kinds fit the slot", "count / blueprints"),
        Feature("can_germinate", "GERMINATE is legal here (see masks)", FLAG),
        Feature("can_advance", "some advance operation is legal here (see masks)", FLAG),
        Feature("can_cull", "CULL is legal here (see masks)", FLAG),
    ]
    return features


# -- blueprint features -----------------------------------------------------------------------------------------

CURRICULUM_SCALE = Clip(0.0, 12.0, 6.0)
BLUEPRINT_PARAMETERS_SCALE = Log1p(div=2.0)


def _blueprint_schema() -> list[Feature]:
    b = "BlueprintDescriptor"
    features = [Feature("risk", f"{b}.risk", UNIT.describe())]
    features += [
        Feature(f"tier.{BlueprintTier.Name(tier).removeprefix('BLUEPRINT_TIER_')}", f"{b}.tier", "one-hot")
        for tier in TIERS
    ]
    features += [
        Feature("curriculum_stage", f"{b}.stage", CURRICULUM_SCALE.describe()),
        Feature("quarantine_only", f"{b}.quarantine_only", FLAG),
        Feature("approval_required", f"{b}.approval_required", FLAG),
    ]
    features += [
        Feature(
            f"supports.{SlotKind.Name(kind).removeprefix('SLOT_KIND_')}",
            f"{b}.slot_kinds",
            "1 if listed, or if slot_kinds is empty (any kind)",
        )
        for kind in SLOT_KINDS
    ]
    features += [
        Feature("any_kind", f"{b}.slot_kinds", "1 if empty (fits every slot kind) else 0"),
        Feature("parameter_count", f"len({b}.allowed_parameters)", BLUEPRINT_PARAMETERS_SCALE.describe()),
        Feature("fits_germinable_slot", "fits some slot where GERMINATE is legal", FLAG),
        Feature("in_use_fraction", "slots whose SeedState.blueprint_id is this blueprint", "count / slots"),
    ]
    return features


GLOBAL_FEATURES: tuple[Feature, ...] = tuple(_global_schema())
SLOT_FEATURES: tuple[Feature, ...] = tuple(_slot_schema())
BLUEPRINT_FEATURES: tuple[Feature, ...] = tuple(_blueprint_schema())
GLOBAL_DIM = len(GLOBAL_FEATURES)
SLOT_DIM = len(SLOT_FEATURES)
BLUEPRINT_DIM = len(BLUEPRINT_FEATURES)


def feature_schema(vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY) -> dict[str, Any]:
    """The complete, JSON-ready description of the encoding for a blueprint vocabulary of ``vocabulary`` entries."""
    return {
        "encoding": "esper.tamiyo.learned.features",
        "version": FEATURE_SCHEMA_VERSION,
        "global": [feature.as_json() for feature in GLOBAL_FEATURES],
        "slot": [feature.as_json() for feature in SLOT_FEATURES],
        "blueprint": [feature.as_json() for feature in BLUEPRINT_FEATURES],
        "blueprint_index": {
            "rule": f"1 + int.from_bytes(sha256(('{BLUEPRINT_INDEX_PREFIX}' + blueprint_id).encode('utf-8'))"
            ".digest()[:8], 'big') % (vocabulary - 1); 0 means no blueprint",
            "vocabulary": vocabulary,
        },
        "limits": {"max_slots": MAX_SLOTS, "max_blueprints": MAX_BLUEPRINTS},
        "slot_order": "packet order (SystemStatePacket.seeds)",
        "blueprint_order": "sorted by blueprint_id; duplicates keep the first by serialized bytes",
        "operations": list(OPERATION_NAMES),
        "schedules": [BlendSchedule.Name(schedule) for schedule in SCHEDULES],
        "masks": {
            "GERMINATE": "DORMANT, embargo_epochs_remaining == 0, and an offered blueprint fits the slot kind",
            **{
                OPERATION_NAMES[op]: f"stage {S.Name(stage)}"
                + (" and alpha_steps >= alpha_total_steps" if op == STABILIZE else "")
                for op, stage in ADVANCE_SOURCE.items()
            },
            "CULL": "stage GERMINATED, TRAINING, BLENDING, SHADOWING or PROBATIONARY",
        },
    }


def schema_digest(vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`feature_schema`: the ``feature_schema_digest``."""
    text = json.dumps(feature_schema(vocabulary), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The schema of the default vocabulary, for reading.
FEATURE_SCHEMA: dict[str, Any] = feature_schema()


def blueprint_index(blueprint_id: str, vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY) -> int:
    """The stable embedding index of ``blueprint_id`` in ``[1, vocabulary)``; 0 for an empty id."""
    if not blueprint_id:
        return 0
    digest = hashlib.sha256((BLUEPRINT_INDEX_PREFIX + blueprint_id).encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (vocabulary - 1)


# -- legality -----------------------------------------------------------------------------------------------------


def fits(descriptor: BlueprintDescriptor, slot_kind: int) -> bool:
    """Whether ``descriptor`` can grow in a slot of ``slot_kind`` (an empty ``slot_kinds`` fits every kind)."""
    return not descriptor.slot_kinds or slot_kind in descriptor.slot_kinds


def ramp_complete(seed: SeedState) -> bool:
    """The executor's STABILIZE precondition: the alpha ramp has run all its steps."""
    return seed.alpha_steps >= seed.alpha_total_steps


def slot_allows(seed: SeedState, op: int, any_fit: bool) -> bool:
    """Whether operation class ``op`` is legal on ``seed``'s slot (``any_fit``: an offered blueprint fits it)."""
    if op == GERMINATE:
        return seed.stage == S.SEED_STAGE_DORMANT and seed.embargo_epochs_remaining == 0 and any_fit
    if op == CULL:
        return seed.stage in CULLABLE
    source = ADVANCE_SOURCE.get(op)
    if source is None or seed.stage != source:
        return False
    return op != STABILIZE or ramp_complete(seed)


def unique_blueprints(blueprints: Iterable[BlueprintDescriptor]) -> tuple[BlueprintDescriptor, ...]:
    """Offered descriptors in canonical order: sorted by id, one per id, at most :data:`MAX_BLUEPRINTS`.

    The order never depends on the caller's order: among duplicates of one id the one with the smallest
    deterministic serialization wins.
    """
    keyed = sorted(
        ((descriptor.blueprint_id, descriptor.SerializeToString(deterministic=True), descriptor)
         for descriptor in blueprints if descriptor.blueprint_id),
        key=lambda item: (item[0], item[1]),
    )  # fmt: skip
    chosen: dict[str, BlueprintDescriptor] = {}
    for blueprint_id, _, descriptor in keyed:
        chosen.setdefault(blueprint_id, descriptor)
    return tuple(chosen.values())[:MAX_BLUEPRINTS]


# -- the encoding ---------------------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class EncodedState:
    """One decision point, encoded. Tensors are float32 (features), int64 (indices) and bool (masks).

    - ``global_features`` ``[GLOBAL_DIM]``; ``slot_features`` ``[S, SLOT_DIM]``; ``blueprint_features``
      ``[B, BLUEPRINT_DIM]``;
    - ``slot_blueprint_index`` ``[S]`` (the vocabulary index of each slot's current blueprint, 0 for none) and
      ``blueprint_index`` ``[B]``;
    - ``slot_mask`` ``[NUM_OPERATIONS, S]``: operation class ``o`` is legal on slot ``s`` (row NOOP all False);
      ``fit_mask`` ``[S, B]``: blueprint ``b`` fits slot ``s``'s kind;
    - ``slot_ids`` and ``blueprints`` name what the indices point at.
    """

    global_features: torch.Tensor
    slot_features: torch.Tensor
    slot_blueprint_index: torch.Tensor
    blueprint_features: torch.Tensor
    blueprint_index: torch.Tensor
    slot_mask: torch.Tensor
    fit_mask: torch.Tensor
    slot_ids: tuple[str, ...]
    blueprints: tuple[BlueprintDescriptor, ...]
    #: Fraction of the optional ``TrainingMetrics`` fields that were present.
    coverage: float
    #: Slots or blueprints beyond the limits that were left out.
    truncated_slots: int = 0
    truncated_blueprints: int = 0

    @property
    def blueprint_ids(self) -> tuple[str, ...]:
        return tuple(descriptor.blueprint_id for descriptor in self.blueprints)

    def operation_mask(self) -> list[bool]:
        """Which operation classes are legal at all (NOOP always is)."""
        allowed = self.slot_mask.any(dim=-1).tolist() if self.slot_mask.shape[-1] else [False] * NUM_OPERATIONS
        allowed[NOOP] = True
        return [bool(value) for value in allowed]

    def digest(self) -> str:
        """SHA-256 over every tensor's bytes and the ids: equal encodings have equal digests."""
        hasher = hashlib.sha256()
        for tensor in (
            self.global_features,
            self.slot_features,
            self.slot_blueprint_index,
            self.blueprint_features,
            self.blueprint_index,
            self.slot_mask,
            self.fit_mask,
        ):
            hasher.update(str(tuple(tensor.shape)).encode())
            hasher.update(tensor.contiguous().numpy().tobytes())
        hasher.update(json.dumps([list(self.slot_ids), list(self.blueprint_ids)]).encode())
        return hasher.hexdigest()


class _Counter:
    """Counts non-finite inputs while reading floats."""

    __slots__ = ("nonfinite",)

    def __init__(self) -> None:
        self.nonfinite = 0

    def value(self, x: float) -> float:
        """``x`` if finite; NaN → 0; infinities pass through (scales clip them); both counted."""
        if math.isfinite(x):
            return x
        self.nonfinite += 1
        return 0.0 if math.isnan(x) else x

    def optional(self, message: Any, field: str, scale: Callable[[float], float], out: list[float]) -> bool:
        if message.HasField(field):
            x = getattr(message, field)
            if math.isnan(x):
                self.nonfinite += 1
            else:
                if math.isinf(x):
                    self.nonfinite += 1
                out.append(scale(x))
                out.append(1.0)
                return True
        out.append(0.0)
        out.append(0.0)
        return False


def _one_hot(value: int, choices: Sequence[int], out: list[float]) -> None:
    out.extend(1.0 if value == choice else 0.0 for choice in choices)


def _ratio(numerator: float, denominator: float) -> float:
    return max(0.0, min(numerator / denominator, 1.0)) if denominator > 0 else 0.0


def _shape_features(seed: SeedState) -> tuple[float, float, float]:
    shape = list(seed.slot_shape)
    size = math.prod(shape) if shape else 0
    if seed.slot_kind == SlotKind.SLOT_KIND_CONV2D and shape:
        width, extent = shape[0], math.prod(shape[1:]) if len(shape) > 1 else 0
    elif seed.slot_kind == SlotKind.SLOT_KIND_SEQUENCE and shape:
        width, extent = shape[-1], shape[0] if len(shape) > 1 else 0
    else:
        width, extent = (shape[-1] if shape else 0), 0
    return SIZE_SCALE(float(size)), WIDTH_SCALE(float(width)), WIDTH_SCALE(float(extent))


class FeatureEncoder:
    """Encodes (state packet, offered blueprints) per :func:`feature_schema` for one vocabulary size."""

    def __init__(self, vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY) -> None:
        if vocabulary < 2:
            raise ValueError(f"the blueprint vocabulary needs at least 2 entries, got {vocabulary}")
        self.vocabulary = vocabulary
        self.digest = schema_digest(vocabulary)
        self._index_cache: dict[str, int] = {}

    def index(self, blueprint_id: str) -> int:
        cached = self._index_cache.get(blueprint_id)
        if cached is None:
            cached = blueprint_index(blueprint_id, self.vocabulary)
            if len(self._index_cache) < 65_536:
                self._index_cache[blueprint_id] = cached
        return cached

    def encode(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> EncodedState:
        counter = _Counter()
        offered = unique_blueprints(blueprints)
        seeds = list(state.seeds)[:MAX_SLOTS]
        metrics = state.metrics
        host_parameters = float(metrics.parameter_count)
        max_depth = max((seed.layer_depth for seed in seeds), default=0)

        kinds = [frozenset(descriptor.slot_kinds) for descriptor in offered]
        fit_by_kind: dict[int, list[bool]] = {}
        for seed in seeds:
            if seed.slot_kind not in fit_by_kind:
                fit_by_kind[seed.slot_kind] = [not k or seed.slot_kind in k for k in kinds]
        fit_rows = [fit_by_kind[seed.slot_kind] for seed in seeds]  # see fits()
        mask_rows: list[list[bool]] = [[False] * len(seeds)]  # NOOP targets no slot
        for op in range(1, NUM_OPERATIONS):
            mask_rows.append([slot_allows(seed, op, any(fit_rows[i])) for i, seed in enumerate(seeds)])

        slot_rows = [
            self._slot_row(seed, counter, host_parameters, max_depth, fit_rows[i], [row[i] for row in mask_rows])
            for i, seed in enumerate(seeds)
        ]
        germinable = mask_rows[GERMINATE]
        in_use: dict[str, int] = {}
        for seed in seeds:
            if seed.blueprint_id:
                in_use[seed.blueprint_id] = in_use.get(seed.blueprint_id, 0) + 1
        blueprint_rows = [
            self._blueprint_row(
                descriptor,
                kinds[j],
                counter,
                any(germinable[i] and fit_rows[i][j] for i in range(len(seeds))),
                in_use.get(descriptor.blueprint_id, 0) / len(seeds) if seeds else 0.0,
            )
            for j, descriptor in enumerate(offered)
        ]
        global_row, coverage = self._global_row(state, metrics, seeds, offered, germinable, counter)

        slot_tensor = torch.tensor(slot_rows, dtype=torch.float32).reshape(len(seeds), SLOT_DIM)
        blueprint_tensor = torch.tensor(blueprint_rows, dtype=torch.float32).reshape(len(offered), BLUEPRINT_DIM)
        return EncodedState(
            global_features=torch.tensor(global_row, dtype=torch.float32),
            slot_features=slot_tensor,
            slot_blueprint_index=torch.tensor([self.index(seed.blueprint_id) for seed in seeds], dtype=torch.int64),
            blueprint_features=blueprint_tensor,
            blueprint_index=torch.tensor([self.index(d.blueprint_id) for d in offered], dtype=torch.int64),
            slot_mask=torch.tensor(mask_rows, dtype=torch.bool).reshape(NUM_OPERATIONS, len(seeds)),
            fit_mask=torch.tensor(fit_rows, dtype=torch.bool).reshape(len(seeds), len(offered)),
            slot_ids=tuple(seed.slot_id for seed in seeds),
            blueprints=offered,
            coverage=coverage,
            truncated_slots=max(len(state.seeds) - MAX_SLOTS, 0),
            truncated_blueprints=max(len({d.blueprint_id for d in blueprints if d.blueprint_id}) - MAX_BLUEPRINTS, 0),
        )

    # -- rows -------------------------------------------------------------------------------------------------
    @staticmethod
    def _global_row(
        state: SystemStatePacket,
        metrics: TrainingMetrics,
        seeds: Sequence[SeedState],
        offered: Sequence[BlueprintDescriptor],
        germinable: Sequence[bool],
        counter: _Counter,
    ) -> tuple[list[float], float]:
        row: list[float] = []
        has_total = metrics.HasField("epochs_total") and metrics.epochs_total > 0
        row.append(_ratio(metrics.epoch, metrics.epochs_total) if has_total else 0.0)
        row.append(1.0 if has_total else 0.0)
        row.append(EPOCH_SCALE(float(metrics.epochs_total - metrics.epoch)) if has_total else 0.0)
        row.append(EPOCH_SCALE(float(metrics.epoch)))
        row.append(STEP_SCALE(float(metrics.global_step)))
        present = 0
        for field, scale in OPTIONAL_METRICS:
            present += counter.optional(metrics, field, scale, row)
        fields: Any = metrics  # HasField with a field name held in a variable
        for a, b, scale in (("val_loss", "train_loss", GAP_SCALE), ("val_loss", "best_val_loss", ABOVE_BEST_SCALE)):
            both = fields.HasField(a) and fields.HasField(b)
            difference = getattr(metrics, a) - getattr(metrics, b) if both else math.nan
            if both and not math.isnan(difference):
                row.append(scale(difference))
                row.append(1.0)
            else:
                row.append(0.0)
                row.append(0.0)
        _one_hot(metrics.optimizer_family, OPTIMIZERS, row)
        row.append(LOG(float(metrics.isolation_violations)))
        row.append(LOG(float(metrics.rollbacks)))
        row.append(PARAMETER_SCALE(float(metrics.parameter_count)))
        hardware = state.hardware if state.HasField("hardware") else None
        if hardware is None:
            row += [0.0] * 6
        else:
            counter.optional(hardware, "utilization_percent", PERCENT_SCALE, row)
            total = counter.value(hardware.total_memory_gb)
            if total > 0:
                row += [_ratio(counter.value(hardware.available_memory_gb), total), 1.0]
            else:
                row += [0.0, 0.0]
            counter.optional(hardware, "cpu_utilization_percent", PERCENT_SCALE, row)
        count = len(seeds)
        row.append(SLOT_COUNT_SCALE(float(count)))
        row.append(BLUEPRINT_COUNT_SCALE(float(len(offered))))
        stage_counts = dict.fromkeys(STAGES, 0)
        seed_parameters = 0
        for seed in seeds:
            if seed.stage in stage_counts:
                stage_counts[seed.stage] += 1
            if seed.seed_id:
                seed_parameters += seed.parameter_count
        row.extend(stage_counts[stage] / count if count else 0.0 for stage in STAGES)
        row.append(sum(germinable) / count if count else 0.0)
        row.append(_ratio(float(seed_parameters), float(metrics.parameter_count)))
        # Counted last, over the slot and blueprint rows too (they were built first).
        row.append(LOG(float(counter.nonfinite)))
        return row, present / len(OPTIONAL_METRICS)

    @staticmethod
    def _slot_row(
        seed: SeedState,
        counter: _Counter,
        host_parameters: float,
        max_depth: int,
        fit_row: Sequence[bool],
        allowed: Sequence[bool],
    ) -> list[float]:
        row: list[float] = []
        _one_hot(seed.stage, STAGES, row)
        _one_hot(seed.slot_kind, SLOT_KINDS, row)
        row.extend(_shape_features(seed))
        row.append(seed.layer_depth / max_depth if max_depth > 0 else 0.0)
        row.append(1.0 if seed.seed_id else 0.0)
        row.append(UNIT(counter.value(seed.alpha)))
        row.append(_ratio(float(seed.alpha_steps), float(seed.alpha_total_steps)))
        row.append(1.0 if ramp_complete(seed) else 0.0)
        row.append(ALPHA_STEPS_SCALE(float(seed.alpha_total_steps)))
        _one_hot(seed.blend_schedule, SCHEDULES, row)
        row.append(AGE_SCALE(float(seed.age_epochs)))
        row.append(AGE_SCALE(float(seed.stage_epochs)))
        for field, scale in OPTIONAL_SLOT_FIELDS:
            counter.optional(seed, field, scale, row)
        row.append(EMBARGO_SCALE(float(seed.embargo_epochs_remaining)))
        row.append(1.0 if seed.embargo_epochs_remaining > 0 else 0.0)
        row.append(PARAMETER_SCALE(float(seed.parameter_count)))
        row.append(_ratio(float(seed.parameter_count), host_parameters))
        row.append(UNIT(counter.value(seed.risk_score)))
        row.append(LOG(float(seed.isolation_violations)))
        row.append(sum(fit_row) / len(fit_row) if fit_row else 0.0)
        row.append(1.0 if allowed[GERMINATE] else 0.0)
        row.append(1.0 if any(allowed[op] for op in ADVANCE_SOURCE) else 0.0)
        row.append(1.0 if allowed[CULL] else 0.0)
        return row

    @staticmethod
    def _blueprint_row(
        descriptor: BlueprintDescriptor, kinds: frozenset[int], counter: _Counter, fits_germinable: bool, in_use: float
    ) -> list[float]:
        row: list[float] = [UNIT(counter.value(descriptor.risk))]
        _one_hot(descriptor.tier, TIERS, row)
        row.append(CURRICULUM_SCALE(float(descriptor.stage)))
        row.append(1.0 if descriptor.quarantine_only else 0.0)
        row.append(1.0 if descriptor.approval_required else 0.0)
        row.extend(1.0 if not kinds or kind in kinds else 0.0 for kind in SLOT_KINDS)
        row.append(0.0 if kinds else 1.0)
        row.append(BLUEPRINT_PARAMETERS_SCALE(float(len(descriptor.allowed_parameters))))
        row.append(1.0 if fits_germinable else 0.0)
        row.append(in_use)
        return row


# -- batching for training -----------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class EncodedBatch:
    """Several encoded decision points, padded to the largest slot and blueprint counts.

    Shapes: ``global_features [N, G]``, ``slot_features [N, S, F]``, ``slot_blueprint_index [N, S]``,
    ``slot_valid [N, S]``, ``blueprint_features [N, B, H]``, ``blueprint_index [N, B]``, ``blueprint_valid [N, B]``,
    ``slot_mask [N, NUM_OPERATIONS, S]``, ``fit_mask [N, S, B]``. Padding is invalid and masked everywhere.
    """

    global_features: torch.Tensor
    slot_features: torch.Tensor
    slot_blueprint_index: torch.Tensor
    slot_valid: torch.Tensor
    blueprint_features: torch.Tensor
    blueprint_index: torch.Tensor
    blueprint_valid: torch.Tensor
    slot_mask: torch.Tensor
    fit_mask: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.global_features.shape[0])


def collate(states: Sequence[EncodedState]) -> EncodedBatch:
    """Stack encoded states into one padded batch (for training, or for a decision: a batch of one)."""
    if not states:
        raise ValueError("collate() needs at least one encoded state")
    n = len(states)
    slots = max(int(s.slot_features.shape[0]) for s in states)
    offered = max(int(s.blueprint_features.shape[0]) for s in states)
    if n == 1:
        (one,) = states
        return EncodedBatch(
            global_features=one.global_features.unsqueeze(0),
            slot_features=one.slot_features.unsqueeze(0),
            slot_blueprint_index=one.slot_blueprint_index.unsqueeze(0),
            slot_valid=torch.ones(1, slots, dtype=torch.bool),
            blueprint_features=one.blueprint_features.unsqueeze(0),
            blueprint_index=one.blueprint_index.unsqueeze(0),
            blueprint_valid=torch.ones(1, offered, dtype=torch.bool),
            slot_mask=one.slot_mask.unsqueeze(0),
            fit_mask=one.fit_mask.unsqueeze(0),
        )
    slot_features = torch.zeros(n, slots, SLOT_DIM)
    slot_index = torch.zeros(n, slots, dtype=torch.int64)
    slot_valid = torch.zeros(n, slots, dtype=torch.bool)
    blueprint_features = torch.zeros(n, offered, BLUEPRINT_DIM)
    blueprint_ids = torch.zeros(n, offered, dtype=torch.int64)
    blueprint_valid = torch.zeros(n, offered, dtype=torch.bool)
    slot_mask = torch.zeros(n, NUM_OPERATIONS, slots, dtype=torch.bool)
    fit_mask = torch.zeros(n, slots, offered, dtype=torch.bool)
    for i, state in enumerate(states):
        s, b = int(state.slot_features.shape[0]), int(state.blueprint_features.shape[0])
        slot_features[i, :s] = state.slot_features
        slot_index[i, :s] = state.slot_blueprint_index
        slot_valid[i, :s] = True
        blueprint_features[i, :b] = state.blueprint_features
        blueprint_ids[i, :b] = state.blueprint_index
        blueprint_valid[i, :b] = True
        slot_mask[i, :, :s] = state.slot_mask
        fit_mask[i, :s, :b] = state.fit_mask
    return EncodedBatch(
        global_features=torch.stack([s.global_features for s in states]),
        slot_features=slot_features,
        slot_blueprint_index=slot_index,
        slot_valid=slot_valid,
        blueprint_features=blueprint_features,
        blueprint_index=blueprint_ids,
        blueprint_valid=blueprint_valid,
        slot_mask=slot_mask,
        fit_mask=fit_mask,
    )
