"""Subsystem packages meet only through esper_core: the import-linter contracts in pyproject.toml hold.

A wall that can be crossed silently is no wall: the negative test shows the linter would notice a crossing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(config: Path, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "lint-imports"
    env = None
    if extra_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": f"{extra_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [str(executable), "--config", str(config), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def test_no_subsystem_imports_another_and_core_imports_none() -> None:
    result = lint_imports(REPO / "pyproject.toml", REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_a_crossing_would_be_caught(tmp_path: Path) -> None:
    """Copy two subsystem packages, make one import the other, and expect the contract to break."""
    for name in ("esper_tamiyo", "esper_kasmina"):
        shutil.copytree(REPO / f"packages/esper-{name.split('_')[1]}/src/{name}", tmp_path / name)
    (tmp_path / "esper_tamiyo" / "sneaky.py").write_text("import esper_kasmina.plugin\n")
    config = tmp_path / "contracts.ini"
    config.write_text(
        textwrap.dedent(
            """
            [importlinter]
            root_packages =
                esper_tamiyo
                esper_kasmina

            [importlinter:contract:walls]
            name = walls
            type = independence
            modules =
                esper_tamiyo
                esper_kasmina
            """
        )
    )
    result = lint_imports(config, tmp_path, extra_path=tmp_path)
    assert result.returncode != 0
    assert "esper_tamiyo.sneaky -> esper_kasmina.plugin" in result.stdout
