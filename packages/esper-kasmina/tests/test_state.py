"""A host with slots saves and restores through its own state_dict: every slot's stage, alpha, embargo,
blueprint and seed weights. Seed modules are rebuilt from their blueprint ids, and a restored run continues
exactly as the original would have."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from esper_core.leyline import CommandStatus, SeedLifecycleStage, SeedOperation

from kasmina_rig import HOSTS, Rig, lenient, make_rig


def busy_rig(rig_factory: Callable[..., Rig]) -> Rig:
    """Slots in three different stages: BLENDING mid-ramp, FOSSILIZED, EMBARGOED."""
    rig = rig_factory("conv", options=lenient(blend_steps=20))
    rig.decide()
    for slot in ("features.2", "features.5", "head.2"):
        assert (
            rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED
        )
    rig.decide()
    for slot in ("features.2", "features.5"):
        rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.command(SeedOperation.SEED_OP_CULL, "head.2")
    rig.train(3)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "features.2")
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "features.5")
    rig.train(20)
    rig.decide()
    for operation in (SeedOperation.SEED_OP_STABILIZE, SeedOperation.SEED_OP_EVALUATE, SeedOperation.SEED_OP_FOSSILIZE):
        assert rig.command(operation, "features.5").status == CommandStatus.COMMAND_STATUS_APPLIED
        rig.decide()
    rig.command(SeedOperation.SEED_OP_CULL, "features.2")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "features.2", "BP901", hidden=3)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.2")
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "features.2")
    rig.train(7)
    return rig


def test_a_restored_host_computes_exactly_what_the_saved_one_did(rig_factory: Callable[..., Rig]) -> None:
    rig = busy_rig(rig_factory)
    stages = {s.slot_id: s.stage for s in rig.kasmina.export_seed_states()}
    assert (
        stages
        == {
            "features.2": SeedLifecycleStage.SEED_STAGE_BLENDING,
            "features.5": SeedLifecycleStage.SEED_STAGE_FOSSILIZED,
            "head.2": SeedLifecycleStage.SEED_STAGE_EMBARGOED,
        }
        or stages["head.2"] == SeedLifecycleStage.SEED_STAGE_DORMANT
    )
    checkpoint = {
        "model": rig.model.state_dict(),
        "optimizer": rig.optimizer.state_dict(),
        "kasmina": rig.kasmina.state_dict(),
    }
    buffer = __import__("io").BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh = make_rig(None, "conv", options=lenient(blend_steps=20), seed=99)  # different initial weights
    fresh.model.load_state_dict(loaded["model"])
    fresh.kasmina.load_state_dict(loaded["kasmina"])
    fresh.optimizer.load_state_dict(loaded["optimizer"])
    assert fresh.kasmina.export_seed_states() == rig.kasmina.export_seed_states()
    for model in (rig.model, fresh.model):
        model.eval()
    assert torch.equal(rig.model(rig.inputs), fresh.model(rig.inputs))
    # and training continues identically: same data, same steps
    fresh.inputs, fresh.targets = rig.inputs, rig.targets
    for current in (rig, fresh):
        torch.manual_seed(5)
        current.train(6)
    for current in (rig, fresh):
        current.model.eval()
    assert torch.equal(rig.model(rig.inputs), fresh.model(rig.inputs))
    assert fresh.kasmina.export_seed_states() == rig.kasmina.export_seed_states()


def test_a_plain_checkpoint_loads_into_a_host_with_slots() -> None:
    factory = HOSTS["conv"][0]
    plain = factory()
    rig = make_rig(None, "conv")
    rig.model.load_state_dict(plain.state_dict())
    rig.model.eval()
    plain.eval()
    assert torch.equal(rig.model(rig.inputs), plain(rig.inputs))


def test_a_host_without_slots_refuses_a_checkpoint_with_seeds(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv")
    state = rig.model.state_dict()
    bare: nn.Module = HOSTS["conv"][0]()
    try:
        bare.load_state_dict(state)
    except RuntimeError as error:
        assert "esper_slots" in str(error)
    else:
        raise AssertionError("a bare host must not silently drop seed slots")
