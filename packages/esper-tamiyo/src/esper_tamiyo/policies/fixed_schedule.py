"""The ``fixed-schedule`` baseline (``[tamiyo.fixed-schedule]``): grow on a timetable, without judgement.

At each configured epoch it germinates the configured blueprint (or the first offered one that fits) into the
configured slot (or the shallowest DORMANT one), with the blueprint's default parameters unless the schedule sets
some (``parameters = {width = 12}``). Otherwise it advances seeds as soon as Kasmina allows, latest stage
first, and fossilizes after ``probation_epochs`` whatever the seed's contribution. It never culls (Kasmina's gates
still can). It exists so that experiments can tell how much of a result comes from *deciding* when and where to
grow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    growth,
    lifecycle,
)
from esper_core.protocols import SlotShape
from esper_tamiyo.commands import SCHEDULES, default_parameters, noop, seed_command
from esper_tamiyo.options import FixedScheduleOptions, ScheduledGermination

NAME = "fixed-schedule"


class FixedSchedulePolicy:
    name = NAME

    def __init__(self, options: FixedScheduleOptions | None = None) -> None:
        self.options = options or FixedScheduleOptions()
        self.done: set[int] = set()

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        for index, planned in enumerate(self.options.germinations):
            if index not in self.done and state.current_epoch >= planned.epoch:
                slots = [seed.slot_id for seed in state.seeds]
                if planned.slot and planned.slot not in slots:
                    self.done.add(index)  # said once; the rest of the schedule goes on
                    return noop(
                        f"the germination scheduled for epoch {planned.epoch} names slot {planned.slot!r}, which this "
                        f"host does not have (its slots: {', '.join(slots)}); fix tamiyo.fixed-schedule.germinations",
                        NAME,
                    )
                command = self._germinate(planned, state, blueprints)
                if command is not None:
                    self.done.add(index)
                    return command
        for operation, (source, _target) in reversed(lifecycle.ADVANCES.items()):  # latest stage first
            for seed in state.seeds:
                if seed.stage == source and self._ready(operation, seed):
                    name = lifecycle.operation_name(operation).lower()
                    return seed_command(operation, seed.slot_id, f"{name} {seed.slot_id} on schedule", policy=NAME)
        return noop("nothing scheduled", NAME)

    def _ready(self, operation: int, seed: SeedState) -> bool:
        if operation == SeedOperation.SEED_OP_STABILIZE:
            return bool(seed.alpha_total_steps) and seed.alpha_steps >= seed.alpha_total_steps
        if operation == SeedOperation.SEED_OP_FOSSILIZE:
            return seed.stage_epochs >= self.options.probation_epochs
        if operation == SeedOperation.SEED_OP_START_TRAINING:
            return True
        return seed.stage_epochs >= 1  # measured at least once in its stage

    def _germinate(
        self, planned: ScheduledGermination, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]
    ) -> AdaptationCommand | None:
        free = [s for s in state.seeds if lifecycle.can_germinate(s)]
        slots = (
            [s for s in free if s.slot_id == planned.slot]
            if planned.slot
            else sorted(free, key=lambda s: s.layer_depth)
        )
        for seed in slots:
            for descriptor in blueprints:
                if planned.blueprint and descriptor.blueprint_id != planned.blueprint:
                    continue
                if growth.fits(descriptor, SlotShape.of(seed)):
                    return seed_command(
                        SeedOperation.SEED_OP_GERMINATE,
                        seed.slot_id,
                        f"germinate {descriptor.blueprint_id} in {seed.slot_id}: scheduled for epoch {planned.epoch}",
                        policy=NAME,
                        blueprint_id=descriptor.blueprint_id,
                        parameters={**default_parameters(descriptor), **planned.parameters},
                        schedule=SCHEDULES[self.options.blend_schedule],
                    )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done = set(state.get("done", []))
