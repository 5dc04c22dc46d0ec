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
- :data:`MEASURED_BLUEPRINTS`: what the controller filled into the packet its policy saw, each slot's
  ``SeedState.measured_blueprints`` (Urabrask's sheets of the offered blueprints, docs/tamiyo.md): JSON, a list of
  groups ``{"slots": [slot ids], "measured": [MeasuredBlueprint in protobuf's JSON form]}``, slots whose lists are
  equal (slots of one shape) in one group, slots without any left out; absent when no slot had any. Tolaria records
  the packet it built and the command, so :func:`as_decided` gives back the packet the policy decided on, exactly
  (Simic re-encodes that one).
"""

from __future__ import annotations

import json
import re

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from esper_core.leyline.v1.control_pb2 import AdaptationCommand
from esper_core.leyline.v1.state_pb2 import MeasuredBlueprint, SystemStatePacket

OFFERED_BLUEPRINTS = "tamiyo.offered_blueprints"
POLICY_ERROR = "tamiyo.policy_error"
EMERGENCY = "tamiyo.emergency"
MEASURED_BLUEPRINTS = "tamiyo.measured_blueprints"

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


def measured_blueprints_text(state: SystemStatePacket) -> str:
    """The :data:`MEASURED_BLUEPRINTS` annotation of a packet the controller filled; "" when no slot has any."""
    groups: dict[tuple[bytes, ...], list[str]] = {}
    lists: dict[tuple[bytes, ...], list[MeasuredBlueprint]] = {}
    for seed in state.seeds:
        if seed.measured_blueprints:
            key = tuple(entry.SerializeToString(deterministic=True) for entry in seed.measured_blueprints)
            groups.setdefault(key, []).append(seed.slot_id)
            lists.setdefault(key, list(seed.measured_blueprints))
    if not groups:
        return ""
    measured = [
        {"slots": slots, "measured": [MessageToDict(m, preserving_proto_field_name=True) for m in lists[key]]}
        for key, slots in groups.items()
    ]
    return json.dumps(measured, sort_keys=True, separators=(",", ":"))


def with_measured_blueprints(state: SystemStatePacket, text: str) -> SystemStatePacket:
    """A copy of ``state`` whose slots hold the measured blueprints a :data:`MEASURED_BLUEPRINTS` annotation lists
    (and no others). ``ValueError`` when the text is not one, or names a slot the packet does not have."""
    parsed: dict[str, list[MeasuredBlueprint]] = {}
    try:
        groups = json.loads(text)
        if not isinstance(groups, list):
            raise ValueError("not a list of groups")
        for group in groups:
            entries = [ParseDict(entry, MeasuredBlueprint()) for entry in group["measured"]]
            for slot_id in group["slots"]:
                if not isinstance(slot_id, str) or slot_id in parsed:
                    raise ValueError(f"slot {slot_id!r} is not a slot id, or is listed twice")
                parsed[slot_id] = entries
    except (ValueError, ParseError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"the {MEASURED_BLUEPRINTS} annotation does not parse: {error}") from None
    unknown = sorted(set(parsed) - {seed.slot_id for seed in state.seeds})
    if unknown:
        raise ValueError(f"the {MEASURED_BLUEPRINTS} annotation names slots the packet does not have: {unknown}")
    packet = SystemStatePacket()
    packet.CopyFrom(state)
    for seed in packet.seeds:
        del seed.measured_blueprints[:]
        seed.measured_blueprints.extend(parsed.get(seed.slot_id, ()))
    return packet


def as_decided(state: SystemStatePacket, command: AdaptationCommand) -> SystemStatePacket:
    """The packet the policy decided ``command`` on, from the packet Tolaria built (and recorded): ``state`` with the
    command's :data:`MEASURED_BLUEPRINTS` filled in; ``state`` itself when the command has none. ``ValueError``
    when the annotation is malformed (see :func:`with_measured_blueprints`)."""
    text = command.annotations.get(MEASURED_BLUEPRINTS)
    return with_measured_blueprints(state, text) if text else state
