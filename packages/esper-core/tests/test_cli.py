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


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``esper argv``; it must exit with status 2 and print exactly one ``esper: error:`` line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: "), err
    return lines[0]


def test_a_configuration_file_that_is_not_utf8_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes('[run]\nname = "caf\u00e9"\n'.encode("latin-1"))
    error = one_error_line(capsys, ["config", str(config)])
    assert str(config) in error and "is not UTF-8 text (byte 0xe9 at offset 17)" in error


def test_a_directory_given_as_the_configuration_file_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    error = one_error_line(capsys, ["config", str(tmp_path)])
    assert f"{tmp_path} is a directory, not a configuration file" in error


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("security.max_future_skew_ms=-1000", "security.max_future_skew_ms cannot be negative, got -1000"),
        ("security.freshness_window_ms=-5", "security.freshness_window_ms must be at least 1000, got -5"),
        ("security.freshness_window_ms=999", "security.freshness_window_ms must be at least 1000, got 999"),
        (
            "security.freshness_window_ms=4294967296",
            "security.freshness_window_ms must be at most 4294967295, got 4294967296",
        ),
        ("security.nonce_capacity=0", "security.nonce_capacity must be at least 1, got 0"),
        ("security.secret_env=", "security.secret_env must be the name of an environment variable"),
        ("security.secret_env=MY SECRET", "security.secret_env must be the name of an environment variable"),
    ],
)
def test_security_settings_out_of_range_are_refused_naming_key_and_source(
    capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    error = one_error_line(capsys, ["config", "--set", setting])
    assert expected in error and f"(from --set {setting})" in error


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("run.synthetic.widths=[0, -3]", "run.synthetic.widths must be whole numbers of at least 1"),
        ("run.fashion-mnist.widths=[]", "run.fashion-mnist.widths must list at least one width"),
        ("run.synthetic.classes=0", "run.synthetic.classes must be at least 2, got 0"),
        ("run.synthetic.samples=0", "run.synthetic.samples must be at least 2, got 0"),
    ],
)
def test_config_refuses_task_values_out_of_range_as_run_does(
    capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    error = one_error_line(capsys, ["config", "--set", setting])
    assert expected in error and f"(from --set {setting})" in error


def test_a_future_skew_the_freshness_window_cannot_absorb_is_refused_naming_both_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "security.toml"
    config.write_text("[security]\nfreshness_window_ms = 10000\n")
    error = one_error_line(capsys, ["config", str(config), "--set", "security.max_future_skew_ms=10000"])
    assert "security.max_future_skew_ms (10000) must be less than freshness_window_ms (10000)" in error
    assert "security.max_future_skew_ms: from --set security.max_future_skew_ms=10000" in error
    assert f"security.freshness_window_ms: from {config}" in error


def test_security_settings_in_range_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    settings = ["security.freshness_window_ms=1000", "security.max_future_skew_ms=0", "security.nonce_capacity=1"]
    assert main(["config", *(f"--set={item}" for item in settings), "--set=security.secret_env=MY_SECRET_2"]) == 0
    resolved = tomllib.loads(capsys.readouterr().out)["security"]
    assert (resolved["freshness_window_ms"], resolved["max_future_skew_ms"], resolved["nonce_capacity"]) == (1000, 0, 1)


def test_leyline_check_round_trips_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leyline", "check"]) == 0
    assert "all 47 Leyline messages survive" in capsys.readouterr().out


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
