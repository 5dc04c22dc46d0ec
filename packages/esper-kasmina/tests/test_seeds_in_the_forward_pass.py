"""What each stage does to the host's forward and backward pass, and how alpha ramps."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper_core.leyline import BlendSchedule, CommandStatus, SeedLifecycleStage, SeedOperation
from esper_kasmina import schedules

from kasmina_rig import Rig, lenient

APPLIED = CommandStatus.COMMAND_STATUS_APPLIED


def host_gradients(rig: Rig) -> list[torch.Tensor]:
    rig.model.eval()
    loss = nn.functional.cross_entropy(rig.model(rig.inputs), rig.targets)
    return list(torch.autograd.grad(loss, rig.kasmina.host_parameters()))


def into(rig: Rig, stage: SeedLifecycleStage.ValueType, slot: str = "features.5") -> None:
    """Drive ``slot`` of a fresh rig to ``stage`` with real commands."""
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP901").status == APPLIED
    path = [
        (SeedOperation.SEED_OP_START_TRAINING, SeedLifecycleStage.SEED_STAGE_TRAINING),
        (SeedOperation.SEED_OP_START_GRAFTING, SeedLifecycleStage.SEED_STAGE_BLENDING),
        (SeedOperation.SEED_OP_STABILIZE, SeedLifecycleStage.SEED_STAGE_SHADOWING),
        (SeedOperation.SEED_OP_EVALUATE, SeedLifecycleStage.SEED_STAGE_PROBATIONARY),
    ]
    for operation, reached in path:
        if rig.stage(slot) == stage:
            return
        rig.decide()
        result = rig.command(operation, slot)
        assert result.status == APPLIED, result.detail
        if reached == SeedLifecycleStage.SEED_STAGE_BLENDING and stage != reached:
            rig.train(rig.kasmina.options.blend_steps)
        assert rig.stage(slot) == reached


def test_training_leaves_host_outputs_and_gradients_unchanged_while_the_seed_learns(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory("conv")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP901")
    rig.model.eval()
    before_output = rig.model(rig.inputs).detach()
    before_gradients = host_gradients(rig)
    assert rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5").status == APPLIED
    rig.model.eval()
    assert torch.equal(rig.model(rig.inputs), before_output)
    for a, b in zip(host_gradients(rig), before_gradients, strict=True):
        assert torch.equal(a, b)
    seed = rig.kasmina.bank.get("features.5").seed  # type: ignore[union-attr]
    start = [p.detach().clone() for p in seed.parameters()]
    rig.train(3)
    assert any(not torch.equal(p, q) for p, q in zip(seed.parameters(), start, strict=True)), "the seed learns"


def test_the_training_gate_measures_isolation_numerically(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP901")
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5")
    isolation = next(gate for gate in result.gates if gate.check == "isolation")
    assert isolation.passed and isolation.measured <= 1e-6 and isolation.threshold == 1e-6


def test_a_seed_that_leaks_gradient_into_the_host_fails_isolation_and_is_culled(
    rig_factory: Callable[..., Rig], catalog: object
) -> None:
    rig = rig_factory("vector")
    host_weight = rig.model[0].weight  # type: ignore[index]
    build = catalog.build  # type: ignore[attr-defined]

    def leaky(blueprint_id: str, slot: object, parameters: dict[str, float]) -> nn.Module:
        module = build(blueprint_id, slot, parameters)

        class Leak(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x) + 1e-3 * host_weight.mean()  # reaches into the host

        return Leak()

    catalog.build = leaky  # type: ignore[attr-defined]
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == APPLIED
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, "1")
    assert result.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE
    failed = next(gate for gate in result.gates if not gate.passed)
    assert (failed.check, failed.gate) == ("isolation", 2)
    assert failed.measured > failed.threshold
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_EMBARGOED
    assert next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "1").isolation_violations == 1


def test_a_seed_that_starts_leaking_later_is_culled_by_the_watchdog_and_counted(
    rig_factory: Callable[..., Rig], catalog: object
) -> None:
    rig = rig_factory("vector")
    host_weight = rig.model[0].weight  # type: ignore[index]
    build = catalog.build  # type: ignore[attr-defined]
    leaking = {"now": False}

    def turns_leaky(blueprint_id: str, slot: object, parameters: dict[str, float]) -> nn.Module:
        module = build(blueprint_id, slot, parameters)

        class LeaksLater(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.inner(x)
                return out + 1e-3 * host_weight.mean() if leaking["now"] else out

        return LeaksLater()

    catalog.build = turns_leaky  # type: ignore[attr-defined]
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901").status == APPLIED
    assert rig.command(SeedOperation.SEED_OP_START_TRAINING, "1").status == APPLIED  # isolated at G1
    leaking["now"] = True
    rig.decide()  # the watchdog repeats the isolation check at the decision point
    assert rig.stage("1") == SeedLifecycleStage.SEED_STAGE_EMBARGOED
    assert next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "1").isolation_violations == 1


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0067), (1, 0.011), (5, 0.076), (8, 0.27), (10, 0.5), (12, 0.73), (15, 0.92), (20, 0.993)],
)
def test_the_tanh_ramp_is_the_prototypes(step: int, expected: float) -> None:
    assert schedules.alpha_at(schedules.TANH, step / 20) == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize("schedule", [schedules.LINEAR, schedules.COSINE, schedules.TANH])
def test_every_schedule_ramps_monotonically_and_agrees_on_the_device(schedule: int) -> None:
    values = [schedules.alpha_at(schedule, t / 40) for t in range(41)]
    assert values == sorted(values) and values[0] < 0.01 and values[-1] > 0.99
    steps = torch.arange(41)
    on_device = [schedules.alpha_tensor(schedule, s, 40, torch.float64).item() for s in steps]
    assert on_device == pytest.approx(values, abs=1e-12)
    assert schedules.alpha_at(schedule, 2.0) == values[-1]  # clamped


def test_alpha_advances_per_training_step_and_not_in_evaluation(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv", options=lenient(blend_steps=20, blend_schedule="linear"))
    into(rig, SeedLifecycleStage.SEED_STAGE_BLENDING)
    rig.train(5)
    rig.model.eval()
    rig.model(rig.inputs)  # evaluation does not advance the ramp
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "features.5")
    assert (state.alpha_steps, state.alpha_total_steps) == (5, 20)
    assert state.alpha == pytest.approx(0.25)
    assert state.blend_schedule == BlendSchedule.BLEND_SCHEDULE_LINEAR


def test_alpha_can_advance_per_epoch_instead(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv", options=lenient(blend_steps=4, alpha_unit="epoch", blend_schedule="cosine"))
    into(rig, SeedLifecycleStage.SEED_STAGE_BLENDING)
    rig.train(7)
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "features.5")
    assert state.alpha_steps == 0
    rig.decide()
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "features.5")
    assert state.alpha_steps == 1 and state.alpha == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))


def test_blending_mixes_the_seed_in_by_alpha_without_a_path_into_the_host(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector", options=lenient(blend_steps=4, blend_schedule="linear"))
    into(rig, SeedLifecycleStage.SEED_STAGE_BLENDING, slot="1")
    slot = rig.kasmina.bank.get("1")  # type: ignore[union-attr]
    nn.init.normal_(slot.seed.outer.weight)  # type: ignore[union-attr]
    rig.train(2)
    rig.model.eval()
    host_activation = torch.relu(rig.model[0](rig.inputs))  # type: ignore[index]  (calling model[1] would run the slot)
    expected = host_activation + 0.5 * slot.seed(host_activation)  # type: ignore[misc]
    captured: list[torch.Tensor] = []
    handle = rig.model[1].register_forward_hook(lambda _m, _i, out: captured.append(out))  # type: ignore[index]
    rig.model(rig.inputs)
    handle.remove()
    assert torch.allclose(captured[0], expected, atol=1e-6)
    gradient = torch.autograd.grad(captured[0].sum(), list(slot.seed.parameters()), allow_unused=True)  # type: ignore[union-attr]
    assert any(g is not None for g in gradient)


def test_probation_lifts_isolation(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv")
    into(rig, SeedLifecycleStage.SEED_STAGE_SHADOWING)
    slot = rig.kasmina.bank.get("features.5")  # type: ignore[union-attr]
    nn.init.normal_(slot.seed.outer.weight)  # type: ignore[union-attr]
    shadowing = host_gradients(rig)
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_EVALUATE, "features.5").status == APPLIED
    probation = host_gradients(rig)
    earlier = list(rig.kasmina.host_parameters())
    changed = [not torch.allclose(a, b) for a, b in zip(shadowing, probation, strict=True)]
    assert any(changed[: len(earlier) // 2]), "the seed now passes gradient into the layers before it"
