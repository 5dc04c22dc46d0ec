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

It also decides which germinations the budget allows (``fit_mask``, ``width_mask``), because that needs what only
the encoder holds: the run's blueprint catalogs, which give each (slot, blueprint, width) its exact parameter cost
(:func:`esper_tamiyo.budget.catalog_cost`, cached), and the budget fractions (:class:`esper_tamiyo.budget.
ParameterBudget`, the same rule the heuristic follows). A trainer that re-encodes a decision with the same policy
(same catalogs, same options) gets the same masks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from esper_core.leyline import (
    BlueprintDescriptor,
    MeasuredBlueprint,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    growth,
    lifecycle,
)
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_tamiyo.budget import ParameterBudget, catalog_cost
from esper_tamiyo.learned.actions import (
    ADVANCE_CLASSES,
    CULL,
    GERMINATE,
    MAX_BLUEPRINTS,
    MAX_SLOTS,
    NOOP,
    NUM_OPERATIONS,
    NUM_WIDTHS,
    SCHEDULES,
    WIDTH_CLASSES,
    WIDTH_PARAMETER,
    germination_parameters,
    nearest_width_class,
    ramp_complete,
    slot_allows,
    width_choices,
)
from esper_tamiyo.learned.schema import (
    ABOVE_BEST_SCALE,
    AGE_SCALE,
    ALPHA_STEPS_SCALE,
    BLUEPRINT_COUNT_SCALE,
    BLUEPRINT_DIM,
    BLUEPRINT_PARAMETERS_SCALE,
    BUDGET_SCALE,
    CURRICULUM_SCALE,
    DEFAULT_BLUEPRINT_VOCABULARY,
    EMBARGO_SCALE,
    EPOCH_SCALE,
    FLOPS_SCALE,
    GAP_SCALE,
    LATENCY_RATIO_SCALE,
    LOG,
    OPTIMIZERS,
    OPTIONAL_METRICS,
    OPTIONAL_SLOT_FIELDS,
    PAIR_DIM,
    PARAMETER_SCALE,
    PERCENT_SCALE,
    PREDICTED_DECREASE_SCALE,
    SIZE_SCALE,
    SLOT_COUNT_SCALE,
    SLOT_DIM,
    SLOT_KINDS,
    STAGES,
    STEP_SCALE,
    TIERS,
    UNIT,
    WIDTH_DIM,
    WIDTH_SCALE,
    blueprint_index,
    schema_digest,
)

#: Defaults of the budget fractions (``LearnedPolicyOptions`` and the heuristic's options have the same).
DEFAULT_MAX_ADDED_PARAMETER_FRACTION = 0.5
DEFAULT_MAX_SEED_PARAMETER_FRACTION = 1.0
_CACHE_LIMIT = 65_536


def unique_blueprints(blueprints: Iterable[BlueprintDescriptor]) -> tuple[BlueprintDescriptor, ...]:
    """Offered descriptors in canonical order: sorted by id, one per id, at most :data:`MAX_BLUEPRINTS`.

    The order never depends on the caller's order: among duplicates of one id the one with the smallest
    deterministic serialization wins.
    """
    return tuple(descriptor for _, descriptor in _unique_serialized(blueprints))


def _unique_serialized(blueprints: Iterable[BlueprintDescriptor]) -> list[tuple[bytes, BlueprintDescriptor]]:
    """:func:`unique_blueprints` with each descriptor's deterministic serialization (a key for caches)."""
    keyed = sorted(
        ((descriptor.blueprint_id, descriptor.SerializeToString(deterministic=True), descriptor)
         for descriptor in blueprints if descriptor.blueprint_id),
        key=lambda item: (item[0], item[1]),
    )  # fmt: skip
    chosen: dict[str, tuple[bytes, BlueprintDescriptor]] = {}
    for blueprint_id, serialized, descriptor in keyed:
        chosen.setdefault(blueprint_id, (serialized, descriptor))
    return list(chosen.values())[:MAX_BLUEPRINTS]


