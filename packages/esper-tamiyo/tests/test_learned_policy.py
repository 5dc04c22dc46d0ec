"""The learned policy decides legally whatever its weights, says what it did and with what probability, and exposes
exactly the quantities a trainer needs to improve the network it serves."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies

from esper_core.leyline import (
    BlendSchedule,
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandType,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
)
from esper_core.leyline import SeedLifecycleStage as Stage
from esper_core.protocols import SlotShape, TamiyoPolicy
from esper_core.testing.conformance import TamiyoPolicyConformance
from esper_core.testing.conformance.policy import check_command
from esper_core.testing.strategies import state_packets
from esper_tamiyo.learned import LearnedPolicy, LearnedPolicyOptions, collate
from esper_tamiyo.learned.actions import (
    GERMINATE,
    NUM_SCHEDULES,
    OPERATION_NAMES,
    SEED_OPERATIONS,
    WIDTH_CLASSES,
    PolicyAction,
    germination_parameters,
    width_choices,
)
from esper_tamiyo.learned.network import PolicyNetwork, parameter_count
from esper_tamiyo.learned.policy import intra_op_threads

from tamiyo_scenarios import CountingCatalog

CONV, VECTOR, SEQUENCE = SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_SEQUENCE


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest, and never waits for a busy shared core."""
    with intra_op_threads(1):
        yield


def descriptor(
    blueprint_id: str,
    kinds: Sequence[SlotKind.ValueType],
    tier: BlueprintTier.ValueType = BlueprintTier.BLUEPRINT_TIER_SAFE,
    risk: float = 0.1,
) -> BlueprintDescriptor:
    d = BlueprintDescriptor(blueprint_id=blueprint_id, name=blueprint_id, tier=tier, risk=risk, slot_kinds=kinds)
    d.allowed_parameters["width"].CopyFrom(
        BlueprintParameterBounds(min_value=1, max_value=64, default_value=8, integer=True)
    )
    d.allowed_parameters["dropout"].CopyFrom(BlueprintParameterBounds(min_value=0.0, max_value=0.5, default_value=0.1))
    return d


BLUEPRINTS = [
    descriptor("BP001", [CONV, VECTOR]),
    descriptor("BP002", [SEQUENCE], BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL, 0.4),
    descriptor("BP003", []),  # fits every kind
    descriptor("BP004", [VECTOR]),
    descriptor("BP005", [CONV], BlueprintTier.BLUEPRINT_TIER_HIGH_RISK, 0.9),
]
#: Prices them: 10 parameters per unit of width per channel of the slot's first dimension (a conv slot of 16
#: channels: 160 per unit of width; a vector slot of 64: 640).
CATALOGS = [CountingCatalog(BLUEPRINTS)]


