"""The heuristic policy on scripted trajectories: it germinates on a plateau where the loss is most sensitive,
advances and fossilizes seeds that help, culls seeds that hurt or never become useful, and says why."""

from __future__ import annotations

import pytest

from esper_core.leyline import CommandType, GrowthMode, SeedOperation, lifecycle
from esper_core.testing.conformance import TamiyoPolicyConformance
from esper_tamiyo.options import HeuristicOptions
from esper_tamiyo.policies.heuristic import HeuristicPolicy

from tamiyo_scenarios import CONV, VECTOR, CountingCatalog, blueprint, packet, slot

BLUEPRINTS = [blueprint("BP101"), blueprint("BP201", risk=0.1), blueprint("BP102", kinds=[VECTOR])]


def policy(**options: object) -> HeuristicPolicy:
    return HeuristicPolicy(HeuristicOptions(**options), catalogs=[CountingCatalog(BLUEPRINTS)])  # type: ignore[arg-type]


def run(p: HeuristicPolicy, losses: list[float], seeds: list[object]) -> object:
    command = None
    for epoch, loss in enumerate(losses):
        command = p.decide(packet(epoch, loss, seeds), BLUEPRINTS)  # type: ignore[arg-type]
    return command


def test_it_waits_while_the_loss_improves() -> None:
    command = run(policy(), [1.0, 0.8, 0.6, 0.45, 0.35], [slot("a"), slot("b")])
    assert command.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]
    assert "still improving" in command.decision.rationale  # type: ignore[attr-defined]


def test_it_germinates_on_a_plateau_in_the_most_sensitive_slot_with_the_best_blueprint() -> None:
    seeds = [
        slot("early", saliency=(0.1, 1.0), depth=0),
        slot("late", saliency=(2.0, 0.5), depth=1),
        slot("head", kind=VECTOR, shape=[64], saliency=(0.2, 0.2), depth=2),
    ]
    command = run(policy(), [1.0, 0.6, 0.5, 0.499, 0.498], seeds)
    assert command.command_type == CommandType.COMMAND_SEED  # type: ignore[attr-defined]
    operation = command.seed_operation  # type: ignore[attr-defined]
    assert (operation.operation, command.target_slot_id) == (SeedOperation.SEED_OP_GERMINATE, "late")  # type: ignore[attr-defined]
    # a fair share of the budget is 0.5 x 20 000 / 2 seeds = 5 000: sized to it, BP201 at width 3 (4 800) is closer
    # than BP101 at its widest, 8 (1 280)
    assert operation.blueprint_id == "BP201"
    assert dict(operation.parameters) == {"width": 3.0}
    rationale = command.decision.rationale  # type: ignore[attr-defined]
    assert "germinate BP201" in rationale and "saliency 1" in rationale and "improved" in rationale


def test_a_blueprint_over_the_budget_is_never_chosen() -> None:
    # budget 0.05 x 20 000 = 1 000 parameters: BP201 (6 400) no longer fits, BP101 (640) does
    command = run(policy(max_added_parameter_fraction=0.05), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert command.seed_operation.blueprint_id == "BP101"  # type: ignore[attr-defined]


def test_warmup_is_respected() -> None:
    command = run(policy(warmup_epochs=10), [1.0, 0.9, 0.9, 0.9, 0.9], [slot("a")])
    assert command.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]
    assert "warming up" in command.decision.rationale  # type: ignore[attr-defined]


def test_the_parameter_budget_limits_the_choice() -> None:
    # BP101 costs at least 1 x 16 x 10 = 160 parameters: over a budget of 0.005 x 20 000 = 100
    command = run(policy(max_added_parameter_fraction=0.005), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert command.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]
    assert "parameter budget" in command.decision.rationale  # type: ignore[attr-defined]


