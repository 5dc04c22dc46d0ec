"""Policy updates: a good one changes the decisions; every corrupt, foreign or mismatched one is refused with its
reason and changes nothing; a swap is atomic for concurrent decisions."""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from esper_core.errors import ConfigError
from esper_core.leyline import (
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandType,
    PolicyUpdate,
    SeedOperation,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
)
from esper_core.leyline import SeedLifecycleStage as Stage
from esper_core.plugins import BuildContext, Registry
from esper_core.protocols import SlotShape
from esper_core.signing import SigningKey, sign_signature_field
from esper_tamiyo.learned import (
    REJECTION_REASONS,
    LearnedPolicy,
    LearnedPolicyOptions,
    build_learned_policy,
    read_update,
    save_update,
)
from esper_tamiyo.learned.actions import GERMINATE, NOOP
from esper_tamiyo.learned.encoder import EncodedBatch
from esper_tamiyo.learned.network import PolicyOutput
from esper_tamiyo.learned.policy import intra_op_threads
from esper_tamiyo.learned.updates import payload_bytes

from tamiyo_scenarios import CountingCatalog

DOC = Path(__file__).resolve().parents[3] / "docs" / "learned-policy.md"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with intra_op_threads(1):
        yield


def blueprint(blueprint_id: str) -> BlueprintDescriptor:
    d = BlueprintDescriptor(blueprint_id=blueprint_id, slot_kinds=[SlotKind.SLOT_KIND_CONV2D], risk=0.1)
    d.tier = BlueprintTier.BLUEPRINT_TIER_SAFE
    d.allowed_parameters["width"].CopyFrom(BlueprintParameterBounds(min_value=1, max_value=32, default_value=4))
    return d


BLUEPRINTS = [blueprint("BP001"), blueprint("BP002")]


def state(*stages: int, epoch: int = 3) -> SystemStatePacket:
    seeds = []
    for i, stage in enumerate(stages):
        seed = SeedState(slot_id=f"s{i}", stage=stage, slot_kind=SlotKind.SLOT_KIND_CONV2D, slot_shape=[8, 4, 4])  # type: ignore[arg-type]
        if stage != Stage.SEED_STAGE_DORMANT:
            seed.seed_id, seed.blueprint_id = f"s{i}#1", "BP001"
        seeds.append(seed)
    metrics = TrainingMetrics(epoch=epoch, val_loss=1.0 / (epoch + 1), parameter_count=10_000)
    return SystemStatePacket(current_epoch=epoch, metrics=metrics, seeds=seeds)


STATES = [
    state(Stage.SEED_STAGE_DORMANT, Stage.SEED_STAGE_DORMANT),
    state(Stage.SEED_STAGE_DORMANT, Stage.SEED_STAGE_TRAINING, epoch=5),
    state(Stage.SEED_STAGE_PROBATIONARY, Stage.SEED_STAGE_GERMINATED, epoch=9),
]


def decisions(policy: LearnedPolicy) -> list[tuple[int, float, float, str]]:
    result = []
    for packet in STATES:
        decision = policy.decide(packet, BLUEPRINTS).decision
        result.append(
            (decision.action_index, decision.action_log_prob, decision.value_estimate, decision.policy_version)
        )
    return result


def germinating_weights(policy: LearnedPolicy, value: float = 1.0) -> dict[str, torch.Tensor]:
    """Weights that germinate wherever they can (what a trained update might do), with a recognisable value."""
    network = policy.clone_network()
    with torch.no_grad():
        network.operation_head.bias.zero_()
        network.operation_head.bias[GERMINATE] = 20.0
        network.value_head.bias.fill_(value)
    return network.state_dict()


