"""Each package installs on its own: esper-core plus esper-tamiyo into a fresh venv gives exactly those plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "ESPER_", "VIRTUAL_ENV"))}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.mark.slow
def test_core_and_tamiyo_install_into_a_fresh_venv_and_list_exactly_themselves(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "requirements" / "constraints.txt"),
            str(REPO / "packages" / "esper-core"),
            str(REPO / "packages" / "esper-tamiyo"),
        ]
    )
    listing = run([str(venv / "bin" / "esper"), "plugins", "--json"], cwd=tmp_path)
    plugins = {(row["name"], row["distribution"]) for row in json.loads(listing.stdout)}
    assert plugins == {("core", "esper-core"), ("tamiyo", "esper-tamiyo")}
    check = run([str(venv / "bin" / "esper"), "leyline", "check"], cwd=tmp_path)
    assert "survive serialize -> parse unchanged" in check.stdout


@pytest.mark.slow
def test_core_alone_installs_without_torch_and_training_names_the_extra_it_needs(tmp_path: Path) -> None:
    """esper-core stays light (services, sinks, the command line); esper run says how to get what it needs."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "-c", str(REPO / "requirements" / "constraints.txt"), str(REPO / "packages" / "esper-core")])
    probe = run([python, "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('numpy'))"])
    assert probe.stdout.split() == ["None", "None"], "this test needs a venv without torch and numpy"
    listing = run([str(venv / "bin" / "esper"), "plugins", "--json"], cwd=tmp_path)
    core = next(row for row in json.loads(listing.stdout) if row["name"] == "core")
    assert "task:synthetic" in core["provides"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "ESPER_", "VIRTUAL_ENV"))}
    attempt = subprocess.run(
        [str(venv / "bin" / "esper"), "run", "--set", "run.task=synthetic"],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert attempt.returncode == 2, attempt.stderr
    assert "Traceback" not in attempt.stderr
    assert "esper run needs torch" in attempt.stderr and "pip install 'esper-core[train]'" in attempt.stderr
