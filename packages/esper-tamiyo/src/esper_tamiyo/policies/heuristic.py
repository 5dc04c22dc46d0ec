"""The ``heuristic`` policy: explainable rules, every threshold a config option (``[tamiyo.heuristic]``).

At each decision point it returns the first of:

1. **Cull** a seed that hurts (its contribution fell below ``-hurt_threshold`` while it is in the forward pass),
   that did not become useful in TRAINING within ``training_patience``, that failed to clear ``shadow_threshold``
   in SHADOWING, or that did not clear ``fossilize_threshold`` within its probation. The worst seed first.
   "Hurts" and "failed to clear" allow a tolerance: the contribution must be below the threshold by more than
   ``hurt_threshold`` and by more than ``noise_z`` of its standard errors (a young seed's contribution is often
   within noise of 0; straight-through TRAINING only warms a seed up, its worth shows once it blends in).
2. **Advance** a seed whose measurements allow it, latest stage first: FOSSILIZE after ``probation_epochs`` with a
   contribution of at least ``fossilize_threshold``; EVALUATE (to probation) with at least ``shadow_threshold``;
   STABILIZE once its alpha ramp is done; START_GRAFTING once, after ``min_training_epochs``, it would not hurt at
   full strength (contribution above ``graft_threshold``, within the tolerance); START_TRAINING right after
   germination.
3. **Germinate** when the host underfits (training loss at least ``underfit_ratio`` × validation loss at each of the
   last ``plateau_window`` epoch ends: no generalization gap, the classic sign that capacity is the limit) or its
   validation loss has plateaued (its best over the last ``plateau_window`` decision points improved on the best
   before by less than ``plateau_threshold``), not before ``warmup_epochs`` nor with fewer than
   ``min_remaining_epochs`` left, while fewer than ``max_concurrent_seeds`` are in flight and the parameter budget
   allows. The slot is the DORMANT, un-embargoed slot where the loss is most sensitive to the host's activation
   (first-order saliency: the norm of the loss gradient at the slot times the activation's RMS, both measured on the
   probe batch), weighed against the best blueprint each slot can take: the choice is the (slot, blueprint) pair
   with the highest blueprint score plus ``saliency_weight`` × the slot's saliency over the highest. A blueprint's
   score, among those that fit the slot's kind and the remaining budget: preference order, minus ``cost_weight`` ×
   |ln(its parameters / a fair share of the budget left)| (the share is the budget left over
   ``max_concurrent_seeds``: real capacity, room for the others), minus ``risk_weight`` × its risk, minus
   ``measured_cost_weight`` × ln(its measured latency ratio), plus ``history_weight`` × (its fossilized minus culled
   seeds this run). The risk is the one Urabrask measured at the slot when the packet lists it
   (``SeedState.measured_blueprints``, filled by the controller), the catalog's declared risk otherwise; the latency
   ratio (its training step over a plain layer's at the slot) counts only where it was measured. The rationale says
   which risk it used.
4. Otherwise **wait** (a no-op).

Every command carries a rationale that says which rule fired and with what numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    MeasuredBlueprint,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    growth,
    lifecycle,
)
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_tamiyo.budget import WIDTH, ParameterBudget, catalog_cost
from esper_tamiyo.commands import (
    SCHEDULES,
    default_parameters,
    noop,
    seed_command,
)
from esper_tamiyo.measured import log_ratio
from esper_tamiyo.options import HeuristicOptions

NAME = "heuristic"


@attrs.define
class Candidate:
    descriptor: BlueprintDescriptor
    cost: int
    score: float
    #: The parameters to germinate it with (its defaults, with ``width`` sized to the budget share).
    parameters: dict[str, float] = attrs.Factory(dict)
    #: The risk it was scored with, and whether Urabrask measured it at the slot ("measured") or the catalog
    #: declared it ("declared").
    risk: float = 0.0
    risk_source: str = "declared"
    #: Its measured training step over a plain layer's at the slot (None: not measured).
    latency_ratio: float | None = None

    def describe_risk(self) -> str:
        """``"measured risk 0.021, 1.8x a plain layer's step"`` or ``"declared risk 0.100"``."""
        latency = f", {self.latency_ratio:.3g}x a plain layer's step" if self.latency_ratio is not None else ""
        return f"{self.risk_source} risk {self.risk:.3f}{latency}"


class HeuristicPolicy:
    name = NAME

    def __init__(self, options: HeuristicOptions | None = None, catalogs: Sequence[BlueprintCatalog] = ()) -> None:
        self.options = options or HeuristicOptions()
        self.catalogs = list(catalogs)
        self.losses: deque[float] = deque(maxlen=self.options.plateau_window * 2 + 1)
        #: Training over validation loss at the last decision points that had both (epoch ends).
        self.fit_ratios: deque[float] = deque(maxlen=self.options.plateau_window)
        self.host_parameters: int | None = None
        self.record: dict[str, int] = {}
        self._stages: dict[str, tuple[int, str]] = {}
        self._last_epoch: int | None = None

    # -- the decision -----------------------------------------------------------------------------------------
    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        self._observe(state)
        for rule in (self._cull, self._advance, lambda s: self._germinate(s, blueprints)):
            command = rule(state)
            if command is not None:
                return command
        return noop(self._waiting_reason(state), NAME)

    def _observe(self, state: SystemStatePacket) -> None:
        """Learn from the packet once per decision point: loss history and seeds' fates."""
        if self._last_epoch == state.current_epoch and self.losses:
            return
        self._last_epoch = state.current_epoch
        metrics = state.metrics
        if self.host_parameters is None and metrics.parameter_count:
            in_seeds = sum(seed.parameter_count for seed in state.seeds)
            self.host_parameters = max(int(metrics.parameter_count) - in_seeds, 1)
        if metrics.HasField("val_loss"):
            self.losses.append(metrics.val_loss)
            if metrics.HasField("train_loss") and metrics.val_loss > 0:
                self.fit_ratios.append(metrics.train_loss / metrics.val_loss)
        for seed in state.seeds:
            previous = self._stages.get(seed.slot_id)
            if previous is not None and previous[1]:
                stage, blueprint = previous
                if seed.stage == lifecycle.FOSSILIZED and stage != lifecycle.FOSSILIZED:
                    self.record[blueprint] = self.record.get(blueprint, 0) + 1
                elif seed.stage in (lifecycle.CULLED, lifecycle.EMBARGOED) and stage in lifecycle.IN_FLIGHT:
                    self.record[blueprint] = self.record.get(blueprint, 0) - 1
            self._stages[seed.slot_id] = (seed.stage, seed.blueprint_id)

    # -- 1. culls ---------------------------------------------------------------------------------------------
    def _cull(self, state: SystemStatePacket) -> AdaptationCommand | None:
        worst: tuple[float, SeedState, str] | None = None
        for seed in state.seeds:
            reason = self._cull_reason(seed)
            if reason is not None:
                badness = -(seed.contribution if seed.HasField("contribution") else 0.0)
                if worst is None or badness > worst[0]:
                    worst = (badness, seed, reason)
        if worst is None:
            return None
        _, seed, reason = worst
        return seed_command(
            SeedOperation.SEED_OP_CULL,
            seed.slot_id,
            f"cull {seed.slot_id} ({seed.blueprint_id}): {reason}",
            policy=NAME,
        )

    def _cull_reason(self, seed: SeedState) -> str | None:
        """Why ``seed`` should go, by the first rule that applies, or None."""
        o = self.options
        contribution = seed.contribution if seed.HasField("contribution") else None
        in_forward = (lifecycle.BLENDING, lifecycle.SHADOWING, lifecycle.PROBATIONARY)
        if seed.stage in in_forward and contribution is not None:
            limit = -self._tolerance(seed)
            if contribution < limit:
                return f"it hurts: contribution {contribution:.4g} < {limit:.4g}"
        unhelpful = contribution is None or contribution <= o.graft_threshold - self._tolerance(seed)
        if seed.stage == lifecycle.TRAINING and seed.stage_epochs >= o.training_patience and unhelpful:
            shown = "unmeasured" if contribution is None else f"{contribution:.4g}"
            return f"no useful contribution after {seed.stage_epochs} epochs of training ({shown})"
        shadowing = seed.stage == lifecycle.SHADOWING and seed.stage_epochs >= 1
        if shadowing and contribution is not None and contribution < o.shadow_threshold - self._tolerance(seed):
            return f"contribution {contribution:.4g} clearly below the shadowing threshold {o.shadow_threshold:g}"
        probation_over = seed.stage_epochs >= o.probation_epochs + o.probation_patience
        short = contribution is None or contribution < o.fossilize_threshold
        if seed.stage == lifecycle.PROBATIONARY and probation_over and short:
            return f"probation over without reaching {o.fossilize_threshold:g}"
        return None

    def _tolerance(self, seed: SeedState) -> float:
        """How far a contribution may sit below a threshold and not count as harm: ``hurt_threshold``, or more when
        the measurement is noisier (``noise_z`` standard errors)."""
        stderr = seed.contribution_stderr if seed.HasField("contribution_stderr") else 0.0
        return max(self.options.hurt_threshold, self.options.noise_z * stderr)

    # -- 2. advances ------------------------------------------------------------------------------------------
    def _ready(self, operation: int, seed: SeedState) -> str | None:
        o = self.options
        contribution = seed.contribution if seed.HasField("contribution") else None
        if operation == SeedOperation.SEED_OP_START_TRAINING:
            return "germinated; start training"
        if operation == SeedOperation.SEED_OP_START_GRAFTING:
            allowed = o.graft_threshold - self._tolerance(seed)
            if seed.stage_epochs >= o.min_training_epochs and contribution is not None and contribution > allowed:
                return (
                    f"would not hurt at full strength: contribution {contribution:.4g} > {allowed:.4g} "
                    f"(graft threshold {o.graft_threshold:g} less the tolerance)"
                )
            return None
        if operation == SeedOperation.SEED_OP_STABILIZE:
            if seed.alpha_total_steps and seed.alpha_steps >= seed.alpha_total_steps:
                return f"blending ramp done ({seed.alpha_steps}/{seed.alpha_total_steps})"
            return None
        if operation == SeedOperation.SEED_OP_EVALUATE:
            allowed = o.shadow_threshold - self._tolerance(seed)
            if seed.stage_epochs >= 1 and contribution is not None and contribution >= allowed:
                return (
                    f"contribution {contribution:.4g} >= {allowed:.4g} in shadowing "
                    f"(shadow threshold {o.shadow_threshold:g} less the tolerance)"
                )
            return None
        if operation == SeedOperation.SEED_OP_FOSSILIZE:
            if (
                seed.stage_epochs >= o.probation_epochs
                and contribution is not None
                and contribution >= o.fossilize_threshold
            ):
                return f"probation passed with contribution {contribution:.4g} >= {o.fossilize_threshold:g}"
            return None
        return None

    def _advance(self, state: SystemStatePacket) -> AdaptationCommand | None:
        for operation, (source, _target) in reversed(lifecycle.ADVANCES.items()):  # latest stage first
            for seed in state.seeds:
                if seed.stage != source:
                    continue
                reason = self._ready(operation, seed)
                if reason is not None:
                    name = lifecycle.operation_name(operation).lower()
                    return seed_command(operation, seed.slot_id, f"{name} {seed.slot_id}: {reason}", policy=NAME)
        return None

    # -- 3. germination ---------------------------------------------------------------------------------------
    def growth_signal(self) -> tuple[bool, str]:
        """Whether the host should grow, and why: it underfits, or its validation loss has plateaued."""
        o = self.options
        window = o.plateau_window
        ratios = list(self.fit_ratios)
        if o.underfit_ratio > 0 and len(ratios) == window and min(ratios) >= o.underfit_ratio:
            shown = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            return True, f"the host underfits: training / validation loss {shown} (>= {o.underfit_ratio:g})"
        if len(self.losses) < window + 1:
            return False, f"{len(self.losses)} validation measurements; need {window + 1} to judge a plateau"
        history = list(self.losses)
        recent, before = min(history[-window:]), min(history[:-window])
        improvement = (before - recent) / max(abs(before), 1e-12)
        if improvement < o.plateau_threshold:
            return (
                True,
                f"validation loss improved {improvement:.2%} over {window} epochs (< {o.plateau_threshold:.2%})",
            )
        return False, f"still improving: {improvement:.2%} over {window} epochs"

    def _too_late(self, state: SystemStatePacket) -> bool:
        total = state.metrics.epochs_total
        return bool(total) and total - state.current_epoch < self.options.min_remaining_epochs

    def budget(self, state: SystemStatePacket) -> ParameterBudget:
        """The parameter budget at ``state`` (:mod:`esper_tamiyo.budget`, shared with the learned policy), with the
        host's count of the first packet that gave one."""
        return ParameterBudget.of(
            state,
            max_added_parameter_fraction=self.options.max_added_parameter_fraction,
            max_seed_parameter_fraction=self.options.max_seed_parameter_fraction,
            host=self.host_parameters,
        )

    def budget_left(self, state: SystemStatePacket) -> float:
        return self.budget(state).left

    def _cost(self, descriptor: BlueprintDescriptor, seed: SeedState, parameters: Mapping[str, float]) -> int | None:
        return catalog_cost(self.catalogs, descriptor.blueprint_id, SlotShape.of(seed), parameters)

    def sized(
        self, descriptor: BlueprintDescriptor, seed: SeedState, share: float
    ) -> tuple[dict[str, float], int | None]:
        """Parameters for ``descriptor`` at ``seed``'s slot and their cost: the defaults, and (``sizing = "share"``)
        the largest whole ``width`` within its bounds whose cost fits ``share`` (its smallest width if none does)."""
        parameters = default_parameters(descriptor)
        bounds = descriptor.allowed_parameters.get(WIDTH)
        if self.options.sizing != "share" or bounds is None or share <= 0:
            return parameters, self._cost(descriptor, seed, parameters)
        low, high = math.ceil(bounds.min_value), math.floor(bounds.max_value)

        def cost_at(width: int) -> int | None:
            return self._cost(descriptor, seed, {**parameters, WIDTH: float(width)})

        smallest = cost_at(low)
        if smallest is None:
            return parameters, self._cost(descriptor, seed, parameters)
        best = low
        while low < high:  # the cost grows with the width: the largest width within the share
            middle = (low + high + 1) // 2
            cost = cost_at(middle)
            if cost is not None and cost <= share:
                best, low = middle, middle
            else:
                high = middle - 1
        parameters[WIDTH] = float(best)
        return parameters, cost_at(best)

    def rank_blueprints(
        self, seed: SeedState, blueprints: Sequence[BlueprintDescriptor], budget: float
    ) -> list[Candidate]:
        """Blueprints that fit ``seed``'s slot and ``budget``, best first, each with the parameters to use.

        A seed should add real capacity but leave room for the others: blueprints with a width are sized to a fair
        share of the budget left (``budget / max_concurrent_seeds``, at most ``max_seed_parameter_fraction`` of the
        host), and the cost term prefers a parameter count close
        to that share, penalizing the log of the ratio, so a 4-parameter scale and a blueprint that eats the whole
        budget both score low.
        """
        o = self.options
        largest = o.max_seed_parameter_fraction * (self.host_parameters or 1)
        share = min(budget / o.max_concurrent_seeds, largest) if budget > 0 else 0.0
        ranked = []
        measured: dict[str, MeasuredBlueprint] = {m.blueprint_id: m for m in seed.measured_blueprints}
        for position, descriptor in enumerate(blueprints):
            if not growth.fits(descriptor, SlotShape.of(seed)):
                continue
            parameters, cost = self.sized(descriptor, seed, share)
            if cost is not None and (cost > budget or (self.host_parameters and cost > largest)):
                continue
            fit = abs(math.log(max(cost, 1) / share)) if cost is not None and share > 0 else 0.0
            preference = 0.0
            if descriptor.blueprint_id in o.preferred_blueprints:
                preference = 1.0 - o.preferred_blueprints.index(descriptor.blueprint_id) / len(o.preferred_blueprints)
            sheet = measured.get(descriptor.blueprint_id)
            risk, source, slowdown = float(descriptor.risk), "declared", None
            if sheet is not None:
                risk, source = float(sheet.risk_score), "measured"
                slowdown = log_ratio(sheet)
            score = (
                preference
                - o.cost_weight * fit
                - o.risk_weight * risk
                - (o.measured_cost_weight * slowdown if slowdown is not None else 0.0)
                + o.history_weight * self.record.get(descriptor.blueprint_id, 0)
                - 1e-6 * position  # stable ties: catalog order
            )
            latency = math.exp(slowdown) if slowdown is not None else None
            ranked.append(Candidate(descriptor, cost or 0, score, parameters, risk, source, latency))
        return sorted(ranked, key=lambda candidate: -candidate.score)

    @staticmethod
    def predicted(seed: SeedState, width: float) -> float | None:
        """The predicted loss decrease of ``width`` new units at a DORMANT width slot (``None``: not measured)."""
        widths, decreases = list(seed.candidate_widths), list(seed.predicted_loss_decrease)
        if not widths or len(widths) != len(decreases):
            return None
        below = [decrease for candidate, decrease in zip(widths, decreases, strict=True) if candidate <= width]
        return below[-1] if below else decreases[0]

    @staticmethod
    def saliency(seed: SeedState) -> float:
        gradient = seed.host_gradient_norm if seed.HasField("host_gradient_norm") else 0.0
        activation = seed.activation_rms if seed.HasField("activation_rms") else 0.0
        return gradient * activation

    def _germinate(
        self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]
    ) -> AdaptationCommand | None:
        o = self.options
        if state.current_epoch < o.warmup_epochs or self._too_late(state):
            return None
        in_flight = sum(seed.stage in lifecycle.IN_FLIGHT for seed in state.seeds)
        if in_flight >= o.max_concurrent_seeds:
            return None
        plateau, why = self.growth_signal()
        if not plateau:
            return None
        budget = self.budget_left(state)
        free = [s for s in state.seeds if lifecycle.can_germinate(s)]
        best = {seed.slot_id: ranked[0] for seed in free if (ranked := self.rank_blueprints(seed, blueprints, budget))}
        # How much a slot promises: where the loss's gradient and the activation are large (saliency); at a width
        # slot, the loss decrease its statistics predict for the chosen width (GroMo's selection rule). Each is
        # taken relative to the best of its kind among the free slots, so the two scales never mix.
        predictions = {
            slot_id: value
            for slot_id, candidate in best.items()
            for seed in free
            if seed.slot_id == slot_id
            and (value := self.predicted(seed, candidate.parameters.get(WIDTH, 0.0))) is not None
        }
        highest = max((self.saliency(s) for s in free), default=0.0) or 1.0
        highest_prediction = max(predictions.values(), default=0.0) or 1.0
        options = []
        for seed in free:
            choice = best.get(seed.slot_id)
            if choice is None:
                continue
            if seed.slot_id in predictions:
                relative = max(predictions[seed.slot_id], 0.0) / highest_prediction
            else:
                relative = self.saliency(seed) / highest
            options.append((choice.score + o.saliency_weight * relative, -seed.layer_depth, seed, choice, relative))
        if not options:
            return None
        total, _, seed, choice, relative = max(options, key=lambda option: option[:2])
        promise = (
            f"predicted loss decrease {predictions[seed.slot_id]:.3g}"
            if seed.slot_id in predictions
            else f"saliency {self.saliency(seed):.3g}"
        )
        sized = f", width {choice.parameters[WIDTH]:g}" if WIDTH in choice.parameters else ""
        rationale = (
            f"germinate {choice.descriptor.blueprint_id} ({choice.descriptor.name}{sized}, {choice.cost} parameters, "
            f"{choice.describe_risk()}, score {choice.score:.3f}) in {seed.slot_id} ({promise}, {relative:.0%} of "
            "the best of its kind; "
            f"total {total:.3f}): {why}; budget left {budget:.0f} parameters"
        )
        command = seed_command(
            SeedOperation.SEED_OP_GERMINATE,
            seed.slot_id,
            rationale,
            policy=NAME,
            blueprint_id=choice.descriptor.blueprint_id,
            parameters=choice.parameters,
            schedule=SCHEDULES[o.blend_schedule],
        )
        command.decision.selected_slot_score = predictions.get(seed.slot_id, self.saliency(seed))
        command.decision.blueprint_score = choice.score
        return command

    def _waiting_reason(self, state: SystemStatePacket) -> str:
        o = self.options
        if state.current_epoch < o.warmup_epochs:
            return f"warming up ({state.current_epoch}/{o.warmup_epochs} epochs)"
        if self._too_late(state):
            left = state.metrics.epochs_total - state.current_epoch
            unused = self._unused_budget(state)
            return (
                f"too late to grow: {left} epoch{'s' if left != 1 else ''} left (a seed needs {o.min_remaining_epochs})"
                + unused
            )
        in_flight = sum(seed.stage in lifecycle.IN_FLIGHT for seed in state.seeds)
        if in_flight >= o.max_concurrent_seeds:
            return f"{in_flight} seeds in flight (max {o.max_concurrent_seeds})"
        plateau, why = self.growth_signal()
        if not plateau:
            return why
        if not any(lifecycle.can_germinate(s) for s in state.seeds):
            return "no dormant slot is free"
        return f"no offered blueprint fits a free slot within the parameter budget ({self.budget_left(state):.0f} left)"

    def _unused_budget(self, state: SystemStatePacket) -> str:
        """``"; N of M budget parameters unused"`` when more than half the budget was never spent (else empty)."""
        budget = self.budget(state)
        total, left = budget.total, budget.left
        return f"; {left:.0f} of {total:.0f} budget parameters unused" if total > 0 and left > total / 2 else ""

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "fit_ratios": list(self.fit_ratios),
            "host_parameters": self.host_parameters,
            "record": dict(self.record),
            "stages": {slot: list(value) for slot, value in self._stages.items()},
            "last_epoch": self._last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state.get("losses", []))
        self.fit_ratios.clear()
        self.fit_ratios.extend(state.get("fit_ratios", []))
        self.host_parameters = state.get("host_parameters")
        self.record = dict(state.get("record", {}))
        self._stages = {slot: (int(value[0]), str(value[1])) for slot, value in state.get("stages", {}).items()}
        self._last_epoch = state.get("last_epoch")
