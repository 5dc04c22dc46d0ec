"""The learned policy's encoder: a state packet and the offered blueprints in, the tensors the network reads out.

Why a module of its own: this is the code that must compute exactly what :mod:`esper_tamiyo.learned.schema`
documents, in every process, for decisions (a batch of one) and for training (:func:`collate` pads many). It is the
only part of the feature pipeline that needs torch; the schema and the action space
(:mod:`esper_tamiyo.learned.actions`, whose legality rules give the masks) do not.

Rules it keeps, so that the same packet always encodes to the same bytes:

- NaN counts as absent; infinities are clipped to the bound of their scale; ``global.nonfinite_inputs`` counts both,
  over every float field read;
- maps (``extras``, ``blueprint_parameters``, ``allowed_parameters``) are never iterated in insertion order: where a
  map is read, its keys are sorted;
- slots are encoded in packet order, blueprints sorted by id (:func:`unique_blueprints`), neither depending on the
  order the caller passed blueprints in; those beyond the limits are left out and counted;
- blueprint identities are :func:`esper_tamiyo.learned.schema.blueprint_index`, never Python's ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import torch

from esper_core.leyline import BlueprintDescriptor, SeedState, SlotKind, SystemStatePacket, TrainingMetrics, growth
from esper_core.protocols import SlotShape
from esper_tamiyo.learned.actions import (
    ADVANCE_CLASSES,
    CULL,
    GERMINATE,
    MAX_BLUEPRINTS,
    MAX_SLOTS,
    NOOP,
    NUM_OPERATIONS,
    SCHEDULES,
    ramp_complete,
    slot_allows,
)
from esper_tamiyo.learned.schema import (
    ABOVE_BEST_SCALE,
    AGE_SCALE,
    ALPHA_STEPS_SCALE,
    BLUEPRINT_COUNT_SCALE,
    BLUEPRINT_DIM,
    BLUEPRINT_PARAMETERS_SCALE,
    CURRICULUM_SCALE,
    DEFAULT_BLUEPRINT_VOCABULARY,
    EMBARGO_SCALE,
    EPOCH_SCALE,
    GAP_SCALE,
    LOG,
    OPTIMIZERS,
    OPTIONAL_METRICS,
    OPTIONAL_SLOT_FIELDS,
    PARAMETER_SCALE,
    PERCENT_SCALE,
    SIZE_SCALE,
    SLOT_COUNT_SCALE,
    SLOT_DIM,
    SLOT_KINDS,
    STAGES,
    STEP_SCALE,
    TIERS,
    UNIT,
    WIDTH_SCALE,
    blueprint_index,
    schema_digest,
)


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
        fit_by_shape: dict[SlotShape, list[bool]] = {}  # slots of one shape take the same blueprints
        fit_rows = []
        for seed in seeds:
            shape = SlotShape.of(seed)
            if shape not in fit_by_shape:
                fit_by_shape[shape] = [growth.fits(descriptor, shape) for descriptor in offered]
            fit_rows.append(fit_by_shape[shape])
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
        row.append(1.0 if any(allowed[op] for op in ADVANCE_CLASSES) else 0.0)
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
