"""Leyline contracts: every message survives serialization, enums follow the rules, and nothing shadows them."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core import leyline
from esper_core.leyline import PAYLOAD_TYPES, BusMessageType, SystemStatePacket
from esper_core.leyline.samples import populated
from esper_core.testing.strategies import messages, state_packets

REPO = Path(__file__).resolve().parents[3]
ENUM_BASES = {"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"}


@pytest.mark.parametrize("cls", leyline.all_message_types(), ids=lambda cls: cls.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_message_type_survives_serialize_then_parse(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(messages(cls))
    assert cls.FromString(message.SerializeToString()) == message
    assert cls.FromString(message.SerializeToString(deterministic=True)) == message


def test_a_fully_populated_instance_of_every_message_survives() -> None:
    for cls in leyline.all_message_types():
        message = populated(cls)
        assert message.ByteSize() > 0
        assert cls.FromString(message.SerializeToString()) == message


@settings(max_examples=100, deadline=None)
@given(state_packets(max_slots=10))
def test_state_packets_from_the_kit_are_consistent(packet: SystemStatePacket) -> None:
    slot_ids = [seed.slot_id for seed in packet.seeds]
    assert len(slot_ids) == len(set(slot_ids))
    for seed in packet.seeds:
        expected_dims = {1: 3, 2: 1, 3: 2}[seed.slot_kind]
        assert len(seed.slot_shape) == expected_dims
        assert bool(seed.seed_id) == bool(seed.blueprint_id)


def test_every_bus_message_type_has_a_payload_class() -> None:
    kinds = [value for value in BusMessageType.values() if value != 0]
    assert sorted(PAYLOAD_TYPES) == sorted(kinds)


def test_enum_value_zero_is_unknown_or_unspecified() -> None:
    for name, values in leyline.all_enum_names().items():
        assert values[0].endswith(("_UNKNOWN", "_UNSPECIFIED")), f"{name}: value 0 is {values[0]}"


def _common_prefix(values: list[str]) -> str:
    parts = [value.split("_") for value in values]
    prefix = []
    for tokens in zip(*parts, strict=False):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    return "_".join(prefix) + "_" if prefix else ""


def leyline_enum_members() -> dict[str, set[str]]:
    """Each Leyline enum's value names without their shared prefix (``DORMANT``, ``TRAINING``, ...)."""
    result = {}
    for name, values in leyline.all_enum_names().items():
        prefix = _common_prefix(values)
        result[name] = {value.removeprefix(prefix) for value in values[1:]}
    return result


def shadowing_enums(source: str, filename: str = "<source>") -> list[str]:
    """Python Enum classes in ``source`` that share a name or two or more members with a Leyline enum."""
    enums = leyline_enum_members()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases}
        if not bases & ENUM_BASES:
            continue
        members = {
            target.id.upper()
            for statement in node.body
            if isinstance(statement, (ast.Assign, ast.AnnAssign))
            for target in (statement.targets if isinstance(statement, ast.Assign) else [statement.target])
            if isinstance(target, ast.Name)
        }
        for enum_name, values in enums.items():
            if node.name.lower() == enum_name.lower() or len(members & values) >= 2:
                found.append(f"{filename}:{node.lineno} {node.name} shadows Leyline {enum_name}")
    return found


def python_sources() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        files.extend(Path(root) / name for name in names if name.endswith(".py") and not name.endswith("_pb2.py"))
    return files


def test_no_python_enum_in_the_tree_shadows_a_leyline_enum() -> None:
    sources = python_sources()
    assert any(path.name == "strategies.py" for path in sources), "the scan must see the package sources"
    problems = [problem for path in sources for problem in shadowing_enums(path.read_text(), str(path))]
    assert not problems, "use the Leyline enum instead:\n" + "\n".join(problems)


def test_the_shadow_guard_catches_shadows() -> None:
    by_members = "import enum\nclass Stage(enum.Enum):\n    DORMANT = 1\n    TRAINING = 2\n"
    by_name = "from enum import IntEnum\nclass SeedLifecycleStage(IntEnum):\n    A = 1\n"
    unrelated = "from enum import Enum\nclass Colour(Enum):\n    RED = 1\n    BLUE = 2\n"
    assert shadowing_enums(by_members) and shadowing_enums(by_name)
    assert shadowing_enums(unrelated) == []
