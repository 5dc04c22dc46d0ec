"""The learned policy's feature schema: every column the encoder writes, where it comes from and how it is scaled.

Why a module of its own: this is the contract between a running Tamiyo and every policy trained for it. The SHA-256
of the canonical JSON of :func:`feature_schema` is the ``feature_schema_digest`` that a ``PolicyUpdate`` must match
(a test pins its value), so what changes it should be visible in one place, apart from the code that computes the
features (:mod:`esper_tamiyo.learned.encoder`) and from the action space (:mod:`esper_tamiyo.learned.actions`, whose
operation and schedule classes, limits and legality rules the schema also records).

Five groups of features, each a fixed-width float vector, plus integer indices for a learned blueprint embedding:

- **global** (one vector per decision): progress, losses, accuracies, gradient statistics, learning rate,
  latencies, counters, hardware load, the fraction of slots in each lifecycle stage, and the parameter budget;
- **slot** (one row per ``SeedState``, in packet order): stage, slot kind, activation size, depth, alpha and its
  ramp, ages, contributions, seed loss trend, gradient norms, activation RMS, embargo, size, risk, isolation
  violations, which operations the slot allows, whether it is a width slot and what it reads, the loss decrease
  Kasmina predicts for each width class, and the cheapest germination the budget allows there;
- **blueprint** (one row per offered descriptor, sorted by ``blueprint_id``): risk, tier, curriculum stage, flags,
  supported slot kinds;
- **pair** (one row per slot and blueprint): what Urabrask measured about the blueprint at the slot
  (``SeedState.measured_blueprints``, filled by Tamiyo's controller from the sheets it knows): whether a sheet is
  known, its risk, its latency over a plain layer's and its counted FLOPs;
- **width** (one value per slot, blueprint and width class): the germination's parameter cost over the budget left,
  which the width head weighs.

Every optional (proto3 ``optional``) field becomes two features: its scaled value (0 when absent) and a presence
flag, so "not measured" is never confused with zero. Each scaling is an object (:class:`Log1p`, :class:`SignedLog1p`,
:class:`Clip`, :class:`Log10`) that both computes the value (the encoder calls it) and describes itself (the schema
prints it), so the documented scaling and the computed one cannot drift apart.

Blueprint identity is a **stable vocabulary index** (:func:`blueprint_index`): ``1 + int(SHA-256("esper.blueprint:" +
id)[:8]) mod (V - 1)`` with index 0 meaning "no blueprint". Never Python's ``hash()``, whose value changes with every
process.

Change any feature, scaling, limit or the vocabulary size and the digest changes; bump
:data:`FEATURE_SCHEMA_VERSION` whenever the encoding changes. Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import attrs

from esper_core.leyline import BlendSchedule, BlueprintTier, OptimizerFamily, SeedLifecycleStage, SlotKind
from esper_tamiyo.learned.actions import (
    CHOICE_RULES,
    MASK_RULES,
    MAX_BLUEPRINTS,
    MAX_SLOTS,
    OPERATION_NAMES,
    SCHEDULES,
    WIDTH_CLASSES,
    WIDTH_PARAMETER,
)

#: Bump whenever the meaning, order or scaling of any feature changes (the digest changes with the schema).
#: 2: width slots, predicted loss decrease per width class, the parameter budget, the width head's cost features.
#: 3: the pair group: Urabrask's measured risk and cost of each blueprint at each slot.
FEATURE_SCHEMA_VERSION = 3
DEFAULT_BLUEPRINT_VOCABULARY = 1024
BLUEPRINT_INDEX_PREFIX = "esper.blueprint:"

# -- one-hot vocabularies -----------------------------------------------------------------------------------------

#: Every lifecycle stage but UNKNOWN (an unknown or future stage encodes as all zeros).
STAGES: tuple[SeedLifecycleStage.ValueType, ...] = tuple(
    stage for stage in SeedLifecycleStage.values() if stage != SeedLifecycleStage.SEED_STAGE_UNKNOWN
)
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
BUDGET_SCALE = Clip(0.0, 10.0)
BUDGET = "(see choice_masks.budget)"


def _stage_name(stage: int) -> str:
    return SeedLifecycleStage.Name(stage).removeprefix("SEED_STAGE_")  # type: ignore[arg-type]


def _global_schema() -> list[Feature]:
    metrics = "TrainingMetrics"
    features = [
        Feature(
            "progress", f"{metrics}.epoch / {metrics}.epochs_total", "clip(x, 0, 1); 0 when epochs_total is unset or 0"
        ),
        Feature("progress.present", f"{metrics}.epochs_total", "1 if epochs_total is set and > 0 else 0"),
        Feature(
            "epochs_remaining", f"{metrics}.epochs_total - {metrics}.epoch", EPOCH_SCALE.describe() + "; 0 when unset"
        ),
        Feature("epoch", f"{metrics}.epoch", EPOCH_SCALE.describe()),
        Feature("global_step", f"{metrics}.global_step", STEP_SCALE.describe()),
    ]
    for field, scale in OPTIONAL_METRICS:
        features.append(Feature(field, f"{metrics}.{field}", scale.describe() + "; 0 when absent"))
        features.append(Feature(f"{field}.present", f"{metrics}.{field}", PRESENT))
    features += [
        Feature("generalization_gap", f"{metrics}.val_loss - {metrics}.train_loss", GAP_SCALE.describe()),
        Feature("generalization_gap.present", "both losses", "1 if both are present else 0"),
        Feature("val_loss_above_best", f"{metrics}.val_loss - {metrics}.best_val_loss", ABOVE_BEST_SCALE.describe()),
        Feature("val_loss_above_best.present", "both losses", "1 if both are present else 0"),
    ]
    for family in OPTIMIZERS:
        name = OptimizerFamily.Name(family).removeprefix("OPTIMIZER_FAMILY_")
        features.append(
            Feature(f"optimizer.{name}", f"{metrics}.optimizer_family", "one-hot; UNSPECIFIED is all zeros")
        )
    features += [
        Feature("isolation_violations", f"{metrics}.isolation_violations", LOG.describe()),
        Feature("rollbacks", f"{metrics}.rollbacks", LOG.describe()),
        Feature("parameter_count", f"{metrics}.parameter_count", PARAMETER_SCALE.describe()),
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
            f"sum of SeedState.parameter_count / {metrics}.parameter_count",
            "clip(x, 0, 1); 0 when the host count is 0",
        ),
        Feature(
            "parameter_budget", "tamiyo.learned.max_added_parameter_fraction (budget / host)", BUDGET_SCALE.describe()
        ),
        Feature("budget_left_fraction", f"budget left / budget {BUDGET}", "clip(x, 0, 1); 0 when absent"),
        Feature(
            "budget_left_fraction.present",
            f"{metrics}.parameter_count and the budget",
            "1 if parameter_count > 0 and the budget is > 0 else 0",
        ),
        Feature(
            "added_parameter_fraction",
            f"parameters of the seeds in a slot / host parameters {BUDGET}",
            BUDGET_SCALE.describe(),
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
PREDICTED_DECREASE_SCALE = SignedLog1p(10.0)
ALPHA_STEPS_SCALE = Log1p(div=5.0)
AGE_SCALE = Log1p(div=4.0)
EMBARGO_SCALE = Log1p(div=2.0)


def _slot_schema() -> list[Feature]:
    seed = "SeedState"
    features = [
        Feature(f"stage.{_stage_name(stage)}", f"{seed}.stage", "one-hot; UNKNOWN is all zeros") for stage in STAGES
    ]
    features += [
        Feature(f"kind.{SlotKind.Name(kind).removeprefix('SLOT_KIND_')}", f"{seed}.slot_kind", "one-hot")
        for kind in SLOT_KINDS
    ]
    features += [
        Feature("activation_size", f"product of {seed}.slot_shape", SIZE_SCALE.describe()),
        Feature("width", f"{seed}.slot_shape: C (conv), D (vector, sequence)", WIDTH_SCALE.describe()),
        Feature("extent", f"{seed}.slot_shape: H*W (conv), L (sequence), 0 (vector)", WIDTH_SCALE.describe()),
        Feature("depth", f"{seed}.layer_depth / max layer_depth in the packet", "in [0, 1]; 0 when every depth is 0"),
        Feature("has_seed", f"{seed}.seed_id", "1 if non-empty else 0"),
        Feature("alpha", f"{seed}.alpha", UNIT.describe()),
        Feature("alpha_progress", f"{seed}.alpha_steps / alpha_total_steps", "clip(x, 0, 1); 0 when total is 0"),
        Feature("ramp_complete", f"{seed}.alpha_steps >= alpha_total_steps", FLAG),
        Feature("alpha_total_steps", f"{seed}.alpha_total_steps", ALPHA_STEPS_SCALE.describe()),
    ]
    features += [
        Feature(
            f"schedule.{BlendSchedule.Name(schedule).removeprefix('BLEND_SCHEDULE_')}",
            f"{seed}.blend_schedule",
            "one-hot; UNSPECIFIED is all zeros",
        )
        for schedule in SCHEDULES
    ]
    features += [
        Feature("age_epochs", f"{seed}.age_epochs", AGE_SCALE.describe()),
        Feature("stage_epochs", f"{seed}.stage_epochs", AGE_SCALE.describe()),
    ]
    for field, scale in OPTIONAL_SLOT_FIELDS:
        features.append(Feature(field, f"{seed}.{field}", scale.describe() + "; 0 when absent"))
        features.append(Feature(f"{field}.present", f"{seed}.{field}", PRESENT))
    features += [
        Feature("embargo_epochs", f"{seed}.embargo_epochs_remaining", EMBARGO_SCALE.describe()),
        Feature("embargoed", f"{seed}.embargo_epochs_remaining > 0", FLAG),
        Feature("parameter_count", f"{seed}.parameter_count", PARAMETER_SCALE.describe()),
        Feature(
            "parameter_fraction",
            f"{seed}.parameter_count / TrainingMetrics.parameter_count",
            "clip(x, 0, 1); 0 when the host count is 0",
        ),
        Feature("risk_score", f"{seed}.risk_score", UNIT.describe()),
        Feature("isolation_violations", f"{seed}.isolation_violations", LOG.describe()),
        Feature("blueprint_fit_fraction", "offered blueprints whose slot_kinds fit the slot", "count / blueprints"),
        Feature("can_germinate", "GERMINATE is legal here (see masks)", FLAG),
        Feature("can_advance", "some advance operation is legal here (see masks)", FLAG),
        Feature("can_cull", "CULL is legal here (see masks)", FLAG),
        Feature("width_slot", f"{seed}.read_shape", "1 if non-empty (a width slot) else 0"),
    ]
    features += [
        Feature(
            f"read_kind.{SlotKind.Name(kind).removeprefix('SLOT_KIND_')}",
            f"{seed}.read_kind",
            "one-hot; UNSPECIFIED (a residual slot) is all zeros",
        )
        for kind in SLOT_KINDS
    ]
    for width in WIDTH_CLASSES:
        source = f"{seed}.predicted_loss_decrease at the largest {seed}.candidate_widths entry <= {width}"
        features.append(
            Feature(f"predicted_decrease.{width}", source, PREDICTED_DECREASE_SCALE.describe() + "; 0 when absent")
        )
        features.append(
            Feature(
                f"predicted_decrease.{width}.present",
                source,
                "1 if there is such an entry (both lists of one length) and it is not NaN else 0",
            )
        )
    features += [
        Feature(
            "cheapest_germination",
            f"smallest catalog cost of a legal germination here / budget left {BUDGET}",
            "clip(x, 0, 1); 0 when absent",
        ),
        Feature("cheapest_germination.present", "legal germinations here", "1 if one has a known cost else 0"),
    ]
    return features


# -- blueprint features -----------------------------------------------------------------------------------------

CURRICULUM_SCALE = Clip(0.0, 12.0, 6.0)
BLUEPRINT_PARAMETERS_SCALE = Log1p(div=2.0)


def _blueprint_schema() -> list[Feature]:
    descriptor = "BlueprintDescriptor"
    features = [Feature("risk", f"{descriptor}.risk", UNIT.describe())]
    features += [
        Feature(f"tier.{BlueprintTier.Name(tier).removeprefix('BLUEPRINT_TIER_')}", f"{descriptor}.tier", "one-hot")
        for tier in TIERS
    ]
    features += [
        Feature("curriculum_stage", f"{descriptor}.stage", CURRICULUM_SCALE.describe()),
        Feature("quarantine_only", f"{descriptor}.quarantine_only", FLAG),
        Feature("approval_required", f"{descriptor}.approval_required", FLAG),
    ]
    features += [
        Feature(
            f"supports.{SlotKind.Name(kind).removeprefix('SLOT_KIND_')}",
            f"{descriptor}.slot_kinds",
            "1 if listed, or if slot_kinds is empty (any kind)",
        )
        for kind in SLOT_KINDS
    ]
    features += [
        Feature("any_kind", f"{descriptor}.slot_kinds", "1 if empty (fits every slot kind) else 0"),
        Feature("parameter_count", f"len({descriptor}.allowed_parameters)", BLUEPRINT_PARAMETERS_SCALE.describe()),
        Feature("fits_germinable_slot", "legal (see choice_masks) in some slot where GERMINATE is legal", FLAG),
        Feature("in_use_fraction", "slots whose SeedState.blueprint_id is this blueprint", "count / slots"),
        Feature(
            "width_factor",
            f"{descriptor}.allowed_parameters['{WIDTH_PARAMETER}']",
            "1 if integer with a whole number inside finite bounds (the width head chooses it) else 0",
        ),
    ]
    return features


# -- pair features ----------------------------------------------------------------------------------------------

#: ``log10`` of the measured latency ratio: a blueprint as fast as a plain layer is 0, ten times slower 1.
LATENCY_RATIO_SCALE = Log10(0.0, 1.0)
#: Counted FLOPs of a training step per sample, like parameter counts.
FLOPS_SCALE = Log1p(div=20.0)


def _pair_schema() -> list[Feature]:
    measured = "SeedState.measured_blueprints[blueprint_id]"
    return [
        Feature("measured", measured, "1 if the slot lists the blueprint (a safety data sheet is known) else 0"),
        Feature("measured_risk", f"{measured}.risk_score", UNIT.describe() + "; 0 when not listed"),
        Feature(
            "latency_ratio",
            f"{measured}.latency_ratio",
            LATENCY_RATIO_SCALE.describe() + "; 0 when not listed or absent",
        ),
        Feature("latency_ratio.present", f"{measured}.latency_ratio", PRESENT),
        Feature("flops", f"{measured}.flops_per_sample", FLOPS_SCALE.describe() + "; 0 when not listed or absent"),
        Feature("flops.present", f"{measured}.flops_per_sample", PRESENT),
    ]


# -- width features ---------------------------------------------------------------------------------------------


def _width_schema() -> list[Feature]:
    return [
        Feature(
            "cost_fraction",
            "catalog parameter_count(blueprint, slot, default parameters with the class's width) / budget left",
            "clip(x, 0, 1); 0 when the class is masked or its cost is unknown",
        )
    ]


GLOBAL_FEATURES: tuple[Feature, ...] = tuple(_global_schema())
SLOT_FEATURES: tuple[Feature, ...] = tuple(_slot_schema())
BLUEPRINT_FEATURES: tuple[Feature, ...] = tuple(_blueprint_schema())
#: Features of each (slot, blueprint): ``EncodedState.pair_features [S, B, PAIR_DIM]``.
PAIR_FEATURES: tuple[Feature, ...] = tuple(_pair_schema())
#: Features of each (slot, blueprint, width class): ``EncodedState.width_features [S, B, W, WIDTH_DIM]``.
WIDTH_FEATURES: tuple[Feature, ...] = tuple(_width_schema())
GLOBAL_DIM = len(GLOBAL_FEATURES)
SLOT_DIM = len(SLOT_FEATURES)
BLUEPRINT_DIM = len(BLUEPRINT_FEATURES)
PAIR_DIM = len(PAIR_FEATURES)
WIDTH_DIM = len(WIDTH_FEATURES)


def feature_schema(vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY) -> dict[str, Any]:
    """The complete, JSON-ready description of the encoding for a blueprint vocabulary of ``vocabulary`` entries."""
    return {
        # The encoding's name (the path of the module it was first written in): part of the digest, so it stays.
        "encoding": "esper.tamiyo.learned.features",
        "version": FEATURE_SCHEMA_VERSION,
        "global": [feature.as_json() for feature in GLOBAL_FEATURES],
        "slot": [feature.as_json() for feature in SLOT_FEATURES],
        "blueprint": [feature.as_json() for feature in BLUEPRINT_FEATURES],
        "pair": [feature.as_json() for feature in PAIR_FEATURES],
        "width": [feature.as_json() for feature in WIDTH_FEATURES],
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
        "masks": dict(MASK_RULES),
        "width_parameter": WIDTH_PARAMETER,
        "width_classes": list(WIDTH_CLASSES),
        "choice_masks": dict(CHOICE_RULES),
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
