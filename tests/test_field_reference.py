"""The Leyline field reference (docs/reference/leyline.md) is generated from the .proto comments and kept current.

`make contracts` runs the same check; this test makes plain pytest catch a contract whose comments changed without
the reference being regenerated, and pins what the generator promises: every message and enum of the bindings has a
section, every link resolves, comments come from the compiler's reading of the files, and a plugin-facing field
without a comment is an error that names it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from esper_core.leyline.v1 import (
    blueprints_pb2,
    budgets_pb2,
    control_pb2,
    enums_pb2,
    learning_pb2,
    state_pb2,
    telemetry_pb2,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "generate_field_reference.py"
REFERENCE = ROOT / "docs" / "reference" / "leyline.md"
BINDINGS = (blueprints_pb2, budgets_pb2, control_pb2, enums_pb2, learning_pb2, state_pb2, telemetry_pb2)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_field_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )


def section(text: str, name: str) -> str:
    return text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]


def test_the_committed_reference_matches_the_contracts() -> None:
    result = run_script("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_reference_fails_the_check_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    stale = tmp_path / "leyline.md"
    stale.write_text(REFERENCE.read_text().replace("| `slot_id` |", "| `slot_identifier` |", 1))
    result = run_script("--check", "--output", str(stale))
    assert result.returncode == 1
    assert f"{stale} differs from what the contracts generate" in result.stdout
    assert f"Run: python scripts/generate_field_reference.py --output {stale}" in result.stdout

    missing = tmp_path / "absent.md"
    result = run_script("--check", "--output", str(missing))
    assert result.returncode == 1 and f"{missing} is missing" in result.stdout

    assert run_script("--output", str(stale)).returncode == 0
    assert stale.read_text() == REFERENCE.read_text()
    assert run_script("--check", "--output", str(stale)).returncode == 0


@pytest.mark.parametrize("module", BINDINGS, ids=[m.__name__.rsplit(".", 1)[-1] for m in BINDINGS])
def test_every_message_field_and_enum_value_of_the_bindings_is_in_the_reference(module: ModuleType) -> None:
    text = REFERENCE.read_text()
    for name, message in module.DESCRIPTOR.message_types_by_name.items():
        body = section(text, name)
        for field in message.fields:
            assert f"| `{field.name}` |" in body and f"| {field.number} |" in body, f"{name}.{field.name}"
    for name, enum in module.DESCRIPTOR.enum_types_by_name.items():
        body = section(text, name)
        for value in enum.values:
            assert f"| `{value.name}` | {value.number} |" in body, f"{name}.{value.name}"


def test_every_link_inside_the_reference_resolves_to_a_section() -> None:
    text = REFERENCE.read_text()
    headings = {line.removeprefix("### ").lower() for line in text.splitlines() if line.startswith("### ")}
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets, "the reference links field types to their sections"
    assert targets <= headings, f"links without a section: {sorted(targets - headings)}"
    row = next(line for line in section(text, "SystemStatePacket").splitlines() if line.startswith("| `seeds` |"))
    assert "[`SeedState`](#seedstate)" in row and "| repeated |" in row


def test_comments_are_read_from_source_info_and_rendered_safely(tmp_path: Path) -> None:
    generator = load_generator()
    proto = tmp_path / "acme" / "v1" / "acme.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(
        "// Acme's contracts.\n"
        "\n"
        'syntax = "proto3";\n'
        "package acme.v1;\n"
        "// A root message.\n"
        "message Root {\n"
        "  // Its size, in <unit>s | bytes, e.g. `a|b`.\n"
        "  //\n"
        "  // A second paragraph.\n"
        "  optional uint32 size = 1;\n"
        "  Kind kind = 2;  // A trailing note.\n"
        "  map<string, Leaf> leaves = 3;\n"
        "  oneof choice { string a = 4; }\n"
        "  reserved 9 to 11;\n"
        "}\n"
        "message Leaf { uint32 x = 1; }\n"
        "// Kinds.\n"
        "enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }\n"
    )
    contracts = generator.read_contracts(generator.descriptor_set(tmp_path, Path("acme/v1")))
    text = generator.render(contracts, message_order=["Leaf", "Root"], enum_order=["Kind"])
    root = section(text, "Root")
    assert "## Messages of `acme.proto`\n\nAcme's contracts.\n" in text
    assert text.index("### Leaf") < text.index("### Root")
    assert (
        "| `size` | `uint32` | optional | 1 | Its size, in &lt;unit&gt;s \\| bytes, e.g. `a\\|b`.<br><br>"
        "A second paragraph. |" in root
    )
    assert "| `kind` | [`Kind`](#kind) |  | 2 | A trailing note. |" in root
    assert "| `leaves` | `map<string,` [`Leaf`](#leaf)`>` | map | 3 |" in root
    assert "| `a` | `string` | oneof `choice` | 4 |" in root
    assert "Reserved field numbers (never to be used): 9 to 11." in root
    assert generator.undocumented(contracts, ["Root"]) == [
        "field Root.leaves (acme.proto)",
        "field Root.a (acme.proto)",
        "message Leaf (acme.proto)",
        "field Leaf.x (acme.proto)",
        "enum value Kind.KIND_UNSPECIFIED (acme.proto)",
        "enum value Kind.KIND_A (acme.proto)",
    ]
    with pytest.raises(generator.ReferenceError, match="MESSAGE_ORDER names messages the contracts lack: Gone"):
        generator.render(contracts, message_order=["Gone"], enum_order=[])
    with pytest.raises(generator.ReferenceError, match="ENUM_ORDER names enums the contracts lack: Gone"):
        generator.render(contracts, message_order=[], enum_order=["Gone"])
