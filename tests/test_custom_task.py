"""The "Your own model" section of docs/tolaria.md works as printed: its code blocks are taken from the guide, written
to a directory on ``sys.path`` and trained with; bad ``run.task`` references fail with errors that name the problem."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper_core.config.describe import describe, format_descriptions
from esper_core.errors import EsperError
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Summary, Trainer

from tolaria_runs import BASE

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "tolaria.md"
#: BASE's fast, deterministic settings for every section but [run], which comes from the guide's rings.toml.
FAST = [item for item in BASE if not item.startswith("run.")] + ["nissa.report.automatic=false"]
MODULES = ("rings_task", "rings_plugin", "bad_task")


def code_block(first_line: str) -> str:
    """The one fenced code block of the guide whose first line is ``first_line``."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/tolaria.md needs exactly one code block starting with {first_line!r}"
    return str(found[0])


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` holding the guide's rings_task.py, rings.toml and rings_plugin.py."""
    directory = tmp_path / "example"
    directory.mkdir()
    for name in ("rings_task.py", "rings.toml", "rings_plugin.py"):
        (directory / name).write_text(code_block(f"# {name}"))
    for module in MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(directory))
    yield directory
    for module in MODULES:  # imported during the test from a directory that is about to go
        sys.modules.pop(module, None)


def train(registry: Registry, config_file: Path | None, *overrides: str) -> tuple[Summary, Path]:
    config = registry.load_config(config_file, env={}, overrides=[*FAST, *overrides])
    run = start_run(registry, config)
    trainer = Trainer(run)
    try:
        return trainer.fit(), run.run_dir
    finally:
        trainer.close()


@pytest.mark.slow
def test_the_guides_task_reference_trains_and_grows_seeds_in_its_slots(example: Path) -> None:
    width_slot = "hidden.0:input->hidden.1.0"
    scheduled = f'[{{epoch = 2, blueprint = "BP052"}}, {{epoch = 3, blueprint = "BP059", slot = "{width_slot}"}}]'
    overrides = (
        f"run.runs_dir={example / 'runs'}",
        "run.name=rings",
        "tamiyo.policy=fixed-schedule",
        f"tamiyo.fixed-schedule.germinations={scheduled}",
    )
    summary, run_dir = train(Registry.create(env={}), example / "rings.toml", *overrides)
    record = read_record(run_dir)
    started = record[0]
    assert started["kind"] == "run_started" and record[-1]["kind"] == "run_finished"
    slots = [slot["slotId"] for slot in started["slots"]]
    assert started["task"] == "rings" and slots == ["hidden.0", width_slot, "hidden.1"]  # in forward order
    assert [entry["epoch"] for entry in record if entry["kind"] == "epoch"] == list(range(1, 11))  # rings.toml: 10
    germinated = [e for e in record if e["kind"] == "transition" and e["target"] == "GERMINATED"]
    # The scheduled seeds grew in the custom host: a residual one, and new neurons in its width slot.
    assert [(entry["slot"], entry["blueprint"]) for entry in germinated] == [
        ("hidden.0", "BP052"),
        (width_slot, "BP059"),
    ]
    assert summary.epochs == 10
    assert summary.test_accuracy is not None and summary.test_accuracy > 0.8  # three balanced classes: chance is 1/3


@pytest.mark.slow
def test_the_guides_task_plugin_is_selected_by_name_and_configured_by_its_section(example: Path) -> None:
    registry = Registry.create(env={})
    registry.pm.register(importlib.import_module("rings_plugin"), name="rings")
    registry.invalidate()
    assert "task:rings" in {f"{spec.kind()}:{spec.name}" for spec in registry.tasks()}
    described = format_descriptions(describe(registry.config_sections()))
    assert "run.rings.width = 32" in described and "Units of each hidden layer." in described
    overrides = ("run.task=rings", "run.rings.width=16", "run.epochs=2", "run.threads=1", "run.name=plugin")
    summary, run_dir = train(registry, None, f"run.runs_dir={example / 'runs'}", *overrides)
    started = read_record(run_dir)[0]
    assert started["task"] == "rings"
    assert started["host_parameters"] == (2 * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)  # width 16, not 32
    assert summary.epochs == 2


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nosuchmodule:build", r"run\.task = 'nosuchmodule:build': cannot import 'nosuchmodule'"),
        ("rings_task:nope", r"run\.task = 'rings_task:nope': 'rings_task' has no 'nope'"),
        ("rings_task", r"no installed plugin provides a task named 'rings_task'"),
    ],
    ids=["no-module", "no-factory", "no-colon"],
)
def test_a_bad_task_reference_is_an_error_that_names_it(example: Path, reference: str, message: str) -> None:
    registry = Registry.create(env={})
    overrides = [*FAST, f"run.runs_dir={example / 'runs'}", f"run.task={reference}"]
    config = registry.load_config(env={}, overrides=overrides)
    with pytest.raises(EsperError, match=message):
        start_run(registry, config)


def test_a_factory_that_returns_no_task_is_an_error_that_names_it(example: Path) -> None:
    (example / "bad_task.py").write_text(
        "from rings_task import RingsHost\n\n\ndef build(context):\n    return RingsHost(32)  # the model, not a task\n"
    )
    registry = Registry.create(env={})
    overrides = [*FAST, f"run.runs_dir={example / 'runs'}", "run.task=bad_task:build"]
    config = registry.load_config(env={}, overrides=overrides)
    with pytest.raises(EsperError, match=r"run\.task = 'bad_task:build' built a RingsHost, which is not a task"):
        start_run(registry, config)
