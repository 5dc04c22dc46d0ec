"""The emergency protocol's two Kasmina commands: COMMAND_PAUSE holds one seed exactly where it is (stage, output,
parameters, optimizer state, alpha) until it is resumed, and COMMAND_EMERGENCY culls every seed that is not
fossilized at once. Both are signed and verified like every other command, and a pause survives a checkpoint."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandStatus,
    CommandType,
    EmergencyLevel,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
)
from esper_kasmina.optimizer import SLOT_KEY

from kasmina_rig import Rig, lenient, make_rig

APPLIED = CommandStatus.COMMAND_STATUS_APPLIED
ILLEGAL = CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
Stage = SeedLifecycleStage

#: Optimizers whose step would move a parameter, or its state, even with a zero gradient (weight decay, momentum).
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-2),
}


def rig_with(host: str = "vector", optimizer: str = "adam", seed: int = 0, **options: Any) -> Rig:
    """A rig whose optimizer (host and seeds) has weight decay, and whose seeds' groups have it too."""
    settings: dict[str, Any] = {"blend_steps": 50, "seed_weight_decay": 0.05, **options}
    rig = make_rig(None, host, options=lenient(**settings), seed=seed)
    rig.optimizer = OPTIMIZERS[optimizer](rig.kasmina.host_parameters())
    rig.kasmina.bind_optimizer(rig.optimizer)
    return rig


def pause(rig: Rig, slot: str, *, resume: bool = False, reason: str = "drill", sign: bool = True) -> CommandResult:
    command = AdaptationCommand(command_type=CommandType.COMMAND_PAUSE, target_slot_id=slot)
    command.pause.SetInParent()
    command.pause.resume = resume
    command.pause.reason = reason
    return rig.kasmina.apply(rig.signer.sign(command) if sign else command)


def emergency(rig: Rig, reason: str = "drill", *, sign: bool = True) -> CommandResult:
    command = AdaptationCommand(command_type=CommandType.COMMAND_EMERGENCY)
    command.emergency.level = EmergencyLevel.EMERGENCY_LEVEL_CONSERVATIVE
    command.emergency.reason = reason
    return rig.kasmina.apply(rig.signer.sign(command) if sign else command)


def state(rig: Rig, slot: str) -> SeedState:
    return next(s for s in rig.kasmina.export_seed_states() if s.slot_id == slot)


def to_stage(rig: Rig, slot: str, stage: int, blueprint: str = "BP901") -> None:
    """Walk the seed in ``slot`` up to ``stage``, training a few steps in each stage on the way."""
    if rig.kasmina.last_evaluation is None:
        rig.decide()  # G4 compares with the validation loss at germination
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, slot, blueprint).status == APPLIED
    rig.decide()
    walk = [
        SeedOperation.SEED_OP_START_TRAINING,
        SeedOperation.SEED_OP_START_GRAFTING,
        SeedOperation.SEED_OP_STABILIZE,
        SeedOperation.SEED_OP_EVALUATE,
        SeedOperation.SEED_OP_FOSSILIZE,
    ]
    for operation in walk:
        if rig.stage(slot) == stage:
            return
        result = rig.command(operation, slot)
        assert result.status == APPLIED, result.detail
        rig.train(4)
        rig.decide()
    assert rig.stage(slot) == stage


def seed_of(rig: Rig, slot: str) -> list[torch.nn.Parameter]:
    return rig.kasmina.bank.get(slot).seed_parameters()  # type: ignore[union-attr]


def optimizer_state(rig: Rig, parameters: list[torch.nn.Parameter]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in rig.optimizer.state[p].items()} for p in parameters]