def test_a_round_trip_changes_the_decisions_as_expected(tmp_path: Path) -> None:
    key = SigningKey.generate()
    producer, consumer = LearnedPolicy(signing_key=key), LearnedPolicy(signing_key=key)
    assert all(index == 0 for index, *_ in decisions(consumer))  # untrained: NOOP everywhere
    weights = germinating_weights(producer)
    update = producer.export_update(policy_version="simic-7", state_dict=weights, training_metrics={"reward": 0.5})
    assert update.payload_sha256 == hashlib.sha256(update.payload).hexdigest() and update.signature
    assert (update.policy_name, update.feature_schema_digest, update.architecture_digest) == (
        "learned",
        consumer.feature_schema_digest,
        consumer.architecture_digest,
    )
    path = tmp_path / "policy.update"
    save_update(update, path)
    verdict = consumer.load_update(read_update(path))
    assert (verdict.accepted, verdict.reason, verdict.policy_version) == (True, "accepted", "simic-7")
    assert consumer.policy_version == "simic-7" and consumer.verdicts == {"accepted": 1}
    commands = [consumer.decide(packet, BLUEPRINTS) for packet in STATES]
    assert [c.seed_operation.operation for c in commands[:2]] == [SeedOperation.SEED_OP_GERMINATE] * 2
    assert commands[0].decision.value_estimate == pytest.approx(1.0)
    assert commands[2].command_type == CommandType.COMMAND_NOOP  # nothing is DORMANT there
    assert all(c.decision.policy_version == "simic-7" for c in commands)
    loaded = consumer.network.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    assert dict(update.training_metrics) == {"reward": 0.5}
    # The same update into a third policy gives the same decisions: Tamiyo serves what Simic trained.
    third = LearnedPolicy(signing_key=key)
    assert third.load_update(update).accepted and decisions(third) == decisions(consumer)


def resign(key: SigningKey | None) -> Callable[[PolicyUpdate], None]:
    def sign(update: PolicyUpdate) -> None:
        if key is not None:
            sign_signature_field(key, update)

    return sign


def with_payload(payload: bytes, key: SigningKey) -> Callable[[PolicyUpdate], None]:
    """Replace the payload with a correct checksum and signature, so the checks after them are reached."""

    def mutate(update: PolicyUpdate) -> None:
        update.payload = payload
        update.payload_sha256 = hashlib.sha256(payload).hexdigest()
        sign_signature_field(key, update)

    return mutate


def with_weights(
    change: Callable[[dict[str, torch.Tensor]], object], key: SigningKey
) -> Callable[[PolicyUpdate], None]:
    def mutate(update: PolicyUpdate) -> None:
        weights = torch.load(io.BytesIO(update.payload), weights_only=True)
        change(weights)
        with_payload(payload_bytes(weights), key)(update)

    return mutate


class Evil:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getpid, ())