# -- the encoding ---------------------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class EncodedState:
    """One decision point, encoded. Tensors are float32 (features), int64 (indices) and bool (masks).

    - ``global_features`` ``[GLOBAL_DIM]``; ``slot_features`` ``[S, SLOT_DIM]``; ``blueprint_features``
      ``[B, BLUEPRINT_DIM]``;
    - ``slot_blueprint_index`` ``[S]`` (the vocabulary index of each slot's current blueprint, 0 for none) and
      ``blueprint_index`` ``[B]``;
    - ``pair_features`` ``[S, B, PAIR_DIM]``: what Urabrask measured about blueprint ``b`` at slot ``s`` (zero where
      the slot does not list it);
    - ``slot_mask`` ``[NUM_OPERATIONS, S]``: operation class ``o`` is legal on slot ``s`` (row NOOP all False);
      ``fit_mask`` ``[S, B]``: blueprint ``b`` is legal in slot ``s`` (the slot can germinate, the blueprint fits it
      and some germination of it is within the budget: ``actions.CHOICE_RULES``);
    - ``width_mask`` ``[S, B, NUM_WIDTHS]``: width class ``w`` is legal for blueprint ``b`` in slot ``s`` (all False
      for a blueprint without a width factor); ``width_values`` ``[S, B, NUM_WIDTHS]``: the width each legal class
      germinates with (0 elsewhere); ``width_features`` ``[S, B, NUM_WIDTHS, WIDTH_DIM]``;
    - ``slot_ids`` and ``blueprints`` name what the indices point at.
    """

    global_features: torch.Tensor
    slot_features: torch.Tensor
    slot_blueprint_index: torch.Tensor
    blueprint_features: torch.Tensor
    blueprint_index: torch.Tensor
    slot_mask: torch.Tensor
    fit_mask: torch.Tensor
    width_mask: torch.Tensor
    width_values: torch.Tensor
    width_features: torch.Tensor
    pair_features: torch.Tensor
    slot_ids: tuple[str, ...]
    blueprints: tuple[BlueprintDescriptor, ...]
    #: Fraction of the optional ``TrainingMetrics`` fields that were present.
    coverage: float
    #: Slots or blueprints beyond the limits that were left out.
    truncated_slots: int = 0
    truncated_blueprints: int = 0
    #: Parameters the seeds may still add (``ParameterBudget.left``; negative once they hold more than the budget).
    budget_left: float = 0.0

    @property
    def blueprint_ids(self) -> tuple[str, ...]:
        return tuple(descriptor.blueprint_id for descriptor in self.blueprints)

    def operation_mask(self) -> list[bool]:
        """Which operation classes are legal at all (NOOP always is)."""
        allowed = self.slot_mask.any(dim=-1).tolist() if self.slot_mask.shape[-1] else [False] * NUM_OPERATIONS
        allowed[NOOP] = True
        return [bool(value) for value in allowed]

    def width_candidates(self, slot: int, blueprint: int) -> list[tuple[int, float]]:
        """The legal width classes of ``blueprint`` in ``slot``, each with the width it germinates with (empty for a
        blueprint without a width factor)."""
        legal = self.width_mask[slot, blueprint].nonzero().flatten().tolist()
        values = self.width_values[slot, blueprint].tolist()
        return [(int(index), float(values[index])) for index in legal]

    def width_class(self, slot: int, blueprint: int, width: float) -> int:
        """The legal width class nearest to ``width`` (log scale) for ``blueprint`` in ``slot``; -1 when none is."""
        return nearest_width_class(width, self.width_candidates(slot, blueprint))

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
            self.width_mask,
            self.width_values,
            self.width_features,
            self.pair_features,
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


@attrs.frozen
class _Germinations:
    """What the budget allows for one blueprint in one slot (see ``actions.CHOICE_RULES``)."""

    legal: bool
    #: Per width class: legal, the width it germinates with, its cost over the budget left.
    widths: tuple[bool, ...]
    values: tuple[float, ...]
    cost_fractions: tuple[float, ...]
    #: The smallest known cost of a legal germination (None: none is known).
    cheapest: int | None


@attrs.frozen
class _Sizing:
    """What a blueprint germinates with, whatever the slot: its default parameters and the width of each class
    (``None``: no width factor). Cached by the descriptor's serialization."""

    parameters: Mapping[str, float]  # shared by every decision: read, never changed
    choices: tuple[float | None, ...] | None
    #: The class that stands for the default width when no catalog knows the cost (-1 without a width factor).
    default_class: int


_NO_WIDTHS = (False,) * NUM_WIDTHS
_ZEROS = (0.0,) * NUM_WIDTHS
_ILLEGAL = _Germinations(False, _NO_WIDTHS, _ZEROS, _ZEROS, None)
#: Every width class, as candidates for "the class nearest the default width" when no catalog knows the cost.
_EVERY_CLASS = tuple((index, float(width)) for index, width in enumerate(WIDTH_CLASSES))


