"""Tamiyo judges a blueprint by what Urabrask measured, not by what its catalog declared. A third-party blueprint
declared SAFE that explodes its gradients is rated on first use in a real run, quarantined and never germinated; the
decision says the risk was measured, and the policy is never offered it again. Karn's blueprints grow as before,
with measured risk; without rating, the run falls back to the declared risk and says so. The policy sees the sheets
the run knows, and the run record gives back exactly the packet it saw, which Simic re-encodes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.leyline import (
    BSDS,
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintTier,
    SlotKind,
    SystemStatePacket,
)
from esper_core.leyline.annotations import MEASURED_BLUEPRINTS, OFFERED_BLUEPRINTS, as_decided
from esper_core.plugins import BlueprintCatalogSpec, PolicySpec, Registry
from esper_core.protocols import SlotShape
from esper_core.signing import CommandSigner, SigningKey
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import decode_message, encode_message, read_record
from esper_core.tolaria.trainer import Trainer
from esper_simic.experience import episode_from_run
from esper_simic.replay import Episode
from esper_simic.trainer import UnusableEpisode, prepare
from esper_tamiyo.commands import noop
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.learned import LearnedPolicy
from esper_tamiyo.options import HeuristicOptions
from esper_tamiyo.policies.heuristic import HeuristicPolicy
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import blueprint, packet, slot
from tolaria_runs import BASE

pytestmark = pytest.mark.slow

RUN = [*BASE, "run.epochs=8", "nissa.report.automatic=false", "tamiyo.policy=heuristic",
       "tamiyo.heuristic.min_remaining_epochs=2", "tamiyo.heuristic.plateau_threshold=1.0"]  # fmt: skip


class Amplifier(nn.Module):
    """Looks like a residual MLP seed (zero-started output layer), but each hidden layer multiplies by 30: under
    training its gradients explode. Its catalog calls it SAFE."""

    def __init__(self, width: int, hidden: int = 4) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = 30.0 * layer(x)
        output: torch.Tensor = self.out(x)
        return output


class MislabelledCatalog:
    name = "acme"

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id="AC001", name="amplifier", tier=BlueprintTier.BLUEPRINT_TIER_SAFE, risk=0.05,
                slot_kinds=[SlotKind.SLOT_KIND_VECTOR], catalog="acme",
            )
        ]  # fmt: skip

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id != "AC001":
            raise KeyError(blueprint_id)
        return Amplifier(slot.shape[-1])

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        width, hidden = slot.shape[-1], 4
        return (width * hidden + hidden) + 2 * (hidden * hidden + hidden) + (hidden * width + width)


class AcmePlugin:
    @hookimpl
    def esper_urza_blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
        return [BlueprintCatalogSpec(name="acme", factory=lambda context: MislabelledCatalog())]


class Watching:
    """The heuristic, keeping every packet it was given (what the policy saw)."""

    name = "watching"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[SystemStatePacket] = []

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        copy = SystemStatePacket()
        copy.CopyFrom(state)
        self.seen.append(copy)
        command: AdaptationCommand = self.inner.decide(state, blueprints)
        return command


WATCHING: list[Watching] = []


def watching(context: Any) -> Watching:
    options = HeuristicOptions(min_remaining_epochs=2, plateau_threshold=1.0)
    WATCHING.append(Watching(HeuristicPolicy(options, catalogs=context.blueprint_catalogs())))
    return WATCHING[-1]


class WatchingPlugin:
    @hookimpl
    def esper_tamiyo_policies(self) -> list[PolicySpec]:
        return [PolicySpec(name="watching", factory=watching)]


def run(tmp_path: Path, name: str, *settings: str, acme: bool = False, watch: bool = False) -> Path:
    registry = Registry.create(env={})
    if acme:
        registry.pm.register(AcmePlugin(), name="acme")
    if watch:
        registry.pm.register(WatchingPlugin(), name="watching")
    config = registry.load_config(env={}, overrides=[*RUN, f"run.runs_dir={tmp_path}", f"run.name={name}", *settings])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return tmp_path / name


def commands(run_dir: Path) -> list[tuple[dict[str, Any], AdaptationCommand]]:
    return [
        (entry, decode_message(entry["command"], AdaptationCommand))
        for entry in read_record(run_dir)
        if entry["kind"] == "decision"
    ]


def growth_commands(run_dir: Path) -> list[tuple[dict[str, Any], AdaptationCommand]]:
    """The decisions on a growth proposal (germinations, and proposals the risk engine held back)."""
    return [(entry, command) for entry, command in commands(run_dir) if command.decision.blueprint_risk_source]


def test_a_mislabelled_safe_blueprint_is_measured_quarantined_and_never_offered_again(tmp_path: Path) -> None:
    run_dir = run(tmp_path, "acme", 'urza.catalogs=["acme"]', acme=True)
    [(entry, command)] = growth_commands(run_dir)  # proposed once: measured on first use, held back
    assert entry["operation"] == "noop" and entry["rules"] == ["bp_quarantine"], entry
    assert command.decision.blueprint_risk_source == "measured" and command.decision.blueprint_risk >= 0.85
    assert "AC001 measured risk" in command.decision.rationale and "exploding_gradients" in command.decision.rationale
    later = [c for e, c in commands(run_dir) if e["epoch"] > entry["epoch"]]
    assert later and all(c.annotations[OFFERED_BLUEPRINTS] == "[]" for c in later), "never offered to the policy again"
    assert not any(e["kind"] == "transition" for e in read_record(run_dir)), "nothing was germinated"
    assert len(list((run_dir / "urza" / "sheets").glob("*.bsds"))) == 1, "rated once, at its slot, and stored"
    # The risk engine's pause is raised on the emergency ladder (NOTICE: recorded), at the same decision point.
    [notice] = [e for e in read_record(run_dir) if e["kind"] == "emergency"]
    assert (notice["epoch"], notice["level"], notice["origin"]) == (entry["epoch"], "NOTICE", "tamiyo")
    assert "bp_quarantine" in notice["reason"] and notice["response"] == "recorded"


def test_karn_grows_judged_by_measured_risk_and_declared_risk_is_the_fallback(tmp_path: Path) -> None:
    measured = growth_commands(run(tmp_path, "measured"))
    assert any(entry["operation"] == "germinate" for entry, _ in measured)
    assert {command.decision.blueprint_risk_source for _, command in measured} == {"measured"}
    declared = growth_commands(run(tmp_path, "declared", "urza.urabrask.rate_on_first_use=false"))
    assert any(entry["operation"] == "germinate" for entry, _ in declared)
    assert {command.decision.blueprint_risk_source for _, command in declared} == {"declared"}
    assert not (tmp_path / "declared" / "urza" / "sheets").exists()


def test_the_record_gives_back_the_packet_the_policy_saw_and_simic_re_encodes_it(tmp_path: Path) -> None:
    run_dir = run(tmp_path, "watched", "tamiyo.policy=watching", watch=True)
    seen = WATCHING[-1].seen
    decisions = [(e, c) for e, c in commands(run_dir)]
    assert len(seen) == len(decisions) >= 8
    recorded = [decode_message(entry["packet"], SystemStatePacket) for entry, _ in decisions]
    # The record keeps Tolaria's packet; with the command's annotation it is exactly what the policy saw.
    assert [as_decided(state, command) for state, (_, command) in zip(recorded, decisions, strict=True)] == seen
    filled = [i for i, state in enumerate(seen) if any(s.measured_blueprints for s in state.seeds)]
    assert filled, "the blueprint germinated first was rated: later decision points list its sheet"
    assert all(MEASURED_BLUEPRINTS in decisions[i][1].annotations for i in filled)
    assert not any(s.measured_blueprints for state in recorded for s in state.seeds), "Tolaria's packets have none"
    # Simic's episode of the run re-encodes the packets the policy saw, pair features included.
    policy = LearnedPolicy()
    registry = Registry.create(env={})
    karn = registry.build(registry.blueprint_catalog("karn"))
    catalog = {descriptor.blueprint_id: descriptor for descriptor in karn.descriptors()}
    experience = episode_from_run(run_dir, policy.feature_schema_digest)
    prepared = prepare(experience.episode, policy, catalog)
    offered = [[catalog[i] for i in json.loads(c.annotations[OFFERED_BLUEPRINTS])] for _, c in decisions]
    live = [policy.encode(state, blueprints) for state, blueprints in zip(seen, offered, strict=True)]
    assert [step.encoded.digest() for step in prepared.steps] == [encoded.digest() for encoded in live]
    assert any(bool(live[i].pair_features.abs().sum() > 0) for i in filled)
    raw = policy.encode(recorded[filled[0]], offered[filled[0]])
    assert raw.digest() != live[filled[0]].digest(), "without the annotation the features would be lost"


# -- the same, decision point by decision point, without a run ---------------------------------------------

SCENARIO_BLUEPRINTS = [blueprint("BP101", risk=0.1), blueprint("BP102", risk=0.7)]
SLOT_A = slot("a")


class Stored:
    """A store that has BP102's sheet, at every slot."""

    def safety_sheet(self, blueprint_id: str, shape: SlotShape) -> BSDS | None:
        return self.stored_sheet(blueprint_id, shape)

    def stored_sheet(self, blueprint_id: str, shape: SlotShape) -> BSDS | None:
        if blueprint_id != "BP102":
            return None
        sheet = BSDS(blueprint_id=blueprint_id, risk_score=0.03)
        sheet.measurements["timing.slowdown"] = 4.0
        return sheet