def pickled(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


KEY = SigningKey.from_secret("a-test-secret-of-enough-length")
OTHER_KEY = SigningKey.from_secret("another-secret-of-enough-length")


def _set(field: str, value: object) -> Callable[[PolicyUpdate], None]:
    def mutate(update: PolicyUpdate) -> None:
        setattr(update, field, value)
        sign_signature_field(KEY, update)

    return mutate


def _flip_payload_byte(update: PolicyUpdate) -> None:
    payload = bytearray(update.payload)
    payload[len(payload) // 2] ^= 0xFF
    update.payload = bytes(payload)
    sign_signature_field(KEY, update)


def _tamper_after_signing(update: PolicyUpdate) -> None:
    update.tamiyo_policy_version = "forged"


def _sign_with_other_key(update: PolicyUpdate) -> None:
    sign_signature_field(OTHER_KEY, update)


def _unsign(update: PolicyUpdate) -> None:
    update.ClearField("signature")


def _first_weight(weights: dict[str, torch.Tensor]) -> str:
    return sorted(weights)[0]


CASES: dict[str, tuple[Callable[[PolicyUpdate], None], str]] = {
    "heuristic policy's update": (_set("policy_name", "heuristic"), "wrong_policy"),
    "no policy name": (_set("policy_name", ""), "wrong_policy"),
    "other feature schema": (_set("feature_schema_digest", "0" * 64), "schema_mismatch"),
    "other architecture": (_set("architecture_digest", "f" * 64), "architecture_mismatch"),
    "corrupt payload": (_flip_payload_byte, "checksum_mismatch"),
    "no checksum": (_set("payload_sha256", ""), "checksum_mismatch"),
    "unsigned": (_unsign, "missing_signature"),
    "altered after signing": (_tamper_after_signing, "invalid_signature"),
    "signed with another secret": (_sign_with_other_key, "invalid_signature"),
    "empty payload": (with_payload(b"", KEY), "invalid_payload"),
    "garbage payload": (with_payload(b"not a torch file", KEY), "invalid_payload"),
    "pickled code": (with_payload(pickled({"x": Evil()}), KEY), "invalid_payload"),
    "a list of tensors": (with_payload(pickled([torch.zeros(2)]), KEY), "invalid_payload"),
    "a missing parameter": (with_weights(lambda w: w.pop(_first_weight(w)), KEY), "shape_mismatch"),
    "an unexpected parameter": (with_weights(lambda w: w.update(extra=torch.zeros(1)), KEY), "shape_mismatch"),
    "a wrong shape": (
        with_weights(lambda w: w.update({"value_head.weight": torch.zeros(2, 64)}), KEY),
        "shape_mismatch",
    ),
    "integer weights": (
        with_weights(lambda w: w.update({"value_head.bias": torch.zeros(1, dtype=torch.int64)}), KEY),
        "shape_mismatch",
    ),
    "NaN weights": (with_weights(lambda w: w["value_head.bias"].fill_(math.nan), KEY), "non_finite_weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_update_is_rejected_with_its_reason_and_changes_nothing(case: str) -> None:
    mutate, reason = CASES[case]
    policy = LearnedPolicy(signing_key=KEY)
    good = policy.export_update(policy_version="good", state_dict=germinating_weights(policy))
    bad = PolicyUpdate()
    bad.CopyFrom(good)
    mutate(bad)
    before, network = decisions(policy), policy.network
    verdict = policy.load_update(bad)
    assert (verdict.accepted, verdict.reason) == (False, reason), verdict.detail
    assert verdict.detail and verdict.policy_version == policy.policy_version
    assert policy.network is network and decisions(policy) == before
    assert policy.last_verdict == verdict and policy.verdicts == {reason: 1}
    assert policy.load_update(good).accepted  # the live policy still takes a good update afterwards


def test_updates_from_a_policy_with_other_options_are_refused() -> None:
    policy = LearnedPolicy()
    wider = LearnedPolicy(LearnedPolicyOptions(hidden_size=32))
    assert policy.load_update(wider.export_update(policy_version="w")).reason == "architecture_mismatch"
    other_vocabulary = LearnedPolicy(LearnedPolicyOptions(blueprint_vocabulary=512))
    assert policy.load_update(other_vocabulary.export_update(policy_version="v")).reason == "schema_mismatch"


def test_without_a_key_signatures_are_not_required() -> None:
    policy = LearnedPolicy()
    update = policy.export_update(policy_version="unsigned", state_dict=germinating_weights(policy))
    assert not update.signature
    assert policy.load_update(update).accepted


def test_every_rejection_reason_is_documented() -> None:
    doc = DOC.read_text()
    for reason in REJECTION_REASONS:
        assert f"`{reason}`" in doc, reason


def test_a_decision_in_flight_finishes_on_the_old_network() -> None:
    policy = LearnedPolicy()
    old = policy.network
    started, release = threading.Event(), threading.Event()
    forward = old.forward_batch

    def slow_forward(batch: EncodedBatch) -> PolicyOutput:
        started.set()
        assert release.wait(10)
        return forward(batch)

    old.forward_batch = slow_forward  # type: ignore[method-assign]
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(policy.decide(STATES[0], BLUEPRINTS)))
    thread.start()
    assert started.wait(10)
    verdict = policy.load_update(policy.export_update(policy_version="new", state_dict=germinating_weights(policy)))
    assert verdict.accepted and policy.network is not old  # the swap did not wait for the decision
    release.set()
    thread.join(10)
    (command,) = results
    assert command.command_type == CommandType.COMMAND_NOOP  # type: ignore[attr-defined]
    assert command.decision.policy_version.startswith("untrained-")  # type: ignore[attr-defined]
    assert policy.decide(STATES[0], BLUEPRINTS).decision.policy_version == "new"


def test_concurrent_decisions_during_swaps_never_see_a_half_loaded_network() -> None:
    policy = LearnedPolicy()
    updates = [
        policy.export_update(policy_version=f"v{value}", state_dict=germinating_weights(policy, value))
        for value in (1.0, 2.0)
    ]
    expected = {}
    for update in updates:
        assert policy.load_update(update).accepted
        decision = policy.decide(STATES[0], BLUEPRINTS).decision
        expected[decision.policy_version] = (decision.action_index, decision.value_estimate, decision.action_log_prob)
    seen: list[tuple[str, tuple[int, float, float]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def decide() -> None:
        try:
            while not stop.is_set():
                d = policy.decide(STATES[0], BLUEPRINTS).decision
                seen.append((d.policy_version, (d.action_index, d.value_estimate, d.action_log_prob)))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=decide) for _ in range(2)]
    for thread in threads:
        thread.start()
    swaps = 0
    while swaps < 40 or (len({version for version, _ in seen}) < 2 and swaps < 4000):
        assert policy.load_update(updates[swaps % 2], allow_rollback=True).accepted
        swaps += 1
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert len(seen) > 10
    for version, observed in seen:
        assert observed == expected[version], version
    assert {version for version, _ in seen} == {"v1.0", "v2.0"}


def test_the_factory_uses_the_options_the_key_the_catalogs_and_the_initial_update(tmp_path: Path) -> None:
    registry = Registry.create(autoload=False, env={})
    key = SigningKey.generate()
    catalog = CountingCatalog(BLUEPRINTS)
    run = {"catalogs": [catalog]}  # what a run passes every component (the heuristic's factory reads the same)
    policy = build_learned_policy(BuildContext(registry=registry, options=None, signing_key=key, services=run))
    assert isinstance(policy, LearnedPolicy) and policy.signing_key is key
    assert policy.catalogs == (catalog,) and policy.encoder.catalogs == (catalog,)
    # The catalog prices germinations: 4 x 8 x 10 = 320 parameters for the default width of 4 at these slots.
    assert policy.encoder.cost("BP001", SlotShape.of(STATES[0].seeds[0]), {"width": 4.0}) == 320
    path = tmp_path / "start.update"
    save_update(policy.export_update(policy_version="from-file", state_dict=germinating_weights(policy)), path)
    options = LearnedPolicyOptions(initial_update=path, decoding="sample", seed=4, max_added_parameter_fraction=0.2)
    started = build_learned_policy(BuildContext(registry=registry, options=options, signing_key=key, services=run))
    assert started.policy_version == "from-file" and started.options.decoding == "sample"
    assert started.encoder.max_added_parameter_fraction == 0.2
    assert started.decide(STATES[0], BLUEPRINTS).seed_operation.operation == SeedOperation.SEED_OP_GERMINATE
    with pytest.raises(ConfigError, match="invalid_signature"):
        build_learned_policy(
            BuildContext(registry=registry, options=options, signing_key=SigningKey.generate(), services=run)
        )
    missing = LearnedPolicyOptions(initial_update=tmp_path / "nope.update")
    with pytest.raises(ConfigError, match="does not exist"):
        build_learned_policy(BuildContext(registry=registry, options=missing, signing_key=key, services=run))
    (tmp_path / "junk.update").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ConfigError, match="not a serialized Leyline PolicyUpdate"):
        build_learned_policy(
            BuildContext(
                registry=registry, options=LearnedPolicyOptions(initial_update=tmp_path / "junk.update"), services=run
            )
        )


def test_the_factory_prices_with_the_run_catalogs_by_default() -> None:
    """Without catalogs passed in, the factory builds those ``urza.catalogs`` names, as the heuristic's does."""
    registry = Registry.create(env={})
    policy = build_learned_policy(BuildContext(registry=registry, options=None, signing_key=SigningKey.generate()))
    assert [catalog.name for catalog in policy.catalogs] == ["karn"]


def test_untrained_policies_are_identical_everywhere_and_exportable() -> None:
    a, b = LearnedPolicy(), LearnedPolicy()
    assert decisions(a) == decisions(b)
    assert all(index == NOOP for index, *_ in decisions(a))
    update = a.export_update(policy_version="copy")
    assert b.load_update(update).accepted
    for name, tensor in a.network.state_dict().items():
        assert torch.equal(tensor, b.network.state_dict()[name])


def issued(update: PolicyUpdate, seconds: int, key: SigningKey | None = KEY) -> PolicyUpdate:
    """``update`` issued at ``seconds`` after the epoch, signed again (what a producer at that time would send)."""
    update.issued_at.FromSeconds(seconds)
    if key is not None:
        sign_signature_field(key, update)
    return update


def test_an_older_update_replayed_after_a_newer_one_is_refused_and_changes_nothing() -> None:
    policy = LearnedPolicy(signing_key=KEY)
    older = issued(policy.export_update(policy_version="v1", state_dict=germinating_weights(policy, 1.0)), 1_000)
    newer = issued(policy.export_update(policy_version="v2", state_dict=germinating_weights(policy, 2.0)), 2_000)
    assert policy.load_update(older).accepted and policy.load_update(newer).accepted
    before, network = decisions(policy), policy.network
    for replayed in (older, newer):  # an older update, and the live one again
        verdict = policy.load_update(replayed)
        assert (verdict.accepted, verdict.reason, verdict.policy_version) == (False, "stale_update", "v2")
        assert "not after the live update" in verdict.detail and "allow_rollback=True" in verdict.detail
        assert policy.network is network and decisions(policy) == before
    assert policy.verdicts == {"accepted": 2, "stale_update": 2}


def test_an_issue_time_moved_forward_without_the_key_does_not_pass_as_newer() -> None:
    policy = LearnedPolicy(signing_key=KEY)
    older = issued(policy.export_update(policy_version="v1", state_dict=germinating_weights(policy, 1.0)), 1_000)
    newer = issued(policy.export_update(policy_version="v2"), 2_000)
    assert policy.load_update(newer).accepted
    older.issued_at.FromSeconds(3_000)  # dressed up as newer, but the signature covers issued_at
    assert policy.load_update(older).reason == "invalid_signature" and policy.policy_version == "v2"


def test_a_rollback_is_explicit_by_flag_or_by_exporting_the_old_weights_again() -> None:
    policy = LearnedPolicy(signing_key=KEY)
    old_weights = germinating_weights(policy, 1.0)
    older = issued(policy.export_update(policy_version="v1", state_dict=old_weights), 1_000)
    newer = issued(policy.export_update(policy_version="v2", state_dict=germinating_weights(policy, 2.0)), 2_000)
    assert policy.load_update(older).accepted and policy.load_update(newer).accepted
    verdict = policy.load_update(older, allow_rollback=True)
    assert (verdict.accepted, verdict.policy_version) == (True, "v1")
    assert policy.load_update(newer).accepted  # forward again from the rolled-back update's issue time
    again = policy.export_update(policy_version="v1-again", state_dict=old_weights)  # issued now, after 2_000 s
    assert policy.load_update(again).accepted and policy.policy_version == "v1-again"


def test_without_a_key_versions_still_only_move_forward() -> None:
    policy = LearnedPolicy()
    undated = policy.export_update(policy_version="undated")
    undated.ClearField("issued_at")
    assert policy.load_update(undated).accepted  # an untrained policy takes any update
    dated = issued(policy.export_update(policy_version="dated"), 1_000, key=None)
    assert policy.load_update(dated).accepted
    assert policy.load_update(undated).reason == "stale_update"  # no issue time counts as time 0


def test_the_controller_refuses_a_replayed_update_from_the_bus_and_reports_it() -> None:
    from esper_core.oona import MemoryBackend, Oona
    from esper_core.signing import CommandSigner
    from esper_tamiyo.controller import TamiyoController

    bus = Oona(MemoryBackend(), signing_key=KEY)
    bus.subscribe([bus.streams.telemetry])  # before anything is published on it
    policy = LearnedPolicy(signing_key=KEY)
    tamiyo = TamiyoController(policy=policy, blueprints=BLUEPRINTS, signer=CommandSigner(KEY), bus=bus)
    older = issued(policy.export_update(policy_version="v1", state_dict=germinating_weights(policy, 1.0)), 1_000)
    newer = issued(policy.export_update(policy_version="v2", state_dict=germinating_weights(policy, 2.0)), 2_000)
    for update in (older, newer, older):
        bus.publish(update)
    tamiyo.decide(STATES[0])
    assert policy.policy_version == "v2"
    events = [e for m in bus.poll([bus.streams.telemetry], count=10) for e in m.payload.events]  # type: ignore[attr-defined]
    assert [e.name for e in events if e.name.startswith("policy_update")] == [
        "policy_update_applied",
        "policy_update_applied",
        "policy_update_rejected",
    ]
    assert any(e.description.startswith("stale_update:") for e in events)