class FeatureEncoder:
    """Encodes (state packet, offered blueprints) per :func:`feature_schema` for one vocabulary size, and masks the
    germinations that the budget does not allow, with the costs ``catalogs`` give."""

    def __init__(
        self,
        vocabulary: int = DEFAULT_BLUEPRINT_VOCABULARY,
        *,
        catalogs: Sequence[BlueprintCatalog] = (),
        max_added_parameter_fraction: float = DEFAULT_MAX_ADDED_PARAMETER_FRACTION,
        max_seed_parameter_fraction: float = DEFAULT_MAX_SEED_PARAMETER_FRACTION,
    ) -> None:
        if vocabulary < 2:
            raise ValueError(f"the blueprint vocabulary needs at least 2 entries, got {vocabulary}")
        self.vocabulary = vocabulary
        self.digest = schema_digest(vocabulary)
        self.catalogs = tuple(catalogs)
        self.max_added_parameter_fraction = max_added_parameter_fraction
        self.max_seed_parameter_fraction = max_seed_parameter_fraction
        self._index_cache: dict[str, int] = {}
        self._sizing_cache: dict[bytes, _Sizing] = {}
        self._costs_cache: dict[tuple[bytes, SlotShape], tuple[int | None, ...]] = {}

    def index(self, blueprint_id: str) -> int:
        cached = self._index_cache.get(blueprint_id)
        if cached is None:
            cached = blueprint_index(blueprint_id, self.vocabulary)
            if len(self._index_cache) < _CACHE_LIMIT:
                self._index_cache[blueprint_id] = cached
        return cached

    def cost(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int | None:
        """The catalogs' parameter count of this germination (``None``: no catalog knows it)."""
        return catalog_cost(self.catalogs, blueprint_id, slot, parameters)

    def budget(self, state: SystemStatePacket) -> ParameterBudget:
        """The parameter budget at ``state`` (every seed in the packet counts, encoded or not)."""
        return ParameterBudget.of(
            state,
            max_added_parameter_fraction=self.max_added_parameter_fraction,
            max_seed_parameter_fraction=self.max_seed_parameter_fraction,
        )

    def sizing(self, serialized: bytes, descriptor: BlueprintDescriptor) -> _Sizing:
        """``descriptor``'s default parameters and width classes (cached: every decision offers the same ones)."""
        cached = self._sizing_cache.get(serialized)
        if cached is None:
            parameters = germination_parameters(descriptor)
            choices = width_choices(descriptor)
            default = -1 if choices is None else nearest_width_class(parameters[WIDTH_PARAMETER], _EVERY_CLASS)
            cached = _Sizing(parameters, choices, default)
            if len(self._sizing_cache) < _CACHE_LIMIT:
                self._sizing_cache[serialized] = cached
        return cached

    def costs(
        self, serialized: bytes, descriptor: BlueprintDescriptor, sizing: _Sizing, slot: SlotShape
    ) -> tuple[int | None, ...]:
        """The cost of each width class of ``descriptor`` in a slot of shape ``slot`` (``None`` for a class that adds
        no width, or that no catalog prices), or the one cost at the defaults for a blueprint without a width
        factor. Cached: a catalog's count depends on nothing else, and every decision asks for every width class of
        every offered blueprint in every free slot."""
        key = (serialized, slot)
        cached = self._costs_cache.get(key)
        if cached is None:
            blueprint_id, parameters = descriptor.blueprint_id, sizing.parameters
            if sizing.choices is None:
                cached = (self.cost(blueprint_id, slot, parameters),)
            else:
                cached = tuple(
                    None if width is None else self.cost(blueprint_id, slot, {**parameters, WIDTH_PARAMETER: width})
                    for width in sizing.choices
                )
            if len(self._costs_cache) < _CACHE_LIMIT:
                self._costs_cache[key] = cached
        return cached

    @staticmethod
    def germinations(sizing: _Sizing, costs: Sequence[int | None], budget: ParameterBudget) -> _Germinations:
        """Which germinations of one blueprint in one slot (which it fits) ``budget`` allows, given their
        ``costs`` (:meth:`costs`)."""
        if sizing.choices is None:  # no width factor: one germination, at the default parameters
            (cost,) = costs
            if not budget.allows(cost):
                return _ILLEGAL
            return _Germinations(True, _NO_WIDTHS, _ZEROS, _ZEROS, cost)
        widths, values, fractions = [False] * NUM_WIDTHS, [0.0] * NUM_WIDTHS, [0.0] * NUM_WIDTHS
        cheapest: int | None = None
        left = budget.left
        if any(cost is not None for cost in costs):
            for index, (width, cost) in enumerate(zip(sizing.choices, costs, strict=True)):
                if width is not None and cost is not None and budget.allows(cost):
                    widths[index], values[index] = True, width
                    fractions[index] = max(0.0, min(cost / left, 1.0))
                    cheapest = cost if cheapest is None else min(cheapest, cost)
        elif budget.allows(None):
            # No catalog knows the cost: only the blueprint's default width, which nothing here can price.
            widths[sizing.default_class] = True
            values[sizing.default_class] = sizing.parameters[WIDTH_PARAMETER]
        if not any(widths):
            return _ILLEGAL
        return _Germinations(True, tuple(widths), tuple(values), tuple(fractions), cheapest)

    def encode(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> EncodedState:
        counter = _Counter()
        serialized_offer = _unique_serialized(blueprints)
        offered = tuple(descriptor for _, descriptor in serialized_offer)
        seeds = list(state.seeds)[:MAX_SLOTS]
        metrics = state.metrics
        host_parameters = float(metrics.parameter_count)
        max_depth = max((seed.layer_depth for seed in seeds), default=0)
        budget = self.budget(state)
        sizings = [self.sizing(serialized, descriptor) for serialized, descriptor in serialized_offer]

        kinds = [frozenset(descriptor.slot_kinds) for descriptor in offered]
        fit_by_shape: dict[SlotShape, list[bool]] = {}  # slots of one shape take the same blueprints
        options_by_shape: dict[SlotShape, list[_Germinations]] = {}  # and the same germinations
        fit_rows: list[list[bool]] = []
        options: list[list[_Germinations]] = []
        germinable_stages = [lifecycle.can_germinate(seed) for seed in seeds]
        no_options = [_ILLEGAL] * len(offered)
        for seed, germinable_stage in zip(seeds, germinable_stages, strict=True):
            shape = SlotShape.of(seed)
            if shape not in fit_by_shape:
                fit_by_shape[shape] = [growth.fits(descriptor, shape) for descriptor in offered]
            fit_rows.append(fit_by_shape[shape])
            if not germinable_stage:
                options.append(no_options)
                continue
            if shape not in options_by_shape:
                options_by_shape[shape] = [
                    self.germinations(sizings[j], self.costs(serialized, descriptor, sizings[j], shape), budget)
                    if fit
                    else _ILLEGAL
                    for j, ((serialized, descriptor), fit) in enumerate(
                        zip(serialized_offer, fit_by_shape[shape], strict=True)
                    )
                ]
            options.append(options_by_shape[shape])
        legal_rows = [[option.legal for option in row] for row in options]
        mask_rows: list[list[bool]] = [[False] * len(seeds)]  # NOOP targets no slot
        for op in range(1, NUM_OPERATIONS):
            mask_rows.append([slot_allows(seed, op, any(legal_rows[i])) for i, seed in enumerate(seeds)])

        slot_rows = [
            self._slot_row(
                seed,
                counter,
                host_parameters,
                max_depth,
                fit_rows[i],
                [row[i] for row in mask_rows],
                self._cheapest(options[i], budget),
            )
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
                any(germinable[i] and legal_rows[i][j] for i in range(len(seeds))),
                in_use.get(descriptor.blueprint_id, 0) / len(seeds) if seeds else 0.0,
                sizings[j].choices is not None,
            )
            for j, descriptor in enumerate(offered)
        ]
        s, b = len(seeds), len(offered)
        pair_features = self._pair_features(seeds, offered, counter)
        global_row, coverage = self._global_row(state, metrics, seeds, offered, germinable, budget, counter)

        slot_tensor = torch.tensor(slot_rows, dtype=torch.float32).reshape(s, SLOT_DIM)
        blueprint_tensor = torch.tensor(blueprint_rows, dtype=torch.float32).reshape(b, BLUEPRINT_DIM)
        # Only slots that can germinate have width entries: build those rows, leave the others zero (fewer Python
        # floats through torch.tensor, the encoder's largest cost).
        width_mask = torch.zeros(s, b, NUM_WIDTHS, dtype=torch.bool)
        width_values = torch.zeros(s, b, NUM_WIDTHS)
        width_features = torch.zeros(s, b, NUM_WIDTHS, WIDTH_DIM)
        rows = [i for i, germinable_stage in enumerate(germinable_stages) if germinable_stage]
        if rows and b:
            mask_flat: list[bool] = []
            values_flat: list[float] = []
            features_flat: list[float] = []  # one feature per class (WIDTH_DIM == 1)
            for i in rows:
                for option in options[i]:
                    mask_flat.extend(option.widths)
                    values_flat.extend(option.values)
                    features_flat.extend(option.cost_fractions)
            index = torch.tensor(rows, dtype=torch.int64)
            size = (len(rows), b, NUM_WIDTHS)
            width_mask[index] = torch.tensor(mask_flat, dtype=torch.bool).reshape(size)
            width_values[index] = torch.tensor(values_flat, dtype=torch.float32).reshape(size)
            width_features[index] = torch.tensor(features_flat, dtype=torch.float32).reshape(*size, WIDTH_DIM)
        return EncodedState(
            global_features=torch.tensor(global_row, dtype=torch.float32),
            slot_features=slot_tensor,
            slot_blueprint_index=torch.tensor([self.index(seed.blueprint_id) for seed in seeds], dtype=torch.int64),
            blueprint_features=blueprint_tensor,
            blueprint_index=torch.tensor([self.index(d.blueprint_id) for d in offered], dtype=torch.int64),
            slot_mask=torch.tensor(mask_rows, dtype=torch.bool).reshape(NUM_OPERATIONS, s),
            fit_mask=torch.tensor(legal_rows, dtype=torch.bool).reshape(s, b),
            width_mask=width_mask,
            width_values=width_values,
            width_features=width_features,
            pair_features=pair_features,
            slot_ids=tuple(seed.slot_id for seed in seeds),
            blueprints=offered,
            coverage=coverage,
            truncated_slots=max(len(state.seeds) - MAX_SLOTS, 0),
            truncated_blueprints=max(len({d.blueprint_id for d in blueprints if d.blueprint_id}) - MAX_BLUEPRINTS, 0),
            budget_left=budget.left,
        )

    @staticmethod
    def _pair_features(
        seeds: Sequence[SeedState], offered: Sequence[BlueprintDescriptor], counter: _Counter
    ) -> torch.Tensor:
        """``[S, B, PAIR_DIM]``: each slot's measured blueprints that are offered (the first entry of an id counts;
        others are ignored), zero elsewhere."""
        features = torch.zeros(len(seeds), len(offered), PAIR_DIM)
        if not offered or not any(seed.measured_blueprints for seed in seeds):
            return features
        column = {descriptor.blueprint_id: j for j, descriptor in enumerate(offered)}
        rows: list[int] = []
        columns: list[int] = []
        values: list[float] = []
        for i, seed in enumerate(seeds):
            done: set[int] = set()
            for measured in seed.measured_blueprints:
                j = column.get(measured.blueprint_id)
                if j is None or j in done:
                    continue
                done.add(j)
                rows.append(i)
                columns.append(j)
                values.extend(FeatureEncoder._pair_row(measured, counter))
        if rows:
            index = (torch.tensor(rows, dtype=torch.int64), torch.tensor(columns, dtype=torch.int64))
            features[index] = torch.tensor(values, dtype=torch.float32).reshape(len(rows), PAIR_DIM)
        return features

    @staticmethod
    def _pair_row(measured: MeasuredBlueprint, counter: _Counter) -> list[float]:
        row = [1.0, UNIT(counter.value(measured.risk_score))]
        counter.optional(measured, "latency_ratio", LATENCY_RATIO_SCALE, row)
        counter.optional(measured, "flops_per_sample", FLOPS_SCALE, row)
        return row

    @staticmethod
    def _cheapest(row: Sequence[_Germinations], budget: ParameterBudget) -> float | None:
        """The smallest known cost of a legal germination in a slot, over the budget left (``None``: none known)."""
        costs = [option.cheapest for option in row if option.legal and option.cheapest is not None]
        if not costs or not budget.left > 0:
            return None
        return max(0.0, min(min(costs) / budget.left, 1.0))

    # -- rows -------------------------------------------------------------------------------------------------
    @staticmethod
    def _global_row(
        state: SystemStatePacket,
        metrics: TrainingMetrics,
        seeds: Sequence[SeedState],
        offered: Sequence[BlueprintDescriptor],
        germinable: Sequence[bool],
        budget: ParameterBudget,
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
        row.append(BUDGET_SCALE(budget.total / budget.host))
        left = budget.left_fraction()
        row += [0.0, 0.0] if left is None else [left, 1.0]
        row.append(BUDGET_SCALE(budget.added / budget.host))
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
        cheapest: float | None,
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
        row.append(1.0 if seed.read_shape else 0.0)
        _one_hot(seed.read_kind, SLOT_KINDS, row)
        row.extend(_predicted_decreases(seed, counter))
        row += [0.0, 0.0] if cheapest is None else [cheapest, 1.0]
        return row

    @staticmethod
    def _blueprint_row(
        descriptor: BlueprintDescriptor,
        kinds: frozenset[int],
        counter: _Counter,
        fits_germinable: bool,
        in_use: float,
        width_factor: bool,
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
        row.append(1.0 if width_factor else 0.0)
        return row


def _predicted_decreases(seed: SeedState, counter: _Counter) -> list[float]:
    """(scaled value, presence) for each width class: Kasmina's predicted loss decrease at the largest candidate width
    not above the class (the decrease is cumulative in the width, so that is what the class at least gains)."""
    if not seed.candidate_widths and not seed.predicted_loss_decrease:  # a residual slot, or not measured yet
        return [0.0] * (2 * NUM_WIDTHS)
    widths, decreases = list(seed.candidate_widths), list(seed.predicted_loss_decrease)
    for decrease in decreases:  # each float read once
        if not math.isfinite(decrease):
            counter.nonfinite += 1
    usable = bool(widths) and len(widths) == len(decreases)
    row: list[float] = []
    for width in WIDTH_CLASSES:
        best: tuple[int, float] | None = None
        if usable:
            for candidate, decrease in zip(widths, decreases, strict=True):
                if candidate <= width and (best is None or candidate > best[0]):
                    best = (candidate, decrease)
        if best is None or math.isnan(best[1]):
            row += [0.0, 0.0]
        else:
            row += [PREDICTED_DECREASE_SCALE(best[1]), 1.0]
    return row


# -- batching for training -----------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class EncodedBatch:
    """Several encoded decision points, padded to the largest slot and blueprint counts.

    Shapes: ``global_features [N, G]``, ``slot_features [N, S, F]``, ``slot_blueprint_index [N, S]``,
    ``slot_valid [N, S]``, ``blueprint_features [N, B, H]``, ``blueprint_index [N, B]``, ``blueprint_valid [N, B]``,
    ``slot_mask [N, NUM_OPERATIONS, S]``, ``fit_mask [N, S, B]``, ``width_mask [N, S, B, NUM_WIDTHS]``,
    ``width_features [N, S, B, NUM_WIDTHS, WIDTH_DIM]``, ``pair_features [N, S, B, PAIR_DIM]``. Padding is invalid
    and masked everywhere.
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
    width_mask: torch.Tensor
    width_features: torch.Tensor
    pair_features: torch.Tensor

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
            width_mask=one.width_mask.unsqueeze(0),
            width_features=one.width_features.unsqueeze(0),
            pair_features=one.pair_features.unsqueeze(0),
        )
    slot_features = torch.zeros(n, slots, SLOT_DIM)
    slot_index = torch.zeros(n, slots, dtype=torch.int64)
    slot_valid = torch.zeros(n, slots, dtype=torch.bool)
    blueprint_features = torch.zeros(n, offered, BLUEPRINT_DIM)
    blueprint_ids = torch.zeros(n, offered, dtype=torch.int64)
    blueprint_valid = torch.zeros(n, offered, dtype=torch.bool)
    slot_mask = torch.zeros(n, NUM_OPERATIONS, slots, dtype=torch.bool)
    fit_mask = torch.zeros(n, slots, offered, dtype=torch.bool)
    width_mask = torch.zeros(n, slots, offered, NUM_WIDTHS, dtype=torch.bool)
    width_features = torch.zeros(n, slots, offered, NUM_WIDTHS, WIDTH_DIM)
    pair_features = torch.zeros(n, slots, offered, PAIR_DIM)
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
        width_mask[i, :s, :b] = state.width_mask
        width_features[i, :s, :b] = state.width_features
        pair_features[i, :s, :b] = state.pair_features
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
        width_mask=width_mask,
        width_features=width_features,
        pair_features=pair_features,
    )
