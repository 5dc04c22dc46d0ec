"""A decision point's probe measurements share their passes: the slot statistics carry every seed's gradient norm
(no pass of its own per seed), and a seed's health check takes the host activation from its own gradient pass. What
they measure must be exactly what the separate passes measure."""

from __future__ import annotations

from collections.abc import Callable

from esper_core.leyline import CommandStatus, SeedOperation, lifecycle
from esper_kasmina import probes

from kasmina_rig import Rig

APPLIED = CommandStatus.COMMAND_STATUS_APPLIED


def seeds_in_flight(rig_factory: Callable[..., Rig]) -> Rig:
    """features.2 in TRAINING, features.5 in BLENDING, head.2 DORMANT."""
    rig = rig_factory("conv")
    rig.decide()
    for slot in ("features.2", "features.5"):
        assert rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP901").status == APPLIED
    rig.decide()
    for slot in ("features.2", "features.5"):
        rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.train(3)
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_START_GRAFTING, "features.5").status == APPLIED
    rig.train(2)
    assert rig.stage("features.2") == lifecycle.TRAINING and rig.stage("features.5") == lifecycle.BLENDING
    return rig


def test_the_slot_statistics_carry_each_seeds_gradient_norm_as_seed_health_measures_it(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = seeds_in_flight(rig_factory)
    kasmina = rig.kasmina
    model, probe, slots = rig.model, kasmina.probe, kasmina.slots
    assert probe is not None
    seeds = [slot for slot in slots if slot.hooked]
    assert [slot.slot_id for slot in seeds] == ["features.2", "features.5"]
    alone = probes.slot_statistics(model, slots, probe)
    shared = probes.slot_statistics(model, slots, probe, seeds)
    for slot in slots:
        assert shared[slot.slot_id].activation_rms == alone[slot.slot_id].activation_rms
        assert shared[slot.slot_id].gradient_norm == alone[slot.slot_id].gradient_norm
        assert alone[slot.slot_id].seed_gradient_norm is None
    for slot in seeds:
        health = probes.seed_health(model, slot, probe)
        assert health.gradient_norm > 0
        assert shared[slot.slot_id].seed_gradient_norm == health.gradient_norm  # exactly, not approximately
    assert shared["head.2"].seed_gradient_norm is None


def test_a_decision_point_records_each_seeds_gradient_norm(rig_factory: Callable[..., Rig]) -> None:
    rig = seeds_in_flight(rig_factory)
    rig.decide()
    probe = rig.kasmina.probe
    assert probe is not None
    states = {state.slot_id: state for state in rig.kasmina.export_seed_states()}
    for slot in rig.kasmina.slots:
        if slot.hooked:
            assert states[slot.slot_id].gradient_norm == probes.seed_health(rig.model, slot, probe).gradient_norm
        else:
            assert not states[slot.slot_id].HasField("gradient_norm")


def test_seed_health_reads_the_host_activation_at_its_slot(rig_factory: Callable[..., Rig]) -> None:
    rig = seeds_in_flight(rig_factory)
    probe = rig.kasmina.probe
    assert probe is not None
    for slot in rig.kasmina.slots:
        if not slot.hooked:
            continue
        health = probes.seed_health(rig.model, slot, probe)
        activation = probes.activation(rig.model, slot, probe)
        assert health.input_shape == tuple(activation.shape) == (16, *slot.slot_shape)
        assert health.output_shape == health.input_shape and health.output_dtype == activation.dtype
        assert health.output_finite and health.gradients_finite
