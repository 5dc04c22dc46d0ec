"""The fixed-schedule baseline: it germinates what the schedule says, sized as it says, and says so when the schedule
names a slot the host does not have."""

from __future__ import annotations

from esper_core.leyline import CommandType, SeedOperation
from esper_tamiyo.options import FixedScheduleOptions, ScheduledGermination
from esper_tamiyo.policies.fixed_schedule import FixedSchedulePolicy

from tamiyo_scenarios import blueprint, packet, slot

BLUEPRINTS = [blueprint("BP101")]


def test_a_scheduled_germination_uses_the_parameters_it_sets_over_the_defaults() -> None:
    planned = ScheduledGermination(epoch=1, blueprint="BP101", slot="b", parameters={"width": 6})
    policy = FixedSchedulePolicy(FixedScheduleOptions(germinations=[planned]))
    assert policy.decide(packet(0, 1.0, [slot("a"), slot("b")]), BLUEPRINTS).command_type == CommandType.COMMAND_NOOP
    command = policy.decide(packet(1, 1.0, [slot("a"), slot("b")]), BLUEPRINTS)
    assert command.target_slot_id == "b"
    assert command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert dict(command.seed_operation.parameters) == {"width": 6.0}


def test_a_schedule_naming_a_missing_slot_says_so_once_and_goes_on() -> None:
    germinations = [ScheduledGermination(epoch=1, slot="nowhere"), ScheduledGermination(epoch=1, slot="a")]
    policy = FixedSchedulePolicy(FixedScheduleOptions(germinations=germinations))
    said = policy.decide(packet(1, 1.0, [slot("a")]), BLUEPRINTS)
    assert said.command_type == CommandType.COMMAND_NOOP
    assert "'nowhere'" in said.decision.rationale and "its slots: a" in said.decision.rationale
    assert policy.decide(packet(1, 1.0, [slot("a")]), BLUEPRINTS).target_slot_id == "a"
