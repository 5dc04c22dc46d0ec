"""Seeds join the host's optimizer as their own parameter groups and leave it cleanly; the host's optimizer state
is never rebuilt or reset."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from esper_core.leyline import AdaptationCommand, CommandSeedOperation, CommandStatus, CommandType, SeedOperation
from esper_kasmina.optimizer import SLOT_KEY

from kasmina_rig import Rig, lenient


def host_state(rig: Rig) -> list[tuple[int, dict[str, torch.Tensor]]]:
    state = rig.optimizer.state
    return [(id(p), {k: v.clone() for k, v in state[p].items()}) for p in rig.kasmina.host_parameters()]


def assert_same_state(
    now: list[tuple[int, dict[str, torch.Tensor]]], before: list[tuple[int, dict[str, torch.Tensor]]]
) -> None:
    assert [key for key, _ in now] == [key for key, _ in before]
    for (_, a), (_, b) in zip(now, before, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_germinated_seed_gets_its_own_group_and_a_cull_removes_it(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv", options=lenient(seed_learning_rate=0.05, seed_weight_decay=0.01))
    rig.train(3)  # the host's Adam state exists
    rig.decide()
    host_group = rig.optimizer.param_groups[0]
    before = host_state(rig)
    assert (
        rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP901").status
        == CommandStatus.COMMAND_STATUS_APPLIED
    )
    seed_group = rig.optimizer.param_groups[1]
    slot = rig.kasmina.bank.get("features.5")  # type: ignore[union-attr]
    assert seed_group[SLOT_KEY] == "features.5"
    assert seed_group["lr"] == 0.05 and seed_group["weight_decay"] == 0.01
    assert [id(p) for p in seed_group["params"]] == [id(p) for p in slot.seed_parameters()]
    assert rig.optimizer.param_groups[0] is host_group
    assert_same_state(host_state(rig), before)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5")
    rig.train(2)
    seed_parameters = slot.seed_parameters()
    assert all(p in rig.optimizer.state for p in seed_parameters)
    kept = host_state(rig)
    assert rig.command(SeedOperation.SEED_OP_CULL, "features.5").status == CommandStatus.COMMAND_STATUS_APPLIED
    assert len(rig.optimizer.param_groups) == 1 and rig.optimizer.param_groups[0] is host_group
    assert not any(p in rig.optimizer.state for p in seed_parameters)
    assert_same_state(host_state(rig), kept)


def test_the_seed_learning_rate_defaults_to_the_hosts_and_a_command_can_set_it(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "1", "BP901")
    assert rig.optimizer.param_groups[-1]["lr"] == pytest.approx(1e-2)
    command = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="3",
        seed_operation=CommandSeedOperation(
            operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id="BP901", learning_rate=0.3
        ),
    )
    rig.kasmina.apply(rig.signer.sign(command))
    assert rig.optimizer.param_groups[-1]["lr"] == pytest.approx(0.3)
    fine_tune = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        target_slot_id="3",
        seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_FINE_TUNE, learning_rate=0.01),
    )
    assert rig.kasmina.apply(rig.signer.sign(fine_tune)).status == CommandStatus.COMMAND_STATUS_APPLIED
    assert rig.optimizer.param_groups[-1]["lr"] == pytest.approx(0.01)
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "3")
    assert state.learning_rate == pytest.approx(0.01)
