"""``esper report CANDIDATE_DIR`` plots a Simic training's learning curves; bad curves are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_core.cli.main import main

ROWS = [
    {"phase": 0.0, "clone_loss": 1.8, "likelihood": 0.2, "agreement": 0.7},
    {"phase": 0.0, "clone_loss": 0.4, "likelihood": 0.7, "agreement": 0.9},
    {"phase": 1.0, "return": 0.11, "entropy": 0.3, "value_loss": 0.4, "approx_kl": 0.01, "clip_fraction": 0.1},
    {"phase": 1.0, "return": 0.12, "entropy": 0.25, "value_loss": 0.2, "approx_kl": 0.02, "clip_fraction": 0.2},
]


def test_a_candidate_directory_gets_its_learning_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "curves.json").write_text(json.dumps(ROWS))
    assert main(["report", str(tmp_path)]) == 0
    plot = tmp_path / "learning.png"
    assert capsys.readouterr().out.strip() == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_curves_that_are_not_rows_are_refused_with_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "curves.json").write_text('{"return": 1}')
    assert main(["report", str(tmp_path)]) == 2
    assert "curves.json is not a list of rows" in capsys.readouterr().err
    (tmp_path / "curves.json").write_text("[]")
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no passes" in capsys.readouterr().err