def same_state(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_paused_blending_seed_is_held_bit_exactly_while_the_host_trains(optimizer: str) -> None:
    rig = rig_with("vector", optimizer)
    to_stage(rig, "3", Stage.SEED_STAGE_BLENDING)
    rig.train(3)
    assert pause(rig, "3").status == APPLIED
    held = [p.detach().clone() for p in seed_of(rig, "3")]
    moments = optimizer_state(rig, seed_of(rig, "3"))
    assert moments and all(moments), "the seed had optimizer state before the pause"
    before = state(rig, "3")
    host = [p.detach().clone() for p in rig.kasmina.host_parameters()]
    assert before.paused and before.stage == Stage.SEED_STAGE_BLENDING and 0 < before.alpha < 1

    for _ in range(2):
        rig.train(5)
        rig.decide()
    after = state(rig, "3")
    assert all(torch.equal(a, b) for a, b in zip(held, seed_of(rig, "3"), strict=True))
    assert same_state(moments, optimizer_state(rig, seed_of(rig, "3")))
    assert after.alpha == before.alpha and after.alpha_steps == before.alpha_steps
    assert after.stage == Stage.SEED_STAGE_BLENDING and after.stage_epochs == before.stage_epochs and after.paused
    assert not rig.kasmina.bank.get("3").seed.training  # type: ignore[union-attr]  # held: eval mode, no state moves
    assert any(not torch.equal(a, b) for a, b in zip(host, rig.kasmina.host_parameters(), strict=True))
    assert rig.kasmina.groups.order() == ["3"], "the paused seed keeps its parameter group"

    resumed = pause(rig, "3", resume=True)
    assert resumed.status == APPLIED and not state(rig, "3").paused
    rig.train(3)
    again = state(rig, "3")
    assert again.alpha_steps == before.alpha_steps + 3 and again.alpha > before.alpha
    assert any(not torch.equal(a, b) for a, b in zip(held, seed_of(rig, "3"), strict=True))
    assert not same_state(moments, optimizer_state(rig, seed_of(rig, "3")))


@pytest.mark.parametrize("stage", [Stage.SEED_STAGE_TRAINING, Stage.SEED_STAGE_PROBATIONARY])
def test_a_paused_seed_is_held_in_other_stages_and_its_lifecycle_waits(stage: int) -> None:
    rig = rig_with("vector", blend_steps=4)
    to_stage(rig, "3", stage)
    assert pause(rig, "3").status == APPLIED
    held = [p.detach().clone() for p in seed_of(rig, "3")]
    stage_epochs = state(rig, "3").stage_epochs
    rig.train(5)
    rig.decide()
    assert all(torch.equal(a, b) for a, b in zip(held, seed_of(rig, "3"), strict=True))
    assert state(rig, "3").stage == stage and state(rig, "3").stage_epochs == stage_epochs
    operation = (
        SeedOperation.SEED_OP_START_GRAFTING if stage == Stage.SEED_STAGE_TRAINING else SeedOperation.SEED_OP_FOSSILIZE
    )
    refused = rig.command(operation, "3")
    assert refused.status == ILLEGAL and "paused" in refused.detail and not refused.gates
    assert pause(rig, "3", resume=True).status == APPLIED
    assert rig.command(operation, "3").status == APPLIED


def test_an_epoch_ramp_is_held_too() -> None:
    rig = rig_with("vector", alpha_unit="epoch", blend_steps=10)
    to_stage(rig, "3", Stage.SEED_STAGE_BLENDING)
    rig.decide()
    steps = state(rig, "3").alpha_steps
    assert steps > 0
    pause(rig, "3")
    rig.decide()
    rig.decide()
    assert state(rig, "3").alpha_steps == steps
    pause(rig, "3", resume=True)
    rig.decide()
    assert state(rig, "3").alpha_steps == steps + 1


def test_pause_refusals_change_nothing() -> None:
    rig = rig_with("vector", blend_steps=4)
    rig.decide()
    empty = pause(rig, "1")
    assert empty.status == ILLEGAL and "has no seed" in empty.detail
    assert pause(rig, "nowhere").status == ILLEGAL
    to_stage(rig, "3", Stage.SEED_STAGE_FOSSILIZED)
    fossil = pause(rig, "3")
    assert fossil.status == ILLEGAL and "part of the host" in fossil.detail
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == APPLIED
    before = rig.kasmina.export_seed_states()
    not_paused = pause(rig, "1", resume=True)
    assert not_paused.status == ILLEGAL and "not paused" in not_paused.detail
    assert rig.kasmina.export_seed_states() == before
    assert pause(rig, "1").status == APPLIED  # a GERMINATED seed can be paused: it may not start training
    paused = rig.kasmina.export_seed_states()
    twice = pause(rig, "1")
    assert twice.status == ILLEGAL and "already paused" in twice.detail
    unsigned = pause(rig, "1", resume=True, sign=False)
    assert unsigned.status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
    assert rig.kasmina.export_seed_states() == paused
    no_payload = AdaptationCommand(command_type=CommandType.COMMAND_PAUSE, target_slot_id="1")
    assert rig.kasmina.apply(rig.signer.sign(no_payload)).status == CommandStatus.COMMAND_STATUS_NOOP
    assert rig.kasmina.export_seed_states() == paused
    assert rig.kasmina.counters["rejected_illegal"] == 5


def test_pause_and_resume_are_telemetry_events_not_transitions() -> None:
    rig = rig_with("vector")
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "3", "BP901").status == APPLIED
    rig.kasmina.drain_events()
    rig.kasmina.drain_telemetry()
    result = pause(rig, "3", reason="loss spike")
    assert not result.transitions and result.stage_before == result.stage_after == Stage.SEED_STAGE_GERMINATED
    assert "loss spike" in result.detail
    pause(rig, "3", resume=True)
    assert rig.kasmina.drain_events() == []
    names = [event.name for packet in rig.kasmina.drain_telemetry() for event in packet.events]
    assert names == ["seed_paused", "seed_resumed"]


