"""Random sequences of commands, gate outcomes, training steps and decision points never reach an illegal stage,
never leave a culled seed's parameters in the optimizer, and keep every exported SeedState consistent with the
modules, hooks and optimizer groups behind it."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper_core.leyline import CommandStatus, GateResult, SeedLifecycleStage, SeedOperation, lifecycle
from esper_kasmina.gates import GateChecks, check

from kasmina_rig import Rig, lenient, make_rig

SLOTS = ["1", "3"]
OPERATIONS = [
    SeedOperation.SEED_OP_START_TRAINING,
    SeedOperation.SEED_OP_START_GRAFTING,
    SeedOperation.SEED_OP_STABILIZE,
    SeedOperation.SEED_OP_EVALUATE,
    SeedOperation.SEED_OP_FOSSILIZE,
    SeedOperation.SEED_OP_CULL,
    SeedOperation.SEED_OP_FINE_TUNE,
]


class ScriptedGates(GateChecks):
    """Real gates, plus a failure the test can force on the next gate evaluated."""

    fail_next = False

    def _maybe_fail(self, results: list[GateResult], gate: int) -> list[GateResult]:
        if self.fail_next:
            self.fail_next = False
            return [*results, check(gate, "forced_by_test", False, 1.0, 0.0)]
        return results

    def admission(self, *args: Any, **kwargs: Any) -> list[GateResult]:
        return self._maybe_fail(super().admission(*args, **kwargs), lifecycle.G0)

    def training_entry(self, *args: Any, **kwargs: Any) -> list[GateResult]:
        return self._maybe_fail(super().training_entry(*args, **kwargs), lifecycle.G1)

    def blending_entry(self, *args: Any, **kwargs: Any) -> list[GateResult]:
        return self._maybe_fail(super().blending_entry(*args, **kwargs), lifecycle.G2)

    def shadowing_entry(self, *args: Any, **kwargs: Any) -> list[GateResult]:
        return self._maybe_fail(super().shadowing_entry(*args, **kwargs), lifecycle.G3)

    def probation_entry(self, *args: Any, **kwargs: Any) -> list[GateResult]:
        return self._maybe_fail(super().probation_entry(*args, **kwargs), lifecycle.G4)


class KasminaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rig: Rig = make_rig(None, "vector", options=lenient(blend_steps=2, embargo_epochs=1))
        self.gates = ScriptedGates(self.rig.kasmina.options)
        self.rig.kasmina.gates = self.gates
        self.rig.decide()
        self.retired: list[torch.nn.Parameter] = []
        self.last_command: Any = None

    def _remember_seed(self, slot_id: str) -> None:
        slot = self.rig.kasmina.bank.get(slot_id)  # type: ignore[union-attr]
        if slot is not None and slot.seed is not None:
            self._live = {slot_id: slot.seed_parameters()}

    @rule(slot=st.sampled_from(SLOTS), blueprint=st.sampled_from(["BP901", "BP901", "BP404"]), fail=st.booleans())
    def germinate(self, slot: str, blueprint: str, fail: bool) -> None:
        self.gates.fail_next = fail
        self._apply(SeedOperation.SEED_OP_GERMINATE, slot, blueprint)
        self.gates.fail_next = False

    @rule(slot=st.sampled_from(SLOTS), operation=st.sampled_from(OPERATIONS), fail=st.booleans())
    def operate(self, slot: str, operation: SeedOperation.ValueType, fail: bool) -> None:
        self.gates.fail_next = fail
        self._apply(operation, slot)
        self.gates.fail_next = False

    def _apply(self, operation: SeedOperation.ValueType, slot: str, blueprint: str = "") -> None:
        bank_slot = self.rig.kasmina.bank.get(slot)  # type: ignore[union-attr]
        before = bank_slot.seed_parameters() if bank_slot is not None else []
        kwargs = {"learning_rate": 0.02} if operation == SeedOperation.SEED_OP_FINE_TUNE else {}
        from esper_core.leyline import AdaptationCommand, CommandSeedOperation, CommandType

        command = AdaptationCommand(
            command_type=CommandType.COMMAND_SEED,
            target_slot_id=slot,
            seed_operation=CommandSeedOperation(operation=operation, blueprint_id=blueprint, **kwargs),
        )
        self.last_command = self.rig.signer.sign(command)
        result = self.rig.kasmina.apply(self.last_command)
        for event in result.transitions:
            lifecycle.check_transition(event.from_stage, event.to_stage)
        if bank_slot is not None and bank_slot.seed is None and before:
            self.retired.extend(before)
        assert result.status != CommandStatus.COMMAND_STATUS_UNSPECIFIED

    @precondition(lambda self: self.last_command is not None)
    @rule()
    def replay(self) -> None:
        states = self.rig.kasmina.export_seed_states()
        result = self.rig.kasmina.apply(self.last_command)
        assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
        assert self.rig.kasmina.export_seed_states() == states

    @rule(steps=st.integers(1, 3))
    def train(self, steps: int) -> None:
        self.rig.train(steps)

    @rule()
    def decide(self) -> None:
        slots = {slot.slot_id: slot.seed_parameters() for slot in self.rig.kasmina.slots}
        self.rig.decide()
        for slot in self.rig.kasmina.slots:
            if slot.seed is None:
                self.retired.extend(slots[slot.slot_id])

    @invariant()
    def stages_are_legal_and_states_match_the_modules(self) -> None:
        kasmina = self.rig.kasmina
        for state, slot in zip(kasmina.export_seed_states(), kasmina.slots, strict=True):
            stage = state.stage
            assert stage in lifecycle.TRANSITIONS
            assert (slot.seed is not None) == (stage in lifecycle.HAS_SEED)
            assert slot.hooked == (stage in lifecycle.IN_FORWARD)
            assert kasmina.groups.has(slot.slot_id) == (stage in lifecycle.HAS_SEED)
            assert 0.0 <= state.alpha <= 1.0
            if stage in (
                SeedLifecycleStage.SEED_STAGE_SHADOWING,
                SeedLifecycleStage.SEED_STAGE_PROBATIONARY,
                SeedLifecycleStage.SEED_STAGE_FOSSILIZED,
            ):
                assert state.alpha == 1.0
            if slot.seed is not None:
                assert state.parameter_count == sum(p.numel() for p in slot.seed_parameters())
                assert state.blueprint_id == "BP901" and state.seed_id.startswith(slot.slot_id + "#")
            if stage == SeedLifecycleStage.SEED_STAGE_DORMANT:
                assert not state.seed_id and state.embargo_epochs_remaining == 0

    @invariant()
    def no_culled_seed_parameter_is_optimized(self) -> None:
        optimizer = self.rig.optimizer
        in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for parameter in self.retired:
            assert id(parameter) not in in_groups
            assert parameter not in optimizer.state


TestKasminaStateMachine = KasminaMachine.TestCase
TestKasminaStateMachine.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)