def randomized(policy: LearnedPolicy, seed: int = 1, scale: float = 0.5) -> LearnedPolicy:
    """Overwrite the live network's weights with random ones (and no NOOP bias), so it takes every kind of action."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        policy.network.operation_head.bias.zero_()
    return policy


def seed_state(slot_id: str, stage: Stage.ValueType, kind: SlotKind.ValueType = CONV, **fields: object) -> SeedState:
    shape = {CONV: [16, 8, 8], VECTOR: [64], SEQUENCE: [10, 32]}[kind]
    state = SeedState(slot_id=slot_id, stage=stage, slot_kind=kind, slot_shape=shape, layer_depth=1)
    if stage not in (Stage.SEED_STAGE_DORMANT, Stage.SEED_STAGE_EMBARGOED, Stage.SEED_STAGE_RESETTING):
        state.seed_id, state.blueprint_id, state.parameter_count = f"{slot_id}#1", "BP001", 500
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def packet(seeds: Sequence[SeedState], epoch: int = 5) -> SystemStatePacket:
    metrics = TrainingMetrics(
        epoch=epoch, global_step=100 * epoch, epochs_total=20, train_loss=0.5, val_loss=0.6, learning_rate=0.01,
        parameter_count=50_000,
    )  # fmt: skip
    return SystemStatePacket(
        version=1, training_run_id="run", current_epoch=epoch, global_step=100 * epoch, metrics=metrics, seeds=seeds
    )


EVERY_STAGE = packet(
    [
        seed_state("a", Stage.SEED_STAGE_DORMANT),
        seed_state("b", Stage.SEED_STAGE_DORMANT, VECTOR),
        seed_state("c", Stage.SEED_STAGE_GERMINATED),
        seed_state("d", Stage.SEED_STAGE_TRAINING, SEQUENCE),
        seed_state("e", Stage.SEED_STAGE_BLENDING, alpha_steps=10, alpha_total_steps=10, alpha=1.0),
        seed_state("f", Stage.SEED_STAGE_SHADOWING, contribution=0.02),
        seed_state("g", Stage.SEED_STAGE_PROBATIONARY, contribution=0.03),
        seed_state("h", Stage.SEED_STAGE_FOSSILIZED),
    ]
)


class TestLearnedPolicyConformance(TamiyoPolicyConformance):
    """(a) untrained, greedy; (b) random weights without the NOOP bias, sampled: every kind of action, and still
    never an illegal one."""

    @pytest.fixture(params=["untrained", "randomized"])
    def policy(self, request: pytest.FixtureRequest) -> LearnedPolicy:
        if request.param == "untrained":
            return LearnedPolicy()
        return randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=3), catalogs=CATALOGS))

    @pytest.fixture
    def blueprints(self) -> list[BlueprintDescriptor]:
        return BLUEPRINTS


def test_it_is_a_tamiyo_policy_of_the_documented_size() -> None:
    policy = LearnedPolicy()
    assert isinstance(policy, TamiyoPolicy) and policy.name == "learned"
    assert 5_000 <= parameter_count(policy.network) <= 100_000
    assert isinstance(policy.network, PolicyNetwork)


@settings(max_examples=40, deadline=None)
@given(state=state_packets(blueprint_ids=[d.blueprint_id for d in BLUEPRINTS]))
def test_the_untrained_policy_waits(state: SystemStatePacket) -> None:
    command = LearnedPolicy().decide(state, BLUEPRINTS)
    assert command.command_type == CommandType.COMMAND_NOOP
    assert command.decision.confidence > 0.99  # even when sampling, NOOP is overwhelmingly likely


def test_the_untrained_policy_waits_even_with_every_operation_legal() -> None:
    for decoding in ("greedy", "sample"):
        policy = LearnedPolicy(LearnedPolicyOptions(decoding=decoding))
        commands = [policy.decide(EVERY_STAGE, BLUEPRINTS) for _ in range(50)]
        noops = sum(command.command_type == CommandType.COMMAND_NOOP for command in commands)
        assert noops >= 49, decoding
        assert "legal: NOOP, GERMINATE, START_TRAINING, START_GRAFTING, STABILIZE, EVALUATE, FOSSILIZE, CULL" in (
            commands[0].decision.rationale
        )


def test_a_randomized_policy_takes_every_kind_of_action() -> None:
    """Random encoders and slot/blueprint heads; the operation and schedule heads are made uniform, so that with
    every operation legal (EVERY_STAGE) each kind is drawn with probability 1/8 and the coverage is certain."""
    policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=11)))
    with torch.no_grad():
        for head in (policy.network.operation_head, policy.network.schedule_head):
            head.weight.zero_()
            head.bias.zero_()
    operations: set[str] = set()
    schedules: set[int] = set()
    for _ in range(300):
        command = policy.decide(EVERY_STAGE, BLUEPRINTS)
        check_command(command, EVERY_STAGE, BLUEPRINTS)
        operations.add(command.decision.rationale.split(" ")[0])
        if command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE:
            schedules.add(command.seed_operation.blend_schedule)
    assert operations == set(OPERATION_NAMES)
    assert schedules == {
        BlendSchedule.BLEND_SCHEDULE_LINEAR,
        BlendSchedule.BLEND_SCHEDULE_COSINE,
        BlendSchedule.BLEND_SCHEDULE_TANH,
    }


def test_the_randomized_conformance_policy_varies_its_actions_on_random_packets() -> None:
    """The policy of the randomized conformance run (input-dependent operation logits) is not stuck on one action."""
    policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=3)))
    operations: set[int] = set()

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(state=state_packets(blueprint_ids=["BP001"]))
    def decide(state: SystemStatePacket) -> None:
        command = policy.decide(state, BLUEPRINTS)
        check_command(command, state, BLUEPRINTS)
        operations.add(PolicyAction.from_index(command.decision.action_index).operation)

    decide()
    # Which packets Hypothesis draws depends on more than the seed (importing other modules first changes them), so
    # the count of distinct operations does too (4 or 5 of 8 seen); a policy stuck on one action gives 1.
    assert len(operations) >= 4, sorted(OPERATION_NAMES[op] for op in operations)


def test_germination_fills_the_metadata_and_uses_bounded_defaults() -> None:
    policy = randomized(LearnedPolicy())
    with torch.no_grad():
        policy.network.operation_head.bias[GERMINATE] = 50.0
    command = policy.decide(EVERY_STAGE, BLUEPRINTS)
    check_command(command, EVERY_STAGE, BLUEPRINTS)
    operation = command.seed_operation
    assert operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert command.target_slot_id in {"a", "b"}
    # No catalog prices these blueprints: the cost is unknown, so the width is the default one.
    assert dict(operation.parameters) == {"dropout": pytest.approx(0.1), "width": 8.0}
    assert PolicyAction.from_index(command.decision.action_index).width == WIDTH_CLASSES.index(8)
    assert operation.blend_schedule != BlendSchedule.BLEND_SCHEDULE_UNSPECIFIED
    decision = command.decision
    assert decision.policy_name == "learned" and decision.policy_version.startswith("untrained-")
    assert decision.HasField("value_estimate") and decision.HasField("action_log_prob")
    assert decision.confidence == pytest.approx(1.0, abs=1e-6)
    assert 0 < decision.selected_slot_score <= 1 and 0 < decision.blueprint_score <= 1
    assert decision.action_log_prob <= 0
    assert f"GERMINATE {command.target_slot_id}" in decision.rationale and operation.blueprint_id in decision.rationale
    assert "width 8 p=1.000" in decision.rationale and "budget left 20500 parameters" in decision.rationale
    assert command.training_run_id == "run" and command.decision_epoch == 5 and command.decision_step == 500
    assert command.annotations["learned.feature_schema_digest"] == policy.feature_schema_digest


def test_germination_parameters_stay_inside_bounds_even_for_odd_descriptors() -> None:
    d = BlueprintDescriptor(blueprint_id="odd")
    d.allowed_parameters["below"].CopyFrom(BlueprintParameterBounds(min_value=2, max_value=4, default_value=1))
    d.allowed_parameters["whole"].CopyFrom(
        BlueprintParameterBounds(min_value=1.2, max_value=3.7, default_value=3.6, integer=True)
    )
    d.allowed_parameters["empty"].CopyFrom(BlueprintParameterBounds(min_value=5, max_value=1, default_value=3))
    d.allowed_parameters["nan"].CopyFrom(BlueprintParameterBounds(min_value=0, max_value=1, default_value=math.nan))
    assert germination_parameters(d) == {"below": 2.0, "whole": 3.0, "nan": 0.0}


def test_the_recorded_log_probability_is_what_a_trainer_recomputes() -> None:
    """Every recorded ``action_log_prob``, width factor included, is what ``evaluate_actions`` recomputes from the
    re-encoded decision point, one at a time and batched (padded)."""
    policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=5), catalogs=CATALOGS), seed=2)
    with torch.no_grad():  # uniform operations (each 1/8 with every one legal) and widths that vary
        policy.network.operation_head.weight.zero_()
        policy.network.width_head.weight.mul_(0.02)
    encoded_states, actions, recorded = [], [], []
    for _ in range(80):
        command = policy.decide(EVERY_STAGE, BLUEPRINTS)
        encoded = policy.encode(EVERY_STAGE, BLUEPRINTS)
        action = policy.action_from_command(command, encoded)
        fields_only = type(command)()
        fields_only.CopyFrom(command)
        fields_only.decision.ClearField("action_index")
        assert policy.action_from_command(fields_only, encoded) == action  # the index and the fields agree
        log_prob, value = policy.log_prob_and_value(encoded, action)
        assert log_prob == pytest.approx(command.decision.action_log_prob, abs=1e-5)
        assert value == pytest.approx(command.decision.value_estimate, abs=1e-5)
        encoded_states.append(encoded)
        actions.append(action)
        recorded.append(command.decision.action_log_prob)
    assert len({a.operation for a in actions}) >= 4
    widths = {a.width for a in actions if a.operation == GERMINATE}
    assert len(widths - {-1}) >= 2, widths  # the width factor is part of what was recorded and recomputed
    # Batched (padded) evaluation agrees with the single decisions.
    other = packet([seed_state("x", Stage.SEED_STAGE_DORMANT, VECTOR)])
    command = policy.decide(other, BLUEPRINTS[:2])
    encoded_states.append(policy.encode(other, BLUEPRINTS[:2]))
    actions.append(policy.action_from_command(command, encoded_states[-1]))
    recorded.append(command.decision.action_log_prob)
    with torch.no_grad():
        evaluation = policy.evaluate_actions(collate(encoded_states), actions)
    # Padded batches sum in another order than single decisions: float32 rounding, up to ~2e-5 on these log-probs.
    assert evaluation.log_prob.tolist() == pytest.approx(recorded, abs=1e-4)
    assert bool((evaluation.entropy >= 0).all())
    # The width term counts: another legal width class of a recorded germination has another log-probability.
    index, sized = next((i, a) for i, a in enumerate(actions) if a.operation == GERMINATE and a.width >= 0)
    other_width = next(w for w, _ in encoded_states[index].width_candidates(sized.slot, sized.blueprint)
                       if w != sized.width)  # fmt: skip
    moved = policy.log_prob_and_value(encoded_states[index], attrs.evolve(sized, width=other_width))[0]
    assert moved != pytest.approx(recorded[index], abs=1e-4)
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        policy.evaluate_actions(collate(encoded_states[:1]), torch.zeros(1, 4, dtype=torch.int64))


def test_action_indices_round_trip() -> None:
    for action in (
        PolicyAction(0),
        PolicyAction(1, 31, 63, 2),
        PolicyAction(1, 31, 63, 2, 6),
        PolicyAction(1, 0, 0, 0, 0),
        PolicyAction(1, 5, 7, 1, 3),
        PolicyAction(7, 0),
        PolicyAction(3, 12),
    ):
        assert PolicyAction.from_index(action.index) == action
    assert PolicyAction(0).index == 0
    # The documented formula, with every part shifted by one.
    assert PolicyAction(1, 5, 7, 1, 3).index == ((((1 * 33 + 6) * 65 + 8) * 4 + 2) * 8 + 4)
    indices = {
        PolicyAction(op, slot, blueprint, schedule, width).index
        for op in (0, 1, 7)
        for slot in (-1, 0, 31)
        for blueprint in (-1, 0, 63)
        for schedule in range(-1, NUM_SCHEDULES)
        for width in range(-1, len(WIDTH_CLASSES))
    }
    assert len(indices) == 3 * 3 * 3 * (NUM_SCHEDULES + 1) * (len(WIDTH_CLASSES) + 1)  # one index per action


def test_a_trainer_can_improve_the_served_network_and_ship_it() -> None:
    """The Simic path in miniature: clone, take gradient steps on the log-probability of a chosen action (what a
    policy-gradient update does with a positive advantage), export, load into a fresh policy, see it act."""
    policy = LearnedPolicy()
    encoded = policy.encode(EVERY_STAGE, BLUEPRINTS)
    target = PolicyAction(operation=SEED_OPERATIONS.index(SeedOperation.SEED_OP_FOSSILIZE), slot=6)
    network = policy.clone_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.05)
    batch = collate([encoded])
    with torch.no_grad():
        before = float(policy.evaluate_actions(batch, [target], network).log_prob[0])
    for _ in range(30):
        evaluation = policy.evaluate_actions(batch, [target], network)
        loss = -evaluation.log_prob.mean() + evaluation.value.pow(2).mean()
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    with torch.no_grad():
        after = float(policy.evaluate_actions(batch, [target], network).log_prob[0])
    assert after > before
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in network.operation_head.parameters())
    assert policy.decide(EVERY_STAGE, BLUEPRINTS).command_type == CommandType.COMMAND_NOOP  # live network untouched
    update = policy.export_update(policy_version="simic-1", state_dict=network.state_dict())
    served = LearnedPolicy()
    verdict = served.load_update(update)
    assert verdict.accepted, verdict
    command = served.decide(EVERY_STAGE, BLUEPRINTS)
    assert (command.seed_operation.operation, command.target_slot_id) == (SeedOperation.SEED_OP_FOSSILIZE, "g")
    assert command.decision.policy_version == "simic-1"


def test_sampling_is_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[int]:
        policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=seed)))
        return [policy.decide(EVERY_STAGE, BLUEPRINTS).decision.action_index for _ in range(30)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_greedy_decisions_are_stable() -> None:
    policy = randomized(LearnedPolicy(), seed=4)
    indices = {policy.decide(EVERY_STAGE, BLUEPRINTS).decision.action_index for _ in range(10)}
    assert len(indices) == 1


def test_edge_cases_give_legal_commands() -> None:
    policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample")))
    empty = packet([])
    assert policy.decide(empty, BLUEPRINTS).command_type == CommandType.COMMAND_NOOP
    dormant_only = packet([seed_state("a", Stage.SEED_STAGE_DORMANT), seed_state("b", Stage.SEED_STAGE_EMBARGOED,
                                                                              embargo_epochs_remaining=2)])  # fmt: skip
    for _ in range(30):
        command = policy.decide(dormant_only, [])  # nothing offered: nothing to germinate
        assert command.command_type == CommandType.COMMAND_NOOP
        command = policy.decide(dormant_only, [descriptor("SEQ", [SEQUENCE])])  # nothing fits a conv slot
        assert command.command_type == CommandType.COMMAND_NOOP
    blending = packet([seed_state("e", Stage.SEED_STAGE_BLENDING, alpha_steps=3, alpha_total_steps=10)])
    for _ in range(30):  # the ramp is not finished: STABILIZE would be refused by the executor
        command = policy.decide(blending, BLUEPRINTS)
        assert command.seed_operation.operation != SeedOperation.SEED_OP_STABILIZE
    many = packet([seed_state(f"s{i}", Stage.SEED_STAGE_DORMANT) for i in range(40)])
    for _ in range(20):
        command = policy.decide(many, BLUEPRINTS)
        check_command(command, many, BLUEPRINTS)
        assert command.target_slot_id in {"", *(f"s{i}" for i in range(32))}
    many_blueprints = [descriptor(f"BP{i:03d}", [CONV]) for i in range(80)]
    command = policy.decide(dormant_only, many_blueprints)
    check_command(command, dormant_only, many_blueprints)


def test_a_network_that_outputs_nan_falls_back_to_noop() -> None:
    policy = randomized(LearnedPolicy())
    with torch.no_grad():
        policy.network.operation_head.weight.fill_(math.nan)
    command = policy.decide(EVERY_STAGE, BLUEPRINTS)
    assert command.command_type == CommandType.COMMAND_NOOP
    assert "not finite" in command.decision.rationale


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=strategies.data())
def test_masks_match_the_conformance_rules_for_every_slot(data: strategies.DataObject) -> None:
    """Every (operation, slot, blueprint) the masks allow is a command the conformance check accepts."""
    state = data.draw(state_packets(blueprint_ids=["BP001"]))
    policy = LearnedPolicy(catalogs=CATALOGS)
    encoded = policy.encode(state, BLUEPRINTS)
    for op in range(1, len(OPERATION_NAMES)):
        for slot in encoded.slot_mask[op].nonzero().flatten().tolist():
            blueprints = encoded.fit_mask[slot].nonzero().flatten().tolist() if op == GERMINATE else [-1]
            assert blueprints, "a germinable slot has a fitting blueprint"
            for blueprint in blueprints:
                widths = [w for w, _ in encoded.width_candidates(slot, blueprint)] if op == GERMINATE else []
                for width in widths or [-1]:
                    action = PolicyAction(op, slot, blueprint, 0 if op == GERMINATE else -1, width)
                    command = policy._command(  # the command builder the decoder uses
                        state, encoded, action, policy._live, 0.0, 0.0, (1.0, 1.0, 1.0, 1.0),
                    )  # fmt: skip
                    check_command(command, state, BLUEPRINTS)
                    assert policy.action_from_command(command, encoded) == action


# -- width and budget ---------------------------------------------------------------------------------------------


def widest(policy: LearnedPolicy) -> LearnedPolicy:
    """Random weights that germinate wherever they can and want the widest width class by far: what a trained
    policy that learned "wider is better" would do. Only the masks stand between it and the budget."""
    randomized(policy)
    with torch.no_grad():
        policy.network.operation_head.bias[GERMINATE] = 50.0
        policy.network.width_head.weight.zero_()
        policy.network.width_feature_weight.zero_()
        policy.network.width_head.bias.copy_(torch.arange(len(WIDTH_CLASSES), dtype=torch.float32) * 20.0)
    return policy


def cost(command_parameters: dict[str, float], slot: SeedState, blueprint_id: str) -> int:
    shape = SlotShape.of(slot)
    return CATALOGS[0].parameter_count(blueprint_id, shape, command_parameters)


def test_width_choices_stay_inside_the_bounds_with_one_class_per_width() -> None:
    def bounded(low: float, high: float, integer: bool = True) -> BlueprintDescriptor:
        d = BlueprintDescriptor(blueprint_id="x")
        d.allowed_parameters["width"].CopyFrom(
            BlueprintParameterBounds(min_value=low, max_value=high, default_value=low, integer=integer)
        )
        return d

    assert width_choices(bounded(1, 4)) == (1.0, 2.0, 4.0, None, None, None, None)  # 8..64 would all give 4
    assert width_choices(bounded(3, 256)) == (None, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # 2 is nearest to 3
    assert width_choices(bounded(12, 12)) == (None, None, None, None, 12.0, None, None)  # 16 is nearest to 12
    assert width_choices(bounded(1.5, 1.9)) is None  # no whole number inside
    assert width_choices(bounded(1, 64, integer=False)) is None  # not an integer parameter: no width factor
    assert width_choices(bounded(1, math.inf)) is None
    assert width_choices(BlueprintDescriptor(blueprint_id="plain")) is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    used=strategies.integers(min_value=0, max_value=30_000),
    fraction=strategies.floats(min_value=0.0, max_value=1.0),
    cap=strategies.floats(min_value=0.01, max_value=1.0),
)
def test_a_policy_that_wants_the_widest_width_never_exceeds_the_budget(used: int, fraction: float, cap: float) -> None:
    """Whatever the budget left and the per-seed cap, every germination's catalog cost fits both, inside the
    blueprint's bounds, and it is the widest that does (the weights want the widest)."""
    options = LearnedPolicyOptions(max_added_parameter_fraction=fraction, max_seed_parameter_fraction=cap)
    policy = widest(LearnedPolicy(options, catalogs=CATALOGS))
    seeds = [
        seed_state("conv", Stage.SEED_STAGE_DORMANT),
        seed_state("vector", Stage.SEED_STAGE_DORMANT, VECTOR),
        seed_state("busy", Stage.SEED_STAGE_TRAINING, parameter_count=used),
    ]
    state = packet(seeds)
    host = 50_000 - used
    left, largest = fraction * host - used, cap * host
    command = policy.decide(state, BLUEPRINTS)
    check_command(command, state, BLUEPRINTS)
    if command.seed_operation.operation != SeedOperation.SEED_OP_GERMINATE:
        # Nothing fits: not even width 1 of the cheapest blueprint in the cheapest slot (160 parameters).
        assert min(left, largest) < 160
        assert not policy.encode(state, BLUEPRINTS).slot_mask[GERMINATE].any()
        return
    slot = next(seed for seed in seeds if seed.slot_id == command.target_slot_id)
    parameters = dict(command.seed_operation.parameters)
    spent = cost(parameters, slot, command.seed_operation.blueprint_id)
    assert spent <= left and spent <= largest, (spent, left, largest)
    width = parameters["width"]
    assert width in WIDTH_CLASSES and 1 <= width <= 64
    wider = [w for w in WIDTH_CLASSES if w > width]
    assert not wider or cost({**parameters, "width": wider[0]}, slot, command.seed_operation.blueprint_id) > min(
        left, largest
    )
    assert f"width {width:g}" in command.decision.rationale


