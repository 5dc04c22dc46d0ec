"""Every seed executor starts with dormant slots and never acts on a command it cannot verify, the emergency
protocol's PAUSE and EMERGENCY included (verification comes before anything else, whatever the command type).

Subclass :class:`SeedExecutorConformance` and provide an ``executor`` fixture: a fresh executor with its slots
installed in a host, all DORMANT.
"""

from __future__ import annotations

from esper_core.leyline import (
    AdaptationCommand,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    EmergencyLevel,
    SeedLifecycleStage,
    SeedOperation,
)
from esper_core.protocols import SeedExecutor


class SeedExecutorConformance:
    def test_executor_satisfies_the_protocol(self, executor: SeedExecutor) -> None:
        assert isinstance(executor, SeedExecutor)

    def test_fresh_slots_are_dormant_with_unique_ids(self, executor: SeedExecutor) -> None:
        states = executor.export_seed_states()
        assert states, "an executor exports every slot, dormant ones included"
        ids = [state.slot_id for state in states]
        assert len(ids) == len(set(ids))
        assert all(state.stage == SeedLifecycleStage.SEED_STAGE_DORMANT for state in states)
        assert all(state.slot_kind != 0 and list(state.slot_shape) for state in states)

    def test_an_unsigned_command_is_rejected_and_changes_nothing(self, executor: SeedExecutor) -> None:
        before = executor.export_seed_states()
        command = AdaptationCommand(
            command_id="unsigned",
            command_type=CommandType.COMMAND_SEED,
            target_slot_id=before[0].slot_id,
            seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id="BP001"),
        )
        result = executor.apply(command)
        assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
        assert result.security_reason != 0
        assert executor.export_seed_states() == before

    def test_unsigned_pause_and_emergency_commands_are_rejected_and_change_nothing(
        self, executor: SeedExecutor
    ) -> None:
        before = executor.export_seed_states()
        pause = AdaptationCommand(
            command_id="unsigned-pause", command_type=CommandType.COMMAND_PAUSE, target_slot_id=before[0].slot_id
        )
        pause.pause.reason = "drill"
        emergency = AdaptationCommand(command_id="unsigned-emergency", command_type=CommandType.COMMAND_EMERGENCY)
        emergency.emergency.level = EmergencyLevel.EMERGENCY_LEVEL_CONSERVATIVE
        emergency.emergency.reason = "drill"
        for command in (pause, emergency):
            result = executor.apply(command)
            assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
            assert result.security_reason != 0
        assert executor.export_seed_states() == before
