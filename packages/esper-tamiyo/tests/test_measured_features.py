"""The policies see what Urabrask measured: the controller fills each slot's ``measured_blueprints`` from the sheets
already known (never rating one for it), says what it filled in the command so that the record gives back the packet
the policy saw, and keeps a resumed run's view the same; the heuristic scores a blueprint by its measured risk and
latency where a sheet exists; the learned encoder's pair features carry them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import (
    BSDS,
    AdaptationCommand,
    BlueprintDescriptor,
    CommandType,
    HandlingClass,
    HazardBand,
    MeasuredBlueprint,
    PolicyUpdate,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    lifecycle,
)
from esper_core.leyline.annotations import MEASURED_BLUEPRINTS, as_decided, mark_quarantined
from esper_core.protocols import SlotShape
from esper_core.safety import SafetySheetSource, StoredSheetSource
from esper_core.signing import CommandSigner, SigningKey
from esper_tamiyo.commands import noop, seed_command
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.learned import FeatureEncoder, LearnedPolicy
from esper_tamiyo.learned.schema import GLOBAL_FEATURES, PAIR_DIM, PAIR_FEATURES
from esper_tamiyo.learned.updates import SCHEMA_MISMATCH
from esper_tamiyo.options import HeuristicOptions
from esper_tamiyo.policies.heuristic import HeuristicPolicy
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import VECTOR, CountingCatalog, blueprint, packet, slot

BLUEPRINTS = [blueprint("BP101", risk=0.1), blueprint("BP102", risk=0.7), blueprint("BP103", risk=0.3)]


def sheet(blueprint_id: str, risk: float, slowdown: float | None = 2.0, flops: float = 5e4) -> BSDS:
    measured = BSDS(
        blueprint_id=blueprint_id,
        risk_score=risk,
        hazard_band=HazardBand.HAZARD_BAND_LOW,
        handling_class=HandlingClass.HANDLING_CLASS_STANDARD,
    )
    measured.measurements["cost.flops_per_sample"] = flops
    if slowdown is not None:
        measured.measurements["timing.slowdown"] = slowdown
    return measured


class Store:
    """A run's artifact store: sheets already stored by (blueprint, slot shape); rates on first use (counted)."""

    def __init__(self, stored: dict[tuple[str, SlotShape], BSDS], rated: dict[str, BSDS] | None = None) -> None:
        self.stored = dict(stored)
        self.rated = dict(rated or {})
        self.ratings: list[tuple[str, SlotShape]] = []
        self.reads = 0

    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        found = self.stored.get((blueprint_id, slot))
        if found is None and blueprint_id in self.rated:
            self.ratings.append((blueprint_id, slot))
            found = self.stored[(blueprint_id, slot)] = self.rated[blueprint_id]
        return found

    def stored_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        self.reads += 1
        return self.stored.get((blueprint_id, slot))


class Watching:
    """Proposes ``proposal`` (a no-op by default) and keeps every packet it was given."""

    name = "watching"

    def __init__(self, proposal: AdaptationCommand | None = None) -> None:
        self.proposal = proposal
        self.seen: list[SystemStatePacket] = []

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        copy = SystemStatePacket()
        copy.CopyFrom(state)
        self.seen.append(copy)
        if self.proposal is None:
            return noop("watching", self.name)
        command = AdaptationCommand()
        command.CopyFrom(self.proposal)
        return command


A, B = slot("a"), slot("b", kind=VECTOR, shape=[64])
SHAPE_A = SlotShape.of(A)


def controller(policy: Watching, store: Store) -> TamiyoController:
    return TamiyoController(
        policy=policy, blueprints=BLUEPRINTS, signer=CommandSigner(SigningKey.generate()), risk=RiskEngine(sheets=store)
    )


