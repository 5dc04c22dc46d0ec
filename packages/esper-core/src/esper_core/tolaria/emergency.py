"""The emergency ladder: how a run responds when something goes wrong, one level at a time (L1-L4).

Anything may raise an ``EmergencySignal``: Tolaria itself (a rollback, conservative mode after failed decisions),
Kasmina's measurements (a new isolation violation in the state packet), Tamiyo's risk engine, Nissa's alerts, or an
operator, on Oona's emergency stream. Tolaria reads the signals meant for its run (its ``training_run_id``, or none)
at its decision points, records each one with its cause and the response, and responds by level:

==================  ==============================================================================================
level               response
==================  ==============================================================================================
NOTICE (L1)         recorded and published; nothing else changes
ELEVATED (L2)       every seed in flight is paused (Kasmina's ``COMMAND_PAUSE``), and the controller is not
                    consulted for ``tolaria.conservative_for`` decision points; after ``calm_after`` decision points
                    without a new emergency the seeds it paused are resumed
CONSERVATIVE (L3)   every seed that is not fossilized is removed at once (``COMMAND_EMERGENCY``), and the controller
                    is not consulted for ``tolaria.conservative_for`` decision points
HALT (L4)           the run finishes the decision point, writes its checkpoint and stops with one line that says
                    why and how to continue (``esper run --resume``)
==================  ==============================================================================================

Repeated emergencies escalate: the ``halt_after``-th emergency at ELEVATED or above without ``calm_after`` calm
decision points in between halts the run. :class:`EmergencyLadder` keeps that count, the seeds it paused and the
signals waiting, and is saved in every checkpoint, so a resumed run continues the ladder where it stood (a halt
itself is not carried over: the run was stopped so that someone could look).
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least
from esper_core.errors import EsperError
from esper_core.leyline import EmergencyLevel, EmergencySignal, value_name

__all__ = ["EmergencyLadder", "EmergencyOptions", "RunHalted", "level_name"]

NOTICE = EmergencyLevel.EMERGENCY_LEVEL_NOTICE
ELEVATED = EmergencyLevel.EMERGENCY_LEVEL_ELEVATED
CONSERVATIVE = EmergencyLevel.EMERGENCY_LEVEL_CONSERVATIVE
HALT = EmergencyLevel.EMERGENCY_LEVEL_HALT


@section("tolaria.emergency")
@attrs.frozen
class EmergencyOptions:
    """The emergency ladder (docs/tolaria.md, "Emergencies")."""

    #: Respond to emergency signals (off: they are still recorded, as NOTICE).
    enabled: bool = True
    #: The emergency at ELEVATED or above that halts the run, counted since the last calm stretch.
    halt_after: int = attrs.field(default=3, validator=at_least(1))
    #: Decision points without a new emergency that end an emergency: the count starts again and the seeds the
    #: ladder paused are resumed.
    calm_after: int = attrs.field(default=2, validator=at_least(1))


class RunHalted(EsperError):
    """The emergency ladder halted the run; its checkpoint is written and it can be resumed."""


def level_name(level: EmergencyLevel.ValueType) -> str:
    return value_name(EmergencyLevel, level, "EMERGENCY_LEVEL_")


class EmergencyLadder:
    """Signals waiting, the escalation count, the seeds paused by an emergency, and a halt to carry out."""

    def __init__(self, options: EmergencyOptions, training_run_id: str) -> None:
        self.options = options
        self.training_run_id = training_run_id
        self.pending: list[EmergencySignal] = []
        self.count = 0
        self.calm = 0
        self.paused: list[str] = []
        #: Why the run must halt after this decision point (empty: it goes on).
        self.halt = ""

    def signal(self, level: EmergencyLevel.ValueType, reason: str, origin: str, **attributes: str) -> EmergencySignal:
        """A signal of this run, as Tolaria raises it."""
        signal = EmergencySignal(
            version=1, level=level, reason=reason, origin=origin, training_run_id=self.training_run_id,
            monotonic_ms=int(time.monotonic() * 1000), attributes=attributes,
        )  # fmt: skip
        signal.triggered_at.GetCurrentTime()
        return signal

    def concerns(self, signal: EmergencySignal) -> bool:
        """Whether a signal read from the bus is for this run (its id, or every run when it names none)."""
        return signal.training_run_id in ("", self.training_run_id)

    def escalated(self, level: EmergencyLevel.ValueType) -> EmergencyLevel.ValueType:
        """The level to respond with: ``level``, or HALT when it is the ``halt_after``-th serious one in a row."""
        if not self.options.enabled:
            return NOTICE
        if level >= ELEVATED:
            self.count += 1
            self.calm = 0
            if self.count >= self.options.halt_after:
                return HALT
        return level

    def calm_point(self) -> bool:
        """One decision point without a new emergency; True when that makes ``calm_after`` of them (the seeds paused
        by the ladder are then to be resumed, and the count starts again)."""
        if self.count == 0 and not self.paused:
            return False
        self.calm += 1
        if self.calm < self.options.calm_after:
            return False
        self.count, self.calm = 0, 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "calm": self.calm,
            "paused": list(self.paused),
            "pending": [signal.SerializeToString() for signal in self.pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state.get("count", 0))
        self.calm = int(state.get("calm", 0))
        self.paused = [str(slot) for slot in state.get("paused", [])]
        self.pending = []
        for raw in state.get("pending", []):
            signal = EmergencySignal()
            signal.ParseFromString(raw)
            self.pending.append(signal)
        self.halt = ""