def test_a_paused_seed_is_culled_as_usual() -> None:
    rig = rig_with("vector")
    to_stage(rig, "3", Stage.SEED_STAGE_BLENDING)
    parameters = seed_of(rig, "3")
    pause(rig, "3")
    assert rig.command(SeedOperation.SEED_OP_CULL, "3").status == APPLIED
    assert rig.stage("3") == Stage.SEED_STAGE_EMBARGOED and not state(rig, "3").paused
    assert rig.kasmina.groups.order() == []
    assert not any(p in rig.optimizer.state for p in parameters)


def test_emergency_culls_every_seed_that_is_not_fossilized() -> None:
    rig = rig_with("vector-width", blend_steps=4)
    rig.decide()
    to_stage(rig, "3", Stage.SEED_STAGE_FOSSILIZED)
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "0:input->2", "BP950").status == APPLIED
    to_stage(rig, "2:input->4", Stage.SEED_STAGE_TRAINING, "BP950")
    pause(rig, "2:input->4")
    culled = [p for slot in ("0:input->2", "2:input->4") for p in seed_of(rig, slot)]
    rig.kasmina.drain_events()
    rig.kasmina.drain_telemetry()
    fossil = [p.detach().clone() for p in seed_of(rig, "3")]

    result = emergency(rig, "loss is NaN")
    assert result.status == APPLIED
    assert result.detail == "culled: 0:input->2, 2:input->4"
    stages = {s.slot_id: s.stage for s in rig.kasmina.export_seed_states()}
    assert stages == {
        "0:input->2": Stage.SEED_STAGE_EMBARGOED,
        "2:input->4": Stage.SEED_STAGE_EMBARGOED,
        "3": Stage.SEED_STAGE_FOSSILIZED,
    }
    assert rig.kasmina.groups.order() == ["3"]
    grouped = {id(p) for group in rig.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in grouped or p in rig.optimizer.state for p in culled)
    assert all(torch.equal(a, b) for a, b in zip(fossil, seed_of(rig, "3"), strict=True))
    culls = [e for e in result.transitions if e.to_stage == Stage.SEED_STAGE_CULLED]
    assert {e.slot_id for e in culls} == {"0:input->2", "2:input->4"}
    assert all(e.reason == "emergency: loss is NaN" and e.command_id == result.command_id for e in culls)
    assert list(rig.kasmina.drain_events()) == list(result.transitions)
    events = [event for packet in rig.kasmina.drain_telemetry() for event in packet.events]
    assert any(
        event.name == "emergency" and event.attributes["emergency_level"] == "EMERGENCY_LEVEL_CONSERVATIVE"
        for event in events
    )
    rig.train(2)  # the host trains on without the culled seeds

    nothing = emergency(rig)
    assert nothing.status == APPLIED and nothing.detail == "nothing to remove" and not nothing.transitions