def test_widths_are_sized_to_a_fair_share_of_the_budget_left_or_left_at_their_default() -> None:
    # budget 0.01 x 20 000 = 200, one seed at a time: BP101 at width 1 (160) fits, at 2 (320) it does not
    sized = run(policy(max_added_parameter_fraction=0.01, max_concurrent_seeds=1), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert sized.seed_operation.blueprint_id == "BP101"  # type: ignore[attr-defined]
    assert dict(sized.seed_operation.parameters) == {"width": 1.0}  # type: ignore[attr-defined]
    assert "width 1" in sized.decision.rationale  # type: ignore[attr-defined]
    plenty = run(policy(max_concurrent_seeds=1), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert dict(plenty.seed_operation.parameters) == {"width": 6.0}  # type: ignore[attr-defined]  # BP201: 9 600
    default = run(policy(sizing="default"), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert dict(default.seed_operation.parameters) == {"width": 4.0}  # type: ignore[attr-defined]


def test_no_seed_is_sized_beyond_what_kasminas_g0_lets_one_seed_add() -> None:
    # budget 0.5 x 20 000 = 10 000 for one seed, but one seed may add at most 0.1 x 20 000 = 2 000: BP201 (1 600 per
    # unit of width) at width 1, never the 9 600 of width 6
    capped = run(policy(max_concurrent_seeds=1, max_seed_parameter_fraction=0.1), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    operation = capped.seed_operation  # type: ignore[attr-defined]
    assert (operation.blueprint_id, dict(operation.parameters)) == ("BP201", {"width": 1.0})
    # at 0.005 x 20 000 = 100 not even the smallest blueprint (BP101: 160) fits: nothing is proposed
    none = run(policy(max_seed_parameter_fraction=0.005), [1.0, 0.9, 0.9, 0.9], [slot("a")])
    assert none.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]


def test_at_width_slots_the_predicted_loss_decrease_chooses_where_to_grow() -> None:
    width_blueprint = blueprint("BP301", kinds=[CONV])
    width_blueprint.growth_mode = GrowthMode.GROWTH_MODE_WIDTH
    offered = [*BLUEPRINTS, width_blueprint]
    p = HeuristicPolicy(HeuristicOptions(), catalogs=[CountingCatalog(offered)])
    weak, strong = (
        slot(name, saliency=(5.0, 5.0), read_kind=CONV, read_shape=[4, 28, 28], depth=depth)
        for name, depth in (("weak", 0), ("strong", 1))
    )
    for seed, decreases in ((weak, [0.01, 0.02, 0.03, 0.04]), (strong, [0.1, 0.2, 0.3, 0.4])):
        seed.candidate_widths.extend([1, 2, 4, 8])
        seed.predicted_loss_decrease.extend(decreases)
    weak.host_gradient_norm = 50.0  # the larger saliency: it must not be what decides between width slots
    command = None
    for epoch, loss in enumerate([1.0, 0.9, 0.9, 0.9]):
        command = p.decide(packet(epoch, loss, [weak, strong]), offered)
    assert command is not None and command.target_slot_id == "strong"
    assert command.seed_operation.blueprint_id == "BP301"
    assert "predicted loss decrease" in command.decision.rationale


def test_occupied_and_embargoed_slots_are_never_targeted() -> None:
    seeds = [
        slot("busy", lifecycle.FOSSILIZED, saliency=(9, 9)),
        slot("cooling", lifecycle.EMBARGOED, saliency=(9, 9), embargo_epochs_remaining=1),
        slot("free", saliency=(0.1, 0.1)),
    ]
    command = run(policy(), [1.0, 0.9, 0.9, 0.9], seeds)
    assert command.target_slot_id == "free"  # type: ignore[attr-defined]


def test_it_respects_the_number_of_seeds_in_flight() -> None:
    seeds = [slot("a", lifecycle.TRAINING, stage_epochs=0), slot("b")]
    command = run(policy(max_concurrent_seeds=1), [1.0, 0.9, 0.9, 0.9], seeds)
    assert command.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]
    assert "in flight" in command.decision.rationale  # type: ignore[attr-defined]


def test_a_seed_that_hurts_is_culled() -> None:
    seeds = [slot("a", lifecycle.SHADOWING, stage_epochs=1, contribution=-0.02), slot("b")]
    command = policy().decide(packet(6, 0.5, seeds), BLUEPRINTS)
    assert (command.seed_operation.operation, command.target_slot_id) == (SeedOperation.SEED_OP_CULL, "a")
    assert "hurts" in command.decision.rationale and "-0.02" in command.decision.rationale


def test_a_seed_that_never_becomes_useful_in_training_is_culled() -> None:
    seeds = [slot("a", lifecycle.TRAINING, stage_epochs=3, contribution=-0.01)]
    command = policy(training_patience=3).decide(packet(6, 0.5, seeds), BLUEPRINTS)
    assert command.seed_operation.operation == SeedOperation.SEED_OP_CULL
    assert "after 3 epochs of training" in command.decision.rationale


def test_a_helpful_seed_is_advanced_and_fossilized() -> None:
    p = policy()
    steps = [
        (lifecycle.GERMINATED, {}, SeedOperation.SEED_OP_START_TRAINING),
        (lifecycle.TRAINING, {"stage_epochs": 1, "contribution": 0.01}, SeedOperation.SEED_OP_START_GRAFTING),
        (
            lifecycle.BLENDING,
            {"alpha_steps": 300, "alpha_total_steps": 300, "contribution": 0.01},
            SeedOperation.SEED_OP_STABILIZE,
        ),
        (lifecycle.SHADOWING, {"stage_epochs": 1, "contribution": 0.01}, SeedOperation.SEED_OP_EVALUATE),
        (lifecycle.PROBATIONARY, {"stage_epochs": 1, "contribution": 0.01}, SeedOperation.SEED_OP_FOSSILIZE),
    ]
    for stage, fields, expected in steps:
        command = p.decide(packet(5, 0.5, [slot("a", stage, **fields)]), BLUEPRINTS)
        assert command.seed_operation.operation == expected, command.decision.rationale


def test_a_seed_waits_in_a_stage_until_its_measurements_allow_moving_on() -> None:
    p = policy()
    waiting = [
        slot("a", lifecycle.TRAINING, stage_epochs=1, contribution=-0.005),
        slot("b", lifecycle.BLENDING, alpha_steps=10, alpha_total_steps=300, contribution=0.01),
    ]
    command = p.decide(packet(5, 0.5, waiting), BLUEPRINTS)
    assert command.command_type == CommandType.COMMAND_NOOP


def test_later_stages_are_advanced_first() -> None:
    seeds = [
        slot("young", lifecycle.GERMINATED),
        slot("old", lifecycle.PROBATIONARY, stage_epochs=1, contribution=0.01),
    ]
    command = policy().decide(packet(5, 0.5, seeds), BLUEPRINTS)
    assert (command.seed_operation.operation, command.target_slot_id) == (SeedOperation.SEED_OP_FOSSILIZE, "old")


def test_fates_of_seeds_steer_the_blueprint_choice() -> None:
    p = policy(history_weight=5.0)
    p.decide(packet(0, 1.0, [slot("a", lifecycle.PROBATIONARY, blueprint_id="BP201")]), BLUEPRINTS)
    p.decide(packet(1, 0.9, [slot("a", lifecycle.FOSSILIZED, blueprint_id="BP201")]), BLUEPRINTS)
    assert p.record == {"BP201": 1}
    ranked = p.rank_blueprints(slot("b"), BLUEPRINTS, budget=100_000)
    assert ranked[0].descriptor.blueprint_id == "BP201"


def test_its_state_survives_a_checkpoint() -> None:
    p = policy()
    run(p, [1.0, 0.9, 0.85], [slot("a")])
    restored = policy()
    restored.load_state_dict(p.state_dict())
    assert restored.state_dict() == p.state_dict()
    assert restored.growth_signal() == p.growth_signal()


class TestHeuristicConforms(TamiyoPolicyConformance):
    @pytest.fixture
    def policy(self) -> HeuristicPolicy:
        return policy(warmup_epochs=0, plateau_window=1, plateau_threshold=1.0)

    @pytest.fixture
    def blueprints(self) -> list[object]:
        return [blueprint("BP001", kinds=[1, 2, 3])]


def test_a_host_that_underfits_grows_before_its_loss_flattens() -> None:
    losses = [1.0, 0.8, 0.7, 0.6]  # still improving fast: no plateau
    fitting, underfitting = policy(), policy()
    for epoch, loss in enumerate(losses):
        command = fitting.decide(packet(epoch, loss, [slot("a")], train_loss=0.8 * loss), BLUEPRINTS)
        grown = underfitting.decide(packet(epoch, loss, [slot("a")], train_loss=1.02 * loss), BLUEPRINTS)
    assert command.command_type == CommandType.COMMAND_NOOP and "still improving" in command.decision.rationale
    assert grown.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert "the host underfits: training / validation loss 1.02, 1.02" in grown.decision.rationale
    once = policy()  # one underfitting epoch is not enough: plateau_window (2) of them are
    for epoch, loss in enumerate(losses):
        command = once.decide(
            packet(epoch, loss, [slot("a")], train_loss=(1.02 if epoch == 3 else 0.8) * loss), BLUEPRINTS
        )
    assert command.command_type == CommandType.COMMAND_NOOP


def test_no_germination_too_late_for_a_seed_to_pay() -> None:
    p = policy(min_remaining_epochs=6)
    command = None
    for epoch, loss in enumerate([1.0, 0.9, 0.9, 0.9, 0.9]):
        command = p.decide(packet(epoch + 10, loss, [slot("a")], epochs_total=15), BLUEPRINTS)
    assert command is not None and command.command_type == CommandType.COMMAND_NOOP
    assert "too late to grow: 1 epoch left" in command.decision.rationale


def test_noisy_contributions_are_judged_with_their_standard_error() -> None:
    p = policy(hurt_threshold=0.002, noise_z=2.0)
    noisy = slot("a", lifecycle.BLENDING, alpha_steps=10, alpha_total_steps=300, contribution=-0.004,
                 contribution_stderr=0.003)  # fmt: skip
    assert p.decide(packet(5, 0.5, [noisy]), BLUEPRINTS).command_type == CommandType.COMMAND_NOOP  # -0.004 > -0.006
    precise = slot("a", lifecycle.BLENDING, alpha_steps=10, alpha_total_steps=300, contribution=-0.004,
                   contribution_stderr=0.0005)  # fmt: skip
    command = p.decide(packet(5, 0.5, [precise]), BLUEPRINTS)
    assert (
        command.seed_operation.operation == SeedOperation.SEED_OP_CULL
        and "-0.004 < -0.002" in command.decision.rationale
    )


def test_a_slot_that_takes_a_much_better_blueprint_wins_over_a_slightly_more_salient_one() -> None:
    seeds = [
        slot("conv", saliency=(0.9, 1.0), depth=0),
        slot("head", kind=VECTOR, shape=[64], saliency=(1.0, 1.0), depth=1),
    ]
    p = policy(preferred_blueprints=["BP201"])  # BP201 grows in conv slots only
    command = run(p, [1.0, 0.6, 0.5, 0.499, 0.498], seeds)
    assert (command.target_slot_id, command.seed_operation.blueprint_id) == ("conv", "BP201")  # type: ignore[attr-defined]
    blind = policy(preferred_blueprints=["BP201"], saliency_weight=100.0)
    assert run(blind, [1.0, 0.6, 0.5, 0.499, 0.498], seeds).target_slot_id == "head"  # type: ignore[attr-defined]
