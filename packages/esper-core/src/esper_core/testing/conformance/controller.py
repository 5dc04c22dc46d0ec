"""Every controller returns commands the executor will accept: valid, verifiable, aimed at a real slot.

Subclass :class:`ControllerConformance` and provide ``controller`` (a fresh controller), ``blueprints`` (the
descriptors it may offer) and ``controller_key`` (the signing key it signs with) fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import BlueprintDescriptor
from esper_core.protocols import Controller
from esper_core.signing import CommandVerifier, SigningKey
from esper_core.testing.conformance.policy import check_command
from esper_core.testing.conformance.properties import SHARED_ACROSS_SUBCLASSES
from esper_core.testing.strategies import state_packets


class ControllerConformance:
    def test_controller_satisfies_the_protocol(self, controller: Controller) -> None:
        assert isinstance(controller, Controller)

    @settings(max_examples=40, deadline=None, suppress_health_check=SHARED_ACROSS_SUBCLASSES)
    @given(data=st.data())
    def test_commands_are_signed_fresh_and_valid(
        self,
        controller: Controller,
        blueprints: Sequence[BlueprintDescriptor],
        controller_key: SigningKey,
        data: st.DataObject,
    ) -> None:
        verifier = CommandVerifier(controller_key)
        ids = [descriptor.blueprint_id for descriptor in blueprints] or ["BP001"]
        for _ in range(3):
            state = data.draw(state_packets(blueprint_ids=ids))
            command = controller.decide(state)
            verdict = verifier.verify(command)
            assert verdict.accepted, f"the executor would refuse the command: {verdict.reason_name} ({verdict.detail})"
            check_command(command, state, blueprints)

    def test_state_survives_a_checkpoint(self, controller: Controller) -> None:
        state = controller.state_dict()
        controller.load_state_dict(state)
        assert controller.state_dict().keys() == state.keys()