def test_with_the_budget_spent_germinate_is_not_legal() -> None:
    policy = widest(LearnedPolicy(catalogs=CATALOGS))
    # Host 50 000 - 25 000 = 25 000; budget 12 500; the seeds in slots hold 25 000 already.
    spent = packet(
        [
            seed_state("a", Stage.SEED_STAGE_DORMANT),
            seed_state("b", Stage.SEED_STAGE_DORMANT, VECTOR),
            seed_state("c", Stage.SEED_STAGE_FOSSILIZED, parameter_count=25_000),
        ]
    )
    encoded = policy.encode(spent, BLUEPRINTS)
    assert encoded.budget_left < 0
    assert not encoded.slot_mask[GERMINATE].any() and not encoded.fit_mask.any() and not encoded.width_mask.any()
    for _ in range(20):
        command = policy.decide(spent, BLUEPRINTS)
        assert command.seed_operation.operation != SeedOperation.SEED_OP_GERMINATE
        assert "GERMINATE" not in command.decision.rationale.split("legal:")[1]
    # Without a catalog the cost is unknown, but with nothing left nothing is allowed either.
    assert not LearnedPolicy().encode(spent, BLUEPRINTS).slot_mask[GERMINATE].any()


def test_without_a_catalog_only_the_default_width_is_legal() -> None:
    """An unknown cost cannot be checked against the budget: the policy germinates what it did before it chose
    widths, the blueprint's default (12 here), under the class nearest to it (16)."""
    d = descriptor("BP009", [CONV])
    d.allowed_parameters["width"].default_value = 12
    policy = widest(LearnedPolicy())
    state = packet([seed_state("a", Stage.SEED_STAGE_DORMANT)])
    encoded = policy.encode(state, [d])
    assert encoded.width_candidates(0, 0) == [(WIDTH_CLASSES.index(16), 12.0)]
    command = policy.decide(state, [d])
    assert dict(command.seed_operation.parameters)["width"] == 12.0
    assert PolicyAction.from_index(command.decision.action_index).width == WIDTH_CLASSES.index(16)


