"""The risk engine judges a growth proposal's blueprint by its measured safety data sheet at the target slot, falls
back to the declared risk only without one, says which it used, remembers measured quarantines (the controller stops
offering them), and never lets a clean sheet lift a catalog's own quarantine-only."""

from __future__ import annotations

import time
from collections.abc import Sequence

from esper_core.leyline import BSDS, AdaptationCommand, HandlingClass, SeedOperation, SystemStatePacket, lifecycle
from esper_core.protocols import SlotShape
from esper_core.safety import SafetySheetSource
from esper_core.signing import CommandSigner, SigningKey
from esper_tamiyo.commands import seed_command
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.options import TamiyoOptions
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import blueprint, packet, slot

BLUEPRINTS = {
    "BP101": blueprint("BP101", risk=0.1),  # declared safe
    "BP190": blueprint("BP190", risk=0.9),  # declared dangerous
    "BP199": blueprint("BP199", risk=0.1, quarantine=True),  # quarantine-only by its author
    "BP300": blueprint("BP300", risk=0.1),  # no sheet
}


class Sheets:
    """Measured sheets by blueprint, and the slots asked about."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, SlotShape]] = []
        self.sheets = {
            "BP101": BSDS(blueprint_id="BP101", risk_score=0.93, handling_class=HandlingClass.HANDLING_CLASS_QUARANTINE,
                          hazards={"exploding_gradients": "CRITICAL: gradient norm 2.6e8"}),
            "BP190": BSDS(blueprint_id="BP190", risk_score=0.04, handling_class=HandlingClass.HANDLING_CLASS_STANDARD),
            "BP199": BSDS(blueprint_id="BP199", risk_score=0.02, handling_class=HandlingClass.HANDLING_CLASS_STANDARD),
        }  # fmt: skip

    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        self.asked.append((blueprint_id, slot))
        return self.sheets.get(blueprint_id)


def review(engine: RiskEngine, blueprint_id: str) -> tuple[str, str, float, list[str], str]:
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "grow", policy="test", blueprint_id=blueprint_id)
    result = engine.review(proposal, packet(5, 0.5, [slot("a")]), BLUEPRINTS)
    decision = result.command.decision
    rules = [firing.rule for firing in result.fired]
    return decision.risk_reason, decision.blueprint_risk_source, decision.blueprint_risk, rules, decision.rationale


def test_a_measured_quarantine_holds_a_blueprint_its_catalog_calls_safe_and_is_remembered() -> None:
    sheets = Sheets()
    assert isinstance(sheets, SafetySheetSource)
    engine = RiskEngine(sheets=sheets)
    reason, source, risk, rules, rationale = review(engine, "BP101")
    assert (reason, source, risk, rules) == ("bp_quarantine", "measured", 0.93, ["bp_quarantine"])
    assert "BP101 measured risk 0.93; hazards exploding_gradients" in rationale
    assert engine.quarantined == {"BP101"}
    restored = RiskEngine(sheets=sheets)
    restored.load_state_dict(engine.state_dict())
    assert restored.quarantined == {"BP101"}, "a resumed run still does not offer it"
    assert sheets.asked[0] == ("BP101", SlotShape.of(slot("a"))), "asked about the target slot's shape"


def test_a_measured_clean_sheet_outweighs_a_declared_high_risk() -> None:
    reason, source, risk, rules, _ = review(RiskEngine(sheets=Sheets()), "BP190")
    assert (reason, source, risk, rules) == ("policy", "measured", 0.04, [])


def test_a_clean_sheet_never_lifts_the_authors_quarantine_only() -> None:
    reason, source, _, rules, rationale = review(RiskEngine(sheets=Sheets()), "BP199")
    assert (reason, source, rules) == (
        "bp_quarantine",
        "measured",
        ["bp_quarantine"],
    ) and "quarantine-only" in rationale


def test_without_a_sheet_the_declared_risk_decides_and_says_so() -> None:
    assert review(RiskEngine(sheets=Sheets()), "BP300")[:4] == ("policy", "declared", 0.1, [])
    reason, source, risk, rules, rationale = review(RiskEngine(), "BP190")
    assert (reason, source, risk, rules) == ("bp_quarantine", "declared", 0.9, ["bp_quarantine"])
    assert "BP190 declared risk 0.90" in rationale


class SlowSheets(Sheets):
    """Every answer takes 80 ms, as a first-use rating does."""

    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        time.sleep(0.08)
        return super().safety_sheet(blueprint_id, slot)


def test_rating_on_first_use_is_not_counted_against_the_decision_budget() -> None:
    proposal = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "grow", policy="test", blueprint_id="BP190")

    class Grows:
        name = "grows"

        def decide(self, state: SystemStatePacket, blueprints: Sequence[object]) -> AdaptationCommand:
            return proposal

    tamiyo = TamiyoController(
        policy=Grows(), blueprints=list(BLUEPRINTS.values()), signer=CommandSigner(SigningKey.generate()),
        options=TamiyoOptions(decision_budget_ms=50.0), risk=RiskEngine(sheets=SlowSheets()),
    )  # fmt: skip
    first = tamiyo.decide(packet(5, 0.5, [slot("a")]))
    second = tamiyo.decide(packet(6, 0.5, [slot("a")]))
    assert first.decision.decision_latency_ms >= 80, "the latency reported is the whole decision's"
    assert "timeout_inference" not in second.decision.risk_rules_fired, "but the rating is not the policy's time"
    assert operation_of(second) == "germinate"


def operation_of(command: AdaptationCommand) -> str:
    return lifecycle.command_name(command)