def test_the_controller_fills_what_is_stored_for_the_offered_blueprints_and_rates_nothing() -> None:
    stored = {("BP101", SHAPE_A): sheet("BP101", 0.9, 3.0), ("BP102", SHAPE_A): sheet("BP102", 0.02, None)}
    store = Store(stored, rated={"BP103": sheet("BP103", 0.05)})  # BP103 could be rated, were anyone to ask
    assert isinstance(store, SafetySheetSource) and isinstance(store, StoredSheetSource)
    policy = Watching()
    tamiyo = controller(policy, store)
    state = packet(5, 0.5, [A, B])
    command = tamiyo.decide(state)
    [seen] = policy.seen
    listed = {s.slot_id: [(m.blueprint_id, m.risk_score) for m in s.measured_blueprints] for s in seen.seeds}
    assert listed == {"a": [("BP101", 0.9), ("BP102", 0.02)], "b": []}, "BP103 has no sheet; slot b none"
    first = seen.seeds[0].measured_blueprints[0]
    assert (first.latency_ratio, first.flops_per_sample, first.hazard_band) == (3.0, 5e4, HazardBand.HAZARD_BAND_LOW)
    assert not seen.seeds[0].measured_blueprints[1].HasField("latency_ratio"), "not timed: absent, not 0"
    assert store.ratings == [], "nothing is rated to fill the packet"
    assert not any(s.measured_blueprints for s in state.seeds), "Tolaria's packet is left as it was"
    # The record keeps Tolaria's packet and the command: together they give back exactly what the policy saw.
    assert MEASURED_BLUEPRINTS in command.annotations
    assert as_decided(state, command) == seen
    # Sheets are kept in memory: the next decision point reads nothing from the store.
    reads = store.reads
    tamiyo.decide(packet(6, 0.5, [A, B]))
    assert store.reads == reads and policy.seen[1].seeds[0].measured_blueprints == seen.seeds[0].measured_blueprints


def test_without_any_sheet_the_packet_is_passed_as_it_is_and_the_command_says_nothing() -> None:
    policy = Watching()
    state = packet(5, 0.5, [A])
    command = controller(policy, Store({})).decide(state)
    assert policy.seen == [state] and MEASURED_BLUEPRINTS not in command.annotations
    assert as_decided(state, command) is state


def test_a_blueprint_the_run_quarantined_is_not_listed() -> None:
    policy = Watching()
    state = packet(5, 0.5, [A])
    mark_quarantined(state, {"BP101": 3})
    controller(policy, Store({("BP101", SHAPE_A): sheet("BP101", 0.1)})).decide(state)
    assert not policy.seen[0].seeds[0].measured_blueprints


def test_a_sheet_the_risk_engine_rates_is_shown_from_the_next_decision_point_and_a_resumed_run_sees_the_same() -> None:
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "grow", policy="watching", blueprint_id="BP103")
    store = Store({}, rated={"BP103": sheet("BP103", 0.05, 1.5)})
    policy = Watching()
    tamiyo = controller(policy, store)
    tamiyo.decide(packet(5, 0.5, [A]))  # nothing stored: nothing shown
    checkpoint = tamiyo.state_dict()
    policy.proposal = proposal
    tamiyo.decide(packet(6, 0.5, [A]))
    assert store.ratings == [("BP103", SHAPE_A)], "rated on first use, by the risk engine"
    policy.proposal = None
    tamiyo.decide(packet(7, 0.5, [A]))
    shown = [[m.blueprint_id for m in seen.seeds[0].measured_blueprints] for seen in policy.seen]
    assert shown == [[], [], ["BP103"]]
    # A sheet stored meanwhile by someone else is not shown: the run's view depends on its own history only.
    store.stored[("BP101", SHAPE_A)] = sheet("BP101", 0.2)
    tamiyo.decide(packet(8, 0.5, [A]))
    assert [m.blueprint_id for m in policy.seen[3].seeds[0].measured_blueprints] == ["BP103"]
    # Killed after epoch 7 and resumed from the checkpoint of epoch 5: BP103's sheet is stored by now, yet epoch 6
    # sees what it saw the first time; the proposal is judged by the stored sheet (no new rating) and shown after.
    resumed_policy = Watching(proposal)
    resumed = controller(resumed_policy, store)
    resumed.load_state_dict(checkpoint)
    resumed.decide(packet(6, 0.5, [A]))
    resumed_policy.proposal = None
    resumed.decide(packet(7, 0.5, [A]))
    assert [list(seen.seeds) for seen in resumed_policy.seen] == [list(seen.seeds) for seen in policy.seen[1:3]]
    assert store.ratings == [("BP103", SHAPE_A)]
    # A fresh run asks the store first: everything stored is shown.
    fresh_policy = Watching()
    controller(fresh_policy, store).decide(packet(1, 0.5, [A]))
    assert [m.blueprint_id for m in fresh_policy.seen[0].seeds[0].measured_blueprints] == ["BP101", "BP103"]


