"""The efficacy experiment's gromo arm (benchmarks/efficacy/gromo_arm.py): it fails alone, with the install hint,
where GroMo is not installed; where it is, one GroMo growth step grows the host within the parameter budget."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EFFICACY = ROOT / "benchmarks" / "efficacy"
HINT = "pip install -r requirements/efficacy.txt"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"efficacy_{name}", EFFICACY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arm() -> ModuleType:
    return load("gromo_arm")


def hidden_gromo(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import gromo`` fails as it does where GroMo is not installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gromo.py").write_text("raise ImportError('No module named gromo (hidden by the test)')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}


def test_without_gromo_the_arm_stops_with_the_install_hint(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EFFICACY / "gromo_arm.py"), "--seeds", "0", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=hidden_gromo(tmp_path), check=False, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 3, completed.stderr
    assert HINT in completed.stderr
    assert completed.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_without_gromo_only_the_gromo_arm_fails_and_the_harness_says_so(tmp_path: Path) -> None:
    out = tmp_path / "efficacy"
    command = [sys.executable, str(EFFICACY / "run.py"), "--arms", "static-small", "static-large", "heuristic", "gromo",
               "--seeds", "0", "--epochs", "1", "--train-limit", "512", "--out", str(out)]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, env=hidden_gromo(tmp_path), check=False, timeout=600
    )
    assert completed.returncode == 3, completed.stderr
    assert HINT in completed.stderr and "FAILED gromo seed 0" in completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert sorted(row["arm"] for row in results) == ["heuristic", "static-large", "static-small"]
    assert "| heuristic |" in completed.stdout  # the other arms' table is still there


def test_flop_tally_counts_a_step_once_per_shape_and_adds_it_for_every_step(arm: Any) -> None:
    import torch

    tally = arm.FlopTally()
    layer = torch.nn.Linear(8, 4, bias=False)
    for batch in (16, 16, 16, 3):
        with tally.step("train", (batch,)):
            layer(torch.ones(batch, 8))
    assert tally.by_phase == {"train": 3 * (2 * 16 * 8 * 4) + 2 * 3 * 8 * 4}
    with tally.pass_("statistics"):
        layer(torch.ones(5, 8))
    assert tally.total == 3 * (2 * 16 * 8 * 4) + 2 * 3 * 8 * 4 + 2 * 5 * 8 * 4


def test_growth_attempts_are_spread_over_the_epoch_and_end_it(arm: Any) -> None:
    assert arm.attempt_steps(422, 4) == {106, 211, 317, 422}
    assert arm.attempt_steps(3, 4) == {1, 2, 3}


@pytest.mark.slow
def test_one_gromo_growth_step_grows_the_host_within_the_budget(arm: Any) -> None:
    gromo = arm.require_gromo()  # `make venv` installs it: a missing GroMo fails here, never skips
    import torch

    torch.manual_seed(0)
    # A learnable synthetic task: the class is which of ten horizontal bands of the image is brightest.
    inputs = torch.randn(256, 1, 28, 28)
    bands = torch.randint(0, 10, (256,))
    for index, band in enumerate(bands.tolist()):
        inputs[index, 0, 2 * band : 2 * band + 3] += 3.0
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, bands), batch_size=64, shuffle=True, generator=torch.Generator()
    )
    model = arm.build_host(gromo, (1, 2), "restricted")
    assert arm.parameter_count(model) == 1020  # the narrow host's count: the variant changes no parameter
    cost = arm.neuron_cost(model.conv2)
    assert cost == 1 * 9 + 1 + 2 * 9
    settings = arm.Settings(
        seed=0, epochs=1, batch_size=64, learning_rate=2e-3, widths=(1, 2), budget=1020 + 3 * cost,
        statistics_batches=2, line_search_batches=2, scales=(1.0,),
    )  # fmt: skip
    tally, log = arm.FlopTally(), arm.GrowthLog()
    loaders = {"train": loader, "held_out": loader}
    for attempt in range(3):  # the second and third steps need the statistics' shapes repaired after the first
        arm.grow_once(model, settings, attempt, loaders, tally, log, epoch=1)
    width = model.conv1.out_channels
    assert log.neurons == width - 1 > 0
    assert arm.parameter_count(model) == 1020 + (width - 1) * cost <= settings.budget
    assert model(inputs[:4]).shape == (4, 10)
    assert tally.by_phase["statistics"] > 0 and tally.by_phase["line_search"] > 0
