"""The learned policy decides legally whatever its weights, says what it did and with what probability, and exposes
exactly the quantities a trainer needs to improve the network it serves."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

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
from esper_core.protocols import TamiyoPolicy
from esper_core.testing.conformance import TamiyoPolicyConformance
from esper_core.testing.conformance.policy import check_command
from esper_core.testing.strategies import state_packets
from esper_tamiyo.learned import LearnedPolicy, LearnedPolicyOptions, collate
from esper_tamiyo.learned.actions import GERMINATE, OPERATION_NAMES, SEED_OPERATIONS, PolicyAction
from esper_tamiyo.learned.network import PolicyNetwork, parameter_count
from esper_tamiyo.learned.policy import germination_parameters, intra_op_threads

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
        return randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=3)))

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
    assert len(operations) >= 5, sorted(OPERATION_NAMES[op] for op in operations)


def test_germination_fills_the_metadata_and_uses_bounded_defaults() -> None:
    policy = randomized(LearnedPolicy())
    with torch.no_grad():
        policy.network.operation_head.bias[GERMINATE] = 50.0
    command = policy.decide(EVERY_STAGE, BLUEPRINTS)
    check_command(command, EVERY_STAGE, BLUEPRINTS)
    operation = command.seed_operation
    assert operation.operation == SeedOperation.SEED_OP_GERMINATE
    assert command.target_slot_id in {"a", "b"}
    assert dict(operation.parameters) == {"dropout": pytest.approx(0.1), "width": 8.0}
    assert operation.blend_schedule != BlendSchedule.BLEND_SCHEDULE_UNSPECIFIED
    decision = command.decision
    assert decision.policy_name == "learned" and decision.policy_version.startswith("untrained-")
    assert decision.HasField("value_estimate") and decision.HasField("action_log_prob")
    assert decision.confidence == pytest.approx(1.0, abs=1e-6)
    assert 0 < decision.selected_slot_score <= 1 and 0 < decision.blueprint_score <= 1
    assert decision.action_log_prob <= 0
    assert f"GERMINATE {command.target_slot_id}" in decision.rationale and operation.blueprint_id in decision.rationale
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
    policy = randomized(LearnedPolicy(LearnedPolicyOptions(decoding="sample", seed=5)), seed=2)
    encoded_states, actions, recorded = [], [], []
    for _ in range(40):
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
    # Batched (padded) evaluation agrees with the single decisions.
    other = packet([seed_state("x", Stage.SEED_STAGE_DORMANT, VECTOR)])
    command = policy.decide(other, BLUEPRINTS[:2])
    encoded_states.append(policy.encode(other, BLUEPRINTS[:2]))
    actions.append(policy.action_from_command(command, encoded_states[-1]))
    recorded.append(command.decision.action_log_prob)
    with torch.no_grad():
        evaluation = policy.evaluate_actions(collate(encoded_states), actions)
    assert evaluation.log_prob.tolist() == pytest.approx(recorded, abs=1e-5)
    assert bool((evaluation.entropy >= 0).all())


def test_action_indices_round_trip() -> None:
    for action in (PolicyAction(0), PolicyAction(1, 31, 63, 2), PolicyAction(7, 0), PolicyAction(3, 12)):
        assert PolicyAction.from_index(action.index) == action
    assert PolicyAction(0).index == 0


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
    policy = LearnedPolicy()
    encoded = policy.encode(state, BLUEPRINTS)
    for op in range(1, len(OPERATION_NAMES)):
        for slot in encoded.slot_mask[op].nonzero().flatten().tolist():
            blueprints = encoded.fit_mask[slot].nonzero().flatten().tolist() if op == GERMINATE else [-1]
            assert blueprints, "a germinable slot has a fitting blueprint"
            for blueprint in blueprints:
                command = policy._command(  # the command builder the decoder uses
                    state, encoded, PolicyAction(op, slot, blueprint, 0 if op == GERMINATE else -1),
                    policy._live, 0.0, 0.0, (1.0, 1.0, 1.0 if op == GERMINATE else None),
                )  # fmt: skip
                check_command(command, state, BLUEPRINTS)