def test_a_store_that_raises_costs_the_features_not_the_decision() -> None:
    class Broken(Store):
        def stored_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
            raise OSError("disk gone")

    policy = Watching()
    command = controller(policy, Broken({})).decide(packet(5, 0.5, [A]))
    assert command.command_type == CommandType.COMMAND_NOOP and not policy.seen[0].seeds[0].measured_blueprints


# -- the heuristic --------------------------------------------------------------------------------------------


def measured(blueprint_id: str, risk: float, latency: float | None = None) -> MeasuredBlueprint:
    entry = MeasuredBlueprint(blueprint_id=blueprint_id, risk_score=risk)
    if latency is not None:
        entry.latency_ratio = latency
    return entry


# Declared: BP110 safe, BP120 risky. Measured at the slot: the other way round.
MISLABELLED = [blueprint("BP110", risk=0.1), blueprint("BP120", risk=0.7)]


def germinate(p: HeuristicPolicy, seed: SeedState) -> AdaptationCommand:
    """The command at the first plateau (epoch 3)."""
    commands = [p.decide(packet(epoch, loss, [seed]), MISLABELLED) for epoch, loss in enumerate([1.0, 0.9, 0.9, 0.9])]
    assert commands[-1].seed_operation.operation == SeedOperation.SEED_OP_GERMINATE, commands[-1].decision.rationale
    return commands[-1]


def heuristic(**options: object) -> HeuristicPolicy:
    return HeuristicPolicy(HeuristicOptions(**options), catalogs=[CountingCatalog(MISLABELLED)])  # type: ignore[arg-type]


def test_the_heuristic_prefers_the_blueprint_measured_safe_over_the_one_declared_safe() -> None:
    declared = germinate(heuristic(), slot("a"))
    assert declared.seed_operation.blueprint_id == "BP110"
    assert "declared risk 0.100" in declared.decision.rationale
    sheets = slot("a", measured_blueprints=[measured("BP110", 0.9), measured("BP120", 0.05)])
    chosen = germinate(heuristic(), sheets)
    assert chosen.seed_operation.blueprint_id == "BP120"
    assert "measured risk 0.050" in chosen.decision.rationale
    # Only where a sheet exists: with BP110's sheet alone, BP120 is judged by its declared 0.7 (still below 0.9).
    partly = germinate(heuristic(), slot("a", measured_blueprints=[measured("BP110", 0.9)]))
    assert partly.seed_operation.blueprint_id == "BP120" and "declared risk 0.700" in partly.decision.rationale


def test_the_heuristic_weighs_the_measured_latency() -> None:
    # Equal measured risks; BP110 is 50 times a plain layer's step, BP120 1.5 times.
    seed = slot("a", measured_blueprints=[measured("BP110", 0.05, 50.0), measured("BP120", 0.05, 1.5)])
    chosen = germinate(heuristic(), seed)
    assert chosen.seed_operation.blueprint_id == "BP120"
    assert "measured risk 0.050, 1.5x a plain layer's step" in chosen.decision.rationale
    ranked = heuristic().rank_blueprints(seed, MISLABELLED, budget=100_000)
    gap = {c.descriptor.blueprint_id: c.score for c in ranked}
    assert gap["BP120"] - gap["BP110"] == pytest.approx(0.1 * (torch.log(torch.tensor(50 / 1.5)).item()), abs=1e-5)
    ignored = germinate(heuristic(measured_cost_weight=0.0), seed)
    assert ignored.seed_operation.blueprint_id == "BP110", "weight 0: catalog order decides the tie"


# -- the learned policy's features ----------------------------------------------------------------------------


