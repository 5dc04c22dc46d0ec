"""The plugin guide documents every hook, and every hookspec states its call semantics in the fixed words."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from esper_core.plugins.hookspecs import (
    ALL_SPECS,
    SEMANTICS_COLLECTED,
    SEMANTICS_FIRSTRESULT,
    SEMANTICS_HISTORIC,
    SEMANTICS_NOTIFY,
)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
SENTENCES = (SEMANTICS_COLLECTED, SEMANTICS_NOTIFY, SEMANTICS_HISTORIC, SEMANTICS_FIRSTRESULT)
HOOKS = sorted(
    ((name, function) for spec in ALL_SPECS for name, function in vars(spec).items() if name.startswith("esper_")),
    key=lambda item: item[0],
)


def signature_of(name: str, function: object) -> str:
    parameters = [p for p in inspect.signature(function).parameters if p != "self"]  # type: ignore[arg-type]
    return f"{name}({', '.join(parameters)})"


@pytest.mark.parametrize(("name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_has_a_section_titled_with_its_full_signature(name: str, function: object) -> None:
    assert f"### `{signature_of(name, function)}`" in GUIDE.read_text(), (
        f"docs/plugins.md needs a section '### `{signature_of(name, function)}`'"
    )


@pytest.mark.parametrize(("name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hookspec_states_its_semantics_once(name: str, function: object) -> None:
    doc = inspect.getdoc(function) or ""
    assert sum(sentence in doc for sentence in SENTENCES) == 1, f"{name}: state exactly one semantics sentence"
    assert "Called by" in doc and "Example" in doc, f"{name}: say who calls it and give an example"
    section = GUIDE.read_text().split(f"### `{signature_of(name, function)}`", 1)[1].split("\n### ", 1)[0]
    assert any(sentence in section for sentence in SENTENCES if sentence in doc), (
        f"{name}: the guide states its semantics"
    )


def test_the_guide_documents_no_hook_that_does_not_exist() -> None:
    documented = {
        line.split("`")[1].split("(")[0] for line in GUIDE.read_text().splitlines() if line.startswith("### `")
    }
    assert documented == {name for name, _ in HOOKS}