class WatchingNoop:
    """Waits, keeping every packet it was given."""

    name = "watching"

    def __init__(self) -> None:
        self.seen: list[SystemStatePacket] = []

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        copy = SystemStatePacket()
        copy.CopyFrom(state)
        self.seen.append(copy)
        return noop("watching", self.name)


def recorded_episode() -> tuple[Episode, list[SystemStatePacket]]:
    """Two decision points as Tolaria records them: its own packet and the signed command."""
    policy = WatchingNoop()
    tamiyo = TamiyoController(
        policy=policy,
        blueprints=SCENARIO_BLUEPRINTS,
        signer=CommandSigner(SigningKey.generate()),
        risk=RiskEngine(sheets=Stored()),
    )
    steps = []
    for epoch in (3, 4):
        state = packet(epoch, 0.5, [SLOT_A])
        command = tamiyo.decide(state)
        steps.append(
            {"epoch": epoch, "packet": encode_message(state), "command": encode_message(command), "reward": 0.0}
        )
    return Episode("run", "digest", tuple(steps)), policy.seen


def test_the_episode_re_encodes_the_packet_the_policy_saw() -> None:
    episode, seen = recorded_episode()
    learned = LearnedPolicy()
    prepared = prepare(episode, learned, {d.blueprint_id: d for d in SCENARIO_BLUEPRINTS})
    live = [learned.encode(state, SCENARIO_BLUEPRINTS) for state in seen]
    assert [step.encoded.digest() for step in prepared.steps] == [encoded.digest() for encoded in live]
    assert all(float(step.encoded.pair_features[0, 1, 0]) == 1.0 for step in prepared.steps), "BP102 measured at a"


def test_a_step_whose_measured_blueprints_do_not_parse_is_refused_with_where() -> None:
    episode, _ = recorded_episode()
    step = dict(episode.steps[1])
    command = decode_message(step["command"], AdaptationCommand)
    command.annotations[MEASURED_BLUEPRINTS] = '[{"slots": ["nowhere"], "measured": []}]'
    step["command"] = encode_message(command)
    broken = Episode("run", "digest", (episode.steps[0], step))
    with pytest.raises(UnusableEpisode, match=r"decision point 1 .*slots the packet does not have: \['nowhere'\]"):
        prepare(broken, LearnedPolicy(), {d.blueprint_id: d for d in SCENARIO_BLUEPRINTS})