def test_the_encoder_writes_the_pair_features_of_listed_offered_blueprints_only() -> None:
    offered = [blueprint("BP101", risk=0.1), blueprint("BP102", risk=0.7)]
    a = slot("a", measured_blueprints=[measured("BP102", 0.25, 10.0), measured("BP999", 0.5, 2.0)])
    a.measured_blueprints[0].flops_per_sample = 1e6
    state = packet(5, 0.5, [a, slot("b")])
    encoded = FeatureEncoder().encode(state, offered)
    assert tuple(encoded.pair_features.shape) == (2, 2, PAIR_DIM)
    names = [feature.name for feature in PAIR_FEATURES]
    row = dict(zip(names, encoded.pair_features[0, 1].tolist(), strict=True))
    assert row["measured"] == 1.0 and row["measured_risk"] == pytest.approx(0.25)
    assert row["latency_ratio"] == pytest.approx(1.0) and row["latency_ratio.present"] == 1.0  # log10(10)
    assert row["flops"] == pytest.approx(torch.log1p(torch.tensor(1e6, dtype=torch.float64)).item() / 20, rel=1e-5)
    assert row["flops.present"] == 1.0
    assert encoded.pair_features[0, 0].abs().sum() == 0, "BP101 has no sheet at a"
    assert encoded.pair_features[1].abs().sum() == 0, "b lists nothing; BP999 is not offered"
    untimed = packet(5, 0.5, [slot("a", measured_blueprints=[measured("BP102", 0.25)]), slot("b")])
    row = dict(zip(names, FeatureEncoder().encode(untimed, offered).pair_features[0, 1].tolist(), strict=True))
    assert (row["measured"], row["latency_ratio"], row["latency_ratio.present"]) == (1.0, 0.0, 0.0)
    assert encoded.digest() != FeatureEncoder().encode(packet(5, 0.5, [slot("a"), slot("b")]), offered).digest()


def test_an_untrained_network_ignores_the_pair_features_and_a_trained_one_can_read_them() -> None:
    offered = [blueprint("BP101", risk=0.1), blueprint("BP102", risk=0.7)]
    policy = LearnedPolicy()
    plain = policy.encode(packet(5, 0.5, [slot("a")]), offered)
    sheets = policy.encode(packet(5, 0.5, [slot("a", measured_blueprints=[measured("BP102", 0.9, 20.0)])]), offered)
    network = policy.clone_network()
    logits = {
        name: network.forward_batch(policy.collate([encoded])).blueprint_logits.detach()
        for name, encoded in (("plain", plain), ("sheets", sheets))
    }
    assert torch.equal(logits["plain"], logits["sheets"])
    with torch.no_grad():
        network.pair_weight[1] = -3.0  # measured risk lowers a blueprint's logit
    moved = network.forward_batch(policy.collate([sheets])).blueprint_logits.detach()
    assert moved[0, 0, 1] == pytest.approx(logits["sheets"][0, 0, 1].item() - 2.7, abs=1e-5)
    assert moved[0, 0, 0] == logits["sheets"][0, 0, 0]


def test_a_policy_published_for_the_previous_schema_is_refused_with_both_digests() -> None:
    policy = LearnedPolicy()
    old = "f90f447a78d9dd8c3e79545de066bfd1617de085caee8bfcc3a81df4836a9f40"  # feature schema version 2
    update = PolicyUpdate(
        policy_name="learned", feature_schema_digest=old, architecture_digest=policy.architecture_digest
    )
    verdict = policy.load_update(update)
    assert not verdict.accepted and verdict.reason == SCHEMA_MISMATCH
    assert old[:16] in verdict.detail and policy.feature_schema_digest[:16] in verdict.detail
    assert "version 3" in verdict.detail


def test_the_stage_of_a_slot_does_not_matter_to_what_is_filled() -> None:
    """Slots with a seed are filled too: the summaries describe the slot's shape, not its seed."""
    busy = slot("a", lifecycle.TRAINING)
    policy = Watching()
    controller(policy, Store({("BP101", SlotShape.of(busy)): sheet("BP101", 0.1)})).decide(packet(5, 0.5, [busy]))
    assert [m.blueprint_id for m in policy.seen[0].seeds[0].measured_blueprints] == ["BP101"]


@settings(max_examples=60, deadline=None)
@given(
    risk=st.floats(allow_nan=True, allow_infinity=True),
    latency=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    flops=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_any_measurement_encodes_to_finite_bounded_pair_features(
    risk: float, latency: float | None, flops: float | None
) -> None:
    entry = measured("BP101", risk, latency)
    if flops is not None:
        entry.flops_per_sample = flops
    encoded = FeatureEncoder().encode(packet(5, 0.5, [slot("a", measured_blueprints=[entry])]), BLUEPRINTS)
    pair = encoded.pair_features
    assert bool(torch.isfinite(pair).all()) and float(pair.abs().max()) <= 10.0
    assert float(pair[0, 0, 0]) == 1.0
    unreadable = [value for value in (risk, latency, flops) if value is not None and not math.isfinite(value)]
    nonfinite = dict(zip([f.name for f in GLOBAL_FEATURES], encoded.global_features.tolist(), strict=True))
    assert nonfinite["nonfinite_inputs"] == pytest.approx(math.log1p(len(unreadable)), rel=1e-6)
