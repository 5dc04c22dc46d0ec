"""The controller and plugin failures: a policy's exception is kept, traceback and all, for Tolaria to write down
(besides the annotated no-op); a blueprint the run quarantined is neither offered nor proposed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from esper_core.leyline import AdaptationCommand, BlueprintDescriptor, CommandType, SeedOperation, SystemStatePacket
from esper_core.leyline.annotations import (
    OFFERED_BLUEPRINTS,
    POLICY_ERROR,
    mark_quarantined,
    parse_policy_error,
)
from esper_core.plugin_failures import Blame, PluginFailureSource, blame
from esper_core.signing import CommandSigner, SigningKey
from esper_tamiyo.commands import seed_command
from esper_tamiyo.controller import TamiyoController

from tamiyo_scenarios import CONV, VECTOR, blueprint, packet, slot

BLUEPRINTS = [blueprint("BP101", kinds=[CONV, VECTOR, 3]), blueprint("BP102", kinds=[CONV, VECTOR, 3])]


class Policy:
    """Raises ``error`` or proposes a germination of ``proposes``; remembers what it was offered."""

    name = "flaky"

    def __init__(self, error: Exception | None = None, proposes: str = "BP101") -> None:
        self.error, self.proposes = error, proposes
        self.offered: list[str] = []

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        self.offered = [descriptor.blueprint_id for descriptor in blueprints]
        if self.error is not None:
            raise self.error
        return seed_command(
            SeedOperation.SEED_OP_GERMINATE, "a", "scheduled", policy=self.name, blueprint_id=self.proposes
        )


def controller(policy: Any) -> TamiyoController:
    return TamiyoController(policy=policy, blueprints=BLUEPRINTS, signer=CommandSigner(SigningKey.generate()))


def test_a_policy_that_raises_is_kept_with_its_traceback_for_tolaria() -> None:
    tamiyo = controller(Policy(KeyError("weights.pt")))
    assert isinstance(tamiyo, PluginFailureSource)
    command = tamiyo.decide(packet(4, 0.5, [slot("a")]))
    assert command.command_type == CommandType.COMMAND_NOOP
    assert parse_policy_error(command.annotations[POLICY_ERROR]) == ("flaky", "KeyError", "'weights.pt'")
    (failure,) = tamiyo.drain_plugin_failures()
    assert (failure.kind, failure.name, failure.during, failure.error_type) == ("policy", "flaky", "decide", "KeyError")
    assert failure.module == __name__
    assert "Traceback (most recent call last)" in failure.traceback and "raise self.error" in failure.traceback
    assert tamiyo.drain_plugin_failures() == []


def test_an_exception_a_catalog_raised_inside_the_policy_is_blamed_on_the_catalog() -> None:
    error = RuntimeError("parameter_count broke")
    blame(error, Blame("blueprint catalog", "acme", "parameter_count", subject="BP101"))
    tamiyo = controller(Policy(error))
    tamiyo.decide(packet(4, 0.5, [slot("a")]))
    (failure,) = tamiyo.drain_plugin_failures()
    assert (failure.kind, failure.name, failure.during, failure.subject) == (
        "blueprint catalog", "acme", "parameter_count", "BP101",
    )  # fmt: skip


def test_a_quarantined_blueprint_is_not_offered_and_a_proposal_of_it_is_held_back() -> None:
    policy = Policy(proposes="BP101")
    tamiyo = controller(policy)
    state = packet(4, 0.5, [slot("a")])
    mark_quarantined(state, {"BP101": 3})
    command = tamiyo.decide(state)
    assert policy.offered == ["BP102"]
    assert json.loads(command.annotations[OFFERED_BLUEPRINTS]) == ["BP102"]
    assert command.command_type == CommandType.COMMAND_NOOP
    assert "BP101 is quarantined for this run" in command.decision.rationale
    policy.proposes = "BP102"
    allowed = tamiyo.decide(state)
    assert allowed.command_type == CommandType.COMMAND_SEED and allowed.seed_operation.blueprint_id == "BP102"
    assert tamiyo.drain_plugin_failures() == []
