"""Keys of ``AdaptationCommand.annotations`` that more than one subsystem reads, and the helpers that write and read
them and the packet's quarantine list (the contract, in one place).

- :data:`OFFERED_BLUEPRINTS`: the ids of the blueprints the controller offered its policy, JSON, sorted. With the
  catalog it lets a learner (Simic) re-encode any policy's decision exactly as a learned policy would have seen it.
- :data:`POLICY_ERROR`: set when the policy raised inside ``decide``: ``"policy 'NAME' failed: Type: message"``
  (:func:`policy_error_text` writes it, :func:`parse_policy_error` reads it back). The command is then a safe no-op;
  the console prints the line and the run record keeps it. The traceback does not travel in the command: an
  in-process controller hands it to Tolaria beside it (``esper_core.plugin_failures.PluginFailureSource``).
- :data:`EMERGENCY`: set when the controller's risk engine raises an emergency with its decision (``"NOTICE: the
  risk engine paused growth: ..."``; :func:`emergency_text`, :func:`parse_emergency`). It travels in the signed
  command, so Tolaria raises it on its emergency ladder at the same decision point, whether the controller runs in
  the process or as ``esper serve tamiyo``.
- :func:`quarantined_blueprints` / :func:`mark_quarantined`: the blueprints the run quarantined because building one
  raised, in the state packet's typed ``quarantined_blueprints``. A controller must not offer or propose these;
  Tolaria refuses to apply a germination of one anyway.
"""

from __future__ import annotations

import re

from esper_core.leyline.v1.state_pb2 import SystemStatePacket

OFFERED_BLUEPRINTS = "tamiyo.offered_blueprints"
POLICY_ERROR = "tamiyo.policy_error"
EMERGENCY = "tamiyo.emergency"

_POLICY_ERROR = re.compile(r"^policy '(?P<name>.*)' failed: (?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?$", re.S)


def policy_error_text(policy: str, error: BaseException) -> str:
    """The :data:`POLICY_ERROR` annotation for ``error`` raised by policy ``policy``."""
    return f"policy {policy!r} failed: {type(error).__name__}: {error}"


def parse_policy_error(text: str) -> tuple[str, str, str] | None:
    """(policy name, exception type, message) of a :data:`POLICY_ERROR` annotation, or ``None`` if it is not one."""
    found = _POLICY_ERROR.match(text)
    if found is None:
        return None
    return found["name"], found["type"], found["message"] or ""


def emergency_text(level: str, reason: str) -> str:
    """The :data:`EMERGENCY` annotation: ``"NOTICE: reason"`` (a level of ``EmergencyLevel`` without its prefix)."""
    return f"{level}: {reason}"


def parse_emergency(text: str) -> tuple[str, str] | None:
    """(level name, reason) of an :data:`EMERGENCY` annotation, or ``None`` if it is not one."""
    level, separator, reason = text.partition(": ")
    if not separator or level not in ("NOTICE", "ELEVATED", "CONSERVATIVE", "HALT"):
        return None
    return level, reason


def quarantined_blueprints(state: SystemStatePacket) -> set[str]:
    """The blueprints ``state`` says the run quarantined."""
    return set(state.quarantined_blueprints)


def mark_quarantined(state: SystemStatePacket, quarantined: dict[str, int]) -> None:
    """Write the run's quarantined blueprints (id -> the epoch it was quarantined at) into ``state``."""
    del state.quarantined_blueprints[:]
    state.quarantined_blueprints.extend(sorted(quarantined))