def test_emergency_without_its_payload_or_signature_changes_nothing() -> None:
    rig = rig_with("vector")
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "3", "BP901").status == APPLIED
    before = rig.kasmina.export_seed_states()
    bare = rig.kasmina.apply(rig.signer.sign(AdaptationCommand(command_type=CommandType.COMMAND_EMERGENCY)))
    assert bare.status == CommandStatus.COMMAND_STATUS_UNSUPPORTED and "payload" in bare.detail
    assert emergency(rig, sign=False).status == CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
    assert rig.kasmina.export_seed_states() == before
    assert rig.kasmina.groups.order() == ["3"]


def test_a_checkpoint_taken_while_paused_resumes_paused_bit_exactly() -> None:
    rig = rig_with("vector")
    to_stage(rig, "3", Stage.SEED_STAGE_BLENDING)
    rig.train(3)
    pause(rig, "3")
    rig.train(2)
    buffer = io.BytesIO()
    torch.save(
        {"model": rig.model.state_dict(), "optimizer": rig.optimizer.state_dict(), "kasmina": rig.kasmina.state_dict()},
        buffer,
    )
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh = rig_with("vector", seed=99)  # other initial weights
    fresh.model.load_state_dict(loaded["model"])
    fresh.kasmina.load_state_dict(loaded["kasmina"])
    fresh.optimizer.load_state_dict(loaded["optimizer"])
    fresh.inputs, fresh.targets = rig.inputs, rig.targets
    assert fresh.kasmina.export_seed_states() == rig.kasmina.export_seed_states()
    assert state(fresh, "3").paused
    assert [g[SLOT_KEY] for g in fresh.optimizer.param_groups if SLOT_KEY in g] == ["3"]
    assert not any(p.requires_grad for p in seed_of(fresh, "3"))
    assert same_state(optimizer_state(rig, seed_of(rig, "3")), optimizer_state(fresh, seed_of(fresh, "3")))

    def same_models() -> bool:
        ours, theirs = rig.model.state_dict(), fresh.model.state_dict()
        return ours.keys() == theirs.keys() and all(
            torch.equal(v, theirs[k]) if isinstance(v, torch.Tensor) else v == theirs[k] for k, v in ours.items()
        )

    held = [p.detach().clone() for p in seed_of(fresh, "3")]
    for each in (rig, fresh):
        each.train(3)
    assert same_models()
    assert all(torch.equal(a, b) for a, b in zip(held, seed_of(fresh, "3"), strict=True))
    for each in (rig, fresh):
        assert pause(each, "3", resume=True).status == APPLIED
        each.train(3)
    assert same_models()
    assert state(fresh, "3").alpha_steps == state(rig, "3").alpha_steps
    assert any(not torch.equal(a, b) for a, b in zip(held, seed_of(fresh, "3"), strict=True))


def test_dormant_slots_are_untouched_by_both_commands() -> None:
    rig = rig_with("conv")
    rig.model.eval()
    output = rig.model(rig.inputs)
    before = rig.kasmina.export_seed_states()
    for slot in before:
        assert pause(rig, slot.slot_id).status == ILLEGAL
        assert pause(rig, slot.slot_id, resume=True).status == ILLEGAL
    result = emergency(rig)
    assert result.status == APPLIED and result.detail == "nothing to remove"
    assert rig.kasmina.export_seed_states() == before
    assert not any(slot.hooked for slot in rig.kasmina.slots)
    assert torch.equal(rig.model(rig.inputs), output)
