"""The seed lifecycle's contract facts agree with each other and with ARCHITECTURE.md section 7."""

from __future__ import annotations

import pytest

from esper_core.leyline import (
    AdaptationCommand,
    CommandSeedOperation,
    CommandType,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    lifecycle,
)

EVERY_STAGE = [stage for stage in SeedLifecycleStage.values() if stage != SeedLifecycleStage.SEED_STAGE_UNKNOWN]


def test_every_stage_has_its_transitions_and_they_stay_inside_the_lifecycle() -> None:
    assert set(lifecycle.TRANSITIONS) == set(EVERY_STAGE)
    for targets in lifecycle.TRANSITIONS.values():
        assert targets <= set(EVERY_STAGE)


def test_each_advance_is_a_transition_and_they_chain_from_germinated_to_fossilized() -> None:
    chain = [lifecycle.GERMINATED]
    for source, target in lifecycle.ADVANCES.values():
        assert target in lifecycle.TRANSITIONS[source]
        assert source == chain[-1], "advances are listed in lifecycle order"
        chain.append(target)
    assert chain[-1] == lifecycle.FOSSILIZED


def test_in_flight_seeds_are_exactly_those_that_can_be_culled() -> None:
    cullable = {stage for stage, targets in lifecycle.TRANSITIONS.items() if lifecycle.CULLED in targets}
    assert cullable == lifecycle.IN_FLIGHT
    assert lifecycle.SOURCE_STAGES[SeedOperation.SEED_OP_CULL] == lifecycle.IN_FLIGHT


def test_the_stage_sets_nest_as_documented() -> None:
    assert lifecycle.IN_FLIGHT | {lifecycle.FOSSILIZED} == lifecycle.HAS_SEED
    assert lifecycle.IN_FORWARD <= lifecycle.HAS_SEED
    assert lifecycle.FOSSILIZED in lifecycle.IN_FORWARD, "a fossilized seed is part of the model's forward pass"
    assert lifecycle.GERMINATED not in lifecycle.IN_FORWARD, "a germinated seed is built but not yet grafted"
    assert lifecycle.IN_FORWARD - {lifecycle.FOSSILIZED} == lifecycle.MEASURED
    assert not lifecycle.CLEARING & lifecycle.HAS_SEED, "a culled seed's module is dropped at once"


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_allows_follows_the_source_stages(stage: SeedLifecycleStage.ValueType) -> None:
    seed = SeedState(slot_id="s", stage=stage)
    for operation, sources in lifecycle.SOURCE_STAGES.items():
        assert lifecycle.allows(operation, seed) == (stage in sources)
    assert not lifecycle.allows(SeedOperation.SEED_OP_UNKNOWN, seed)


def test_an_embargoed_dormant_slot_cannot_germinate() -> None:
    assert lifecycle.can_germinate(SeedState(stage=lifecycle.DORMANT))
    assert not lifecycle.can_germinate(SeedState(stage=lifecycle.DORMANT, embargo_epochs_remaining=2))
    assert not lifecycle.allows(SeedOperation.SEED_OP_GERMINATE, SeedState(stage=lifecycle.EMBARGOED))


def test_an_illegal_transition_names_the_legal_ones() -> None:
    lifecycle.check_transition(lifecycle.TRAINING, lifecycle.BLENDING)
    with pytest.raises(lifecycle.IllegalTransition, match=r"TRAINING -> FOSSILIZED .*BLENDING, CULLED"):
        lifecycle.check_transition(lifecycle.TRAINING, lifecycle.FOSSILIZED)


def test_names_of_values_a_newer_peer_may_send_never_raise() -> None:
    assert lifecycle.stage_name(lifecycle.SHADOWING) == "SHADOWING"
    assert lifecycle.operation_name(77) == "UNKNOWN(77)"
    assert lifecycle.stage_name(99) == "UNKNOWN(99)"
    assert lifecycle.gate_name(lifecycle.G1) == "G1_GRADIENT_HEALTH"


def test_command_names() -> None:
    germinate = AdaptationCommand(
        command_type=CommandType.COMMAND_SEED,
        seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_GERMINATE),
    )
    assert lifecycle.command_name(germinate) == "germinate"
    assert lifecycle.command_name(AdaptationCommand(command_type=CommandType.COMMAND_NOOP)) == "noop"
    assert lifecycle.command_name(AdaptationCommand(command_type=55)) == "unknown(55)"  # type: ignore[arg-type]