def test_a_heuristic_germination_is_read_as_the_nearest_legal_width_class() -> None:
    """Behaviour cloning reads the heuristic's decisions as actions of this policy: no action_index, a width in the
    parameters."""
    from esper_tamiyo.commands import seed_command

    policy = LearnedPolicy(catalogs=CATALOGS)
    state = packet([seed_state("a", Stage.SEED_STAGE_DORMANT), seed_state("b", Stage.SEED_STAGE_DORMANT, VECTOR)])
    encoded = policy.encode(state, BLUEPRINTS)

    def germinate(slot: str, width: float | None) -> PolicyAction:
        parameters = {"dropout": 0.1} if width is None else {"dropout": 0.1, "width": width}
        command = seed_command(
            SeedOperation.SEED_OP_GERMINATE, slot, "germinate (heuristic)", policy="heuristic",
            blueprint_id="BP001", parameters=parameters, schedule=BlendSchedule.BLEND_SCHEDULE_TANH,
        )  # fmt: skip
        assert not command.decision.HasField("action_index")
        return policy.action_from_command(command, encoded)

    eight = germinate("a", 8)
    assert eight == PolicyAction(GERMINATE, 0, 0, 2, WIDTH_CLASSES.index(8))
    assert math.isfinite(policy.log_prob_and_value(encoded, eight)[0])
    assert germinate("a", 12).width == WIDTH_CLASSES.index(16)  # log2 12 is nearer 16 than 8
    assert germinate("a", None).width == WIDTH_CLASSES.index(8)  # left out: the default, 8
    # The vector slot: 640 per unit, 22 000 left: 32 is the widest legal class, so 48 reads as 32.
    assert germinate("b", 48).width == WIDTH_CLASSES.index(32)
    # A germination this policy could not take (no budget left) is refused, not re-scored as impossible.
    spent = packet([seed_state("a", Stage.SEED_STAGE_DORMANT),
                    seed_state("c", Stage.SEED_STAGE_FOSSILIZED, parameter_count=25_000)])  # fmt: skip
    command = seed_command(
        SeedOperation.SEED_OP_GERMINATE, "a", "germinate", blueprint_id="BP001", parameters={"width": 8.0},
        schedule=BlendSchedule.BLEND_SCHEDULE_TANH,
    )  # fmt: skip
    with pytest.raises(ValueError, match="GERMINATE is not legal on slot 'a'"):
        policy.action_from_command(command, policy.encode(spent, BLUEPRINTS))
    # Nor is an index whose width class the masks do not allow (64 costs 40 960 of the 22 000 left at 'b').
    with pytest.raises(ValueError, match="width class 6 is not legal"):
        command.decision.action_index = PolicyAction(GERMINATE, 1, 0, 2, 6).index
        policy.action_from_command(command, encoded)


