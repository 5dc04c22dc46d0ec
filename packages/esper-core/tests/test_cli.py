"""The ``esper`` command: listing plugins, showing configuration, checking contracts, reporting errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from esper_core import hookimpl
from esper_core.cli.main import build_parser, main
from esper_core.plugins import CliCommandSpec, Registry


def test_plugins_lists_core_with_its_distribution_hooks_and_components(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    core = rows["core"]
    assert core["distribution"] == "esper-core" and core["version"]
    assert "esper_oona_bus_backends" in core["hooks"]
    assert "bus backend:memory" in core["provides"]


def test_plugins_reads_well_in_an_80_column_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "core: esper-core" in out and "bus backend  memory, redis" in out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    words = {word.strip(",") for line in lines for word in line.split()}
    registry = Registry.create()
    for info in registry.pm.plugin_infos():
        for caller in registry.pm.get_hookcallers(info.plugin) or []:
            assert caller.name in words, f"hook {caller.name} is split across lines"


def test_serve_help_lists_the_installed_services(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "installed services:" in out
    assert "  tamiyo  " in out and "  urza  " in out


@pytest.mark.parametrize("command", [["plugins"], ["plugins", "--json"], ["config"], ["blueprints"]])
def test_a_reader_that_went_away_gets_no_traceback(command: list[str]) -> None:
    """As in `esper plugins | head -1`: the reader closes the pipe; here it is closed before esper even starts,
    so that its first write certainly fails."""
    esper = str(Path(sys.executable).parent / "esper")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([esper, *command], stdout=write_end, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode in (141, 1)  # 141 from esper itself, 1 where rich's console noticed first


def test_config_prints_the_resolved_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[oona]\nmax_attempts = 4\n")
    assert main(["config", str(config), "--set", "oona.claim_idle_ms=500"]) == 0
    resolved = tomllib.loads(capsys.readouterr().out)
    assert resolved["oona"]["max_attempts"] == 4
    assert resolved["oona"]["claim_idle_ms"] == 500
    assert resolved["oona"]["streams"]["normal"] == "oona.normal"


def test_a_configuration_error_is_one_clear_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "oona.max_atempts=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: unknown key oona.max_atempts")
    assert "did you mean 'max_attempts'" in err and "Traceback" not in err


def test_a_missing_configuration_file_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", str(tmp_path / "absent.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_leyline_check_round_trips_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leyline", "check"]) == 0
    assert "all 41 Leyline messages survive" in capsys.readouterr().out


def test_plugins_can_add_subcommands(register_plugin: Any, esper_registry: Registry) -> None:
    ran: list[str] = []

    class Plugin:
        @hookimpl
        def esper_core_cli_commands(self) -> list[CliCommandSpec]:
            return [
                CliCommandSpec(
                    name="hello",
                    help="greet a run",
                    configure=lambda parser: parser.add_argument("who"),
                    run=lambda args: ran.append(args.who) or 0,
                )
            ]

    register_plugin(Plugin())
    args = build_parser(esper_registry).parse_args(["hello", "world"])
    assert args.handler(args) == 0 and ran == ["world"]


def test_the_installed_console_script_runs() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "esper"), "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("esper ")
