"""The ``example-greedy`` Tamiyo policy (``tamiyo.policy = "example-greedy"``, options in
``[tamiyo.example-greedy]``).

Esper's ``heuristic`` policy waits for the validation loss to plateau and weighs blueprints by cost, risk and
history; ``fixed-schedule`` grows on a timetable. This policy is greedy instead: it grows one blueprint as soon as
the warm-up is over, wherever the host looks most sensitive, and pushes each seed through its lifecycle as fast as
the seed's stage allows. Its only judgement is the seed's measured contribution. At each decision point it returns
the first of:

1. **Cull** a seed whose measured contribution (validation loss without the seed minus with it) is below
   ``cull_below``, the worst first; or a seed still PROBATIONARY after ``max_probation_epochs`` without a
   non-negative contribution.
2. **Advance** a seed, latest stage first (finishing a seed comes before moving an earlier one along):
   FOSSILIZE after ``probation_epochs`` in PROBATIONARY with a contribution of at least 0; EVALUATE after one epoch
   in SHADOWING (once it has been measured at full strength); STABILIZE when its alpha ramp is done;
   START_GRAFTING after ``training_epochs`` in TRAINING; START_TRAINING right after germination.
3. **Germinate** ``blueprint`` after ``warmup_epochs`` (and while at least ``min_remaining_epochs`` remain, when
   the run's length is known), while fewer than ``max_in_flight`` seeds are in flight, in the DORMANT,
   un-embargoed slot it fits with the largest ``host_gradient_norm * activation_rms`` (a first-order estimate of how
   much the loss depends on the activation there; ties go to the shallower slot).
4. Otherwise **wait**, saying why.

Every command carries a rationale. The policy is stateless: each decision follows from the state packet alone, so
a resumed run decides exactly as an uninterrupted one and there is nothing to checkpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import attrs
from esper_core.config import section
from esper_core.config.validators import at_least, not_negative
from esper_core.errors import ConfigError
from esper_core.leyline import (
    AdaptationCommand,
    BlendSchedule,
    BlueprintDescriptor,
    BlueprintTier,
    CommandSeedOperation,
    CommandType,
    DecisionMetadata,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    growth,
    lifecycle,
)
from esper_core.protocols import SlotShape

from esper_example_plugin import __version__
from esper_example_plugin.catalog import BLUEPRINT_ID

NAME = "example-greedy"

SCHEDULES = {
    "linear": BlendSchedule.BLEND_SCHEDULE_LINEAR,
    "cosine": BlendSchedule.BLEND_SCHEDULE_COSINE,
    "tanh": BlendSchedule.BLEND_SCHEDULE_TANH,
}


def _negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value < 0:
        raise ValueError(f"{attribute.name} must be negative (a seed that merely does not help stays), got {value}")


@section("tamiyo.example-greedy")
@attrs.frozen
class GreedyOptions:
    """``[tamiyo.example-greedy]``. Epoch counts are decision points (one per epoch by default)."""

    #: The blueprint to grow; it must be offered by a catalog in ``urza.catalogs`` at ``urza.allowed_tiers``.
    blueprint: str = BLUEPRINT_ID
    #: No germination before this many decision points.
    warmup_epochs: int = attrs.field(default=2, validator=not_negative)
    #: No germination when fewer decision points than this remain: at full speed a seed needs five to go from
    #: germination to FOSSILIZED (training, grafting, stabilizing, evaluating, fossilizing).
    min_remaining_epochs: int = attrs.field(default=5, validator=not_negative)
    #: Seeds in flight (GERMINATED to PROBATIONARY) at once.
    max_in_flight: int = attrs.field(default=1, validator=at_least(1))
    #: Epochs a seed trains beside the host before it starts blending in.
    training_epochs: int = attrs.field(default=1, validator=at_least(1))
    #: Epochs of probation before a seed whose contribution is at least 0 is fossilized.
    probation_epochs: int = attrs.field(default=1, validator=at_least(1))
    #: Epochs of probation after which a seed whose contribution never reached 0 is culled.
    max_probation_epochs: int = attrs.field(default=3, validator=at_least(1))
    #: Cull a seed whose measured contribution falls below this (validation-loss units; negative).
    cull_below: float = attrs.field(default=-0.01, validator=_negative)
    #: How a germinated seed's alpha ramps up while BLENDING.
    blend_schedule: Literal["linear", "cosine", "tanh"] = "linear"

    def __attrs_post_init__(self) -> None:
        if self.max_probation_epochs < self.probation_epochs:
            raise ValueError(
                f"max_probation_epochs ({self.max_probation_epochs}) must be at least probation_epochs "
                f"({self.probation_epochs})"
            )


def check_blueprint_choice(
    options: GreedyOptions, descriptors: Sequence[BlueprintDescriptor], allowed_tiers: Collection[str]
) -> None:
    """Fail at setup, not silently at every decision, when ``options.blueprint`` cannot be germinated: no catalog
    of the run has it, or its tier is not allowed. ``descriptors`` are those of every catalog of the run."""
    key = f"tamiyo.{NAME}.blueprint"
    by_id = {descriptor.blueprint_id: descriptor for descriptor in descriptors}
    descriptor = by_id.get(options.blueprint)
    offered = sorted(i for i, d in by_id.items() if _tier(d) in allowed_tiers)
    if descriptor is None:
        raise ConfigError(
            f"{key} = {options.blueprint!r}: no catalog in urza.catalogs has this blueprint; "
            f"offered: {', '.join(offered) or 'none'}"
        )
    if _tier(descriptor) not in allowed_tiers:
        raise ConfigError(
            f"{key} = {options.blueprint!r}: its tier {_tier(descriptor)} is not in urza.allowed_tiers "
            f"{sorted(allowed_tiers)}; allow it there or choose one of {', '.join(offered) or 'none'}"
        )


def _tier(descriptor: BlueprintDescriptor) -> str:
    return BlueprintTier.Name(descriptor.tier).removeprefix("BLUEPRINT_TIER_")


class GreedyPolicy:
    """See the module docstring. Satisfies :class:`esper_core.protocols.TamiyoPolicy`."""

    name = NAME
    version = __version__

    def __init__(self, options: GreedyOptions | None = None) -> None:
        self.options = options or GreedyOptions()

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        command = self._cull(state) or self._advance(state)
        if command is not None:
            return command
        germination = self._germinate(state, blueprints)
        if isinstance(germination, AdaptationCommand):
            return germination
        return self._command(CommandType.COMMAND_NOOP, germination)

    # -- 1. culls ---------------------------------------------------------------------------------------------
    def _cull(self, state: SystemStatePacket) -> AdaptationCommand | None:
        o = self.options
        hurting: list[tuple[float, str, SeedState]] = []
        for seed in state.seeds:
            contribution = _contribution(seed)
            if seed.stage in lifecycle.IN_FLIGHT and contribution is not None and contribution < o.cull_below:
                hurting.append((contribution, seed.slot_id, seed))
        if hurting:
            worst, _, seed = min(hurting, key=lambda item: item[:2])
            return self._seed(
                SeedOperation.SEED_OP_CULL, seed, f"it hurts: contribution {worst:.4g} < {o.cull_below:g}"
            )
        for seed in state.seeds:
            contribution = _contribution(seed)
            stuck = contribution is None or contribution < 0
            if seed.stage == lifecycle.PROBATIONARY and seed.stage_epochs >= o.max_probation_epochs and stuck:
                shown = "unmeasured" if contribution is None else f"{contribution:.4g}"
                why = f"{seed.stage_epochs} epochs of probation without a contribution of at least 0 ({shown})"
                return self._seed(SeedOperation.SEED_OP_CULL, seed, why)
        return None

    # -- 2. advances ------------------------------------------------------------------------------------------
    def _advance(self, state: SystemStatePacket) -> AdaptationCommand | None:
        seeds = sorted(state.seeds, key=lambda seed: seed.slot_id)
        for operation, (stage, _target) in reversed(lifecycle.ADVANCES.items()):  # latest stage first
            for seed in seeds:
                if seed.stage == stage:
                    why = self._ready(operation, seed)
                    if why is not None:
                        return self._seed(operation, seed, why)
        return None

    def _ready(self, operation: SeedOperation.ValueType, seed: SeedState) -> str | None:
        """Why ``seed`` may take ``operation`` now, or None."""
        o = self.options
        if operation == SeedOperation.SEED_OP_START_TRAINING:
            return "germinated: start training"
        if operation == SeedOperation.SEED_OP_START_GRAFTING and seed.stage_epochs >= o.training_epochs:
            return f"trained for {seed.stage_epochs} epochs: start blending in"
        if (
            operation == SeedOperation.SEED_OP_STABILIZE
            and seed.alpha_total_steps
            and seed.alpha_steps >= seed.alpha_total_steps
        ):
            return f"alpha ramp done ({seed.alpha_steps}/{seed.alpha_total_steps})"
        if operation == SeedOperation.SEED_OP_EVALUATE and seed.stage_epochs >= 1:
            return "measured at full strength in shadowing: start probation"
        contribution = _contribution(seed)
        if (
            operation == SeedOperation.SEED_OP_FOSSILIZE
            and seed.stage_epochs >= o.probation_epochs
            and contribution is not None
            and contribution >= 0
        ):
            return f"contribution {contribution:.4g} >= 0 after {seed.stage_epochs} epochs of probation"
        return None

    # -- 3. germination ---------------------------------------------------------------------------------------
    def _germinate(
        self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]
    ) -> AdaptationCommand | str:
        """The germination command, or why there is none."""
        o = self.options
        if state.current_epoch < o.warmup_epochs:
            return f"warming up ({state.current_epoch}/{o.warmup_epochs} epochs)"
        total = state.metrics.epochs_total if state.metrics.HasField("epochs_total") else 0
        if total and total - state.current_epoch < o.min_remaining_epochs:
            left = total - state.current_epoch
            return f"too late to grow: {left} epochs left, a seed needs {o.min_remaining_epochs}"
        in_flight = sum(seed.stage in lifecycle.IN_FLIGHT for seed in state.seeds)
        if in_flight >= o.max_in_flight:
            return f"{in_flight} seed(s) in flight (max {o.max_in_flight})"
        descriptor = next((d for d in blueprints if d.blueprint_id == o.blueprint), None)
        if descriptor is None:
            offered = ", ".join(d.blueprint_id for d in blueprints) or "none"
            return f"blueprint {o.blueprint} is not offered to this run (offered: {offered})"
        free = [
            seed
            for seed in state.seeds
            if lifecycle.can_germinate(seed) and growth.fits(descriptor, SlotShape.of(seed))
        ]
        if not free:
            return f"no DORMANT, un-embargoed slot that {o.blueprint} grows in"
        ranked = sorted(free, key=lambda seed: (-saliency(seed), seed.layer_depth, seed.slot_id))
        chosen = ranked[0]
        score = saliency(chosen)
        runner_up = f"; next {ranked[1].slot_id} at {saliency(ranked[1]):.4g}" if len(ranked) > 1 else ""
        command = self._seed(
            SeedOperation.SEED_OP_GERMINATE,
            chosen,
            f"germinate {o.blueprint} in {chosen.slot_id}, the most sensitive free slot "
            f"(host gradient norm x activation RMS = {score:.4g}{runner_up})",
            blueprint=descriptor,
        )
        command.decision.selected_slot_score = score
        return command

    # -- building commands ------------------------------------------------------------------------------------
    def _seed(
        self,
        operation: SeedOperation.ValueType,
        seed: SeedState,
        rationale: str,
        *,
        blueprint: BlueprintDescriptor | None = None,
    ) -> AdaptationCommand:
        payload = CommandSeedOperation(operation=operation)
        if blueprint is not None:
            payload.blueprint_id = blueprint.blueprint_id
            payload.parameters.update(default_parameters(blueprint))
            payload.blend_schedule = SCHEDULES[self.options.blend_schedule]
        command = self._command(CommandType.COMMAND_SEED, rationale)
        command.target_slot_id = seed.slot_id
        command.seed_operation.CopyFrom(payload)
        return command

    def _command(self, command_type: CommandType.ValueType, rationale: str) -> AdaptationCommand:
        return AdaptationCommand(
            version=1,
            command_type=command_type,
            decision=DecisionMetadata(policy_name=NAME, policy_version=self.version, rationale=rationale),
        )


def saliency(seed: SeedState) -> float:
    """``host_gradient_norm * activation_rms`` at the slot; 0 where either was not measured."""
    gradient = seed.host_gradient_norm if seed.HasField("host_gradient_norm") else 0.0
    rms = seed.activation_rms if seed.HasField("activation_rms") else 0.0
    return gradient * rms


def default_parameters(descriptor: BlueprintDescriptor) -> Mapping[str, float]:
    """Every declared parameter at its default: in bounds by construction, and the same command every time."""
    return {name: descriptor.allowed_parameters[name].default_value for name in sorted(descriptor.allowed_parameters)}


def _contribution(seed: SeedState) -> float | None:
    return seed.contribution if seed.HasField("contribution") else None