def test_the_heuristic_and_the_learned_policy_share_one_budget_and_one_cost() -> None:
    """Compared at equal budgets, they must agree on what is left and on what a germination costs; cloning a real
    heuristic germination gives a legal action of the learned policy."""
    from esper_tamiyo.options import HeuristicOptions
    from esper_tamiyo.policies.heuristic import HeuristicPolicy

    heuristic = HeuristicPolicy(HeuristicOptions(warmup_epochs=0, plateau_window=1), catalogs=CATALOGS)
    learned = LearnedPolicy(catalogs=CATALOGS)
    seeds = [
        seed_state("a", Stage.SEED_STAGE_DORMANT),
        seed_state("b", Stage.SEED_STAGE_DORMANT, VECTOR),
        seed_state("c", Stage.SEED_STAGE_TRAINING, parameter_count=3_000),
    ]
    command = None
    for epoch in range(3):  # a flat validation loss: a plateau, so the heuristic germinates
        state = packet(seeds, epoch=epoch)
        command = heuristic.decide(state, BLUEPRINTS)
    assert command is not None and command.seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert heuristic.budget_left(state) == learned.encoder.budget(state).left == 0.5 * 47_000 - 3_000
    encoded = learned.encode(state, BLUEPRINTS)
    action = learned.action_from_command(command, encoded)
    # The heuristic sized the width to half the budget left (10 250): 64 at a conv slot, 16 at the vector slot.
    width = command.seed_operation.parameters["width"]
    assert width in (64.0, 16.0) and float(encoded.width_values[action.slot, action.blueprint, action.width]) == width
    spent = cost(dict(command.seed_operation.parameters), seeds[action.slot], command.seed_operation.blueprint_id)
    assert float(encoded.width_features[action.slot, action.blueprint, action.width, 0]) == pytest.approx(
        spent / learned.encoder.budget(state).left
    )
    assert math.isfinite(learned.log_prob_and_value(encoded, action)[0])
