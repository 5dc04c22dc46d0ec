"""``esper serve`` end to end, in a real subprocess: a plugin service discovered through an entry point runs under
Weatherlight, publishes health over Redis, and stops cleanly on SIGTERM/SIGINT; without the shared secret nothing
starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import attrs
import pytest

from esper_core.cli.serve import split_targets
from esper_core.errors import ConfigError
from esper_core.leyline import TelemetryPacket
from esper_core.oona import Oona, OonaOptions, StreamNames
from esper_core.oona.redis_backend import RedisBackend
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.testing.servers import RedisServer, require_module, wait_until

SECRET = "serve-test-secret-0123456789abcdef"

PLUGIN = '''
"""A test plugin: one service that marks when it starts and stops."""
import os
import pathlib

from esper_core import hookimpl
from esper_core.plugins import ServiceSpec

MARKS = pathlib.Path(os.environ["SERVE_TEST_MARKS"])


def mark(name, text):
    """Write a mark whole: the test sees it only once it exists, so it must never see it half written."""
    partial = MARKS / f".{name}.partial"
    partial.write_text(text)
    os.replace(partial, MARKS / name)


class Sleepy:
    name = "sleepy"

    def __init__(self, context):
        self.bus = context.bus

    def run(self, stop):
        mark("started", f"{os.getpid()} {self.bus.group} {self.bus.consumer}")
        stop.wait()
        mark("stopped", "clean")


@hookimpl
def esper_weatherlight_services():
    yield ServiceSpec(name="sleepy", factory=Sleepy)
'''


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "serve_test_plugin").mkdir(parents=True)
    (root / "serve_test_plugin" / "__init__.py").write_text(PLUGIN)
    info = root / "serve_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: serve-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[esper]\nservetest = serve_test_plugin\n")
    return root


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def serve_env(plugin_path: Path, marks: Path, *, secret: bool = True) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH", "")]))
    env["ESPER_PLUGINS"] = "servetest"
    env["SERVE_TEST_MARKS"] = str(marks)
    if secret:
        env[SECRET_ENV_VAR] = SECRET
    return env


def esper(*args: str) -> list[str]:
    return [sys.executable, "-m", "esper_core.cli.main", *args]


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    def appeared() -> bool:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"esper serve exited with {process.returncode} before {path.name}:\n{err}")
        return path.exists()

    wait_until(appeared, what=f"{path.name} written by the service", timeout_s=timeout_s, interval_s=0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_runs_a_plugin_service_over_redis_and_stops_cleanly_on_a_signal(
    plugin_path: Path, marks: Path, redis_server: RedisServer, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    require_module("redis", "pip install 'esper-core[redis]'")
    streams = StreamNames.prefixed(f"serve.{stop_signal.name}.{uuid.uuid4().hex[:10]}")
    names = "\n".join(f'{field.name} = "{getattr(streams, field.name)}"' for field in attrs.fields(StreamNames))
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[oona]\nbackend = "{redis_server.url}"\n[oona.streams]\n{names}\n[weatherlight]\nhealth_interval_s = 0.2\n'
    )
    # Health is watched from the moment the service can publish it: a group made later would start after it.
    observer = Oona(
        RedisBackend(redis_server.url),
        signing_key=SigningKey.from_secret(SECRET),
        options=OonaOptions(streams=streams),
        group="observer",
    )
    observer.subscribe([streams.telemetry])
    process = subprocess.Popen(
        esper("serve", "sleepy", str(config), "--set", "weatherlight.shutdown_timeout_s=10"),
        env=serve_env(plugin_path, marks),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(marks / "started", process)
        pid, group, consumer = (marks / "started").read_text().split()
        assert int(pid) == process.pid and group == "sleepy" and consumer.startswith("sleepy-")

        # Health arrives over Redis, signed with the shared secret, from another process.
        packets: list[TelemetryPacket] = []

        def health_arrived() -> bool:
            for message in observer.poll([streams.telemetry], block_ms=200):
                assert isinstance(message.payload, TelemetryPacket)
                packets.append(message.payload)
            return bool(packets)

        wait_until(health_arrived, what="a health packet from esper serve", timeout_s=60)
        assert packets[0].source_subsystem == "weatherlight"
        assert packets[0].system_health.indicators["system_mode"] == "operational"

        process.send_signal(stop_signal)
        _, err = process.communicate(timeout=30)
    finally:
        observer.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert (marks / "stopped").read_text() == "clean"  # the service returned: it saw the stop event
    assert "weatherlight: stopped cleanly" in err


def test_serve_without_the_secret_is_a_clear_error_and_starts_nothing(plugin_path: Path, marks: Path) -> None:
    result = subprocess.run(
        esper("serve", "sleepy", "ghost"),
        env=serve_env(plugin_path, marks, secret=False),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    err = result.stderr
    assert err.startswith("esper: error: preflight found 2 problems; nothing was started"), err
    assert f"secret: {SECRET_ENV_VAR} is not set" in err
    assert "service 'ghost': no installed plugin provides a service named 'ghost'" in err
    assert "Traceback" not in err
    assert not (marks / "started").exists()


def test_serve_check_runs_preflight_only(plugin_path: Path, marks: Path) -> None:
    result = subprocess.run(
        esper("serve", "--check", "sleepy"),
        env=serve_env(plugin_path, marks),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "preflight passed: sleepy on memory" in result.stdout
    assert not (marks / "started").exists()


def test_serve_takes_names_and_one_configuration_file(tmp_path: Path) -> None:
    assert split_targets(["tamiyo", "urza", "run.toml"]) == (["tamiyo", "urza"], "run.toml")
    assert split_targets(["tamiyo"]) == (["tamiyo"], None)
    with pytest.raises(ConfigError, match="one configuration file"):
        split_targets(["a.toml", "b.toml"])


def test_serve_with_no_service_named_lists_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from esper_core.cli.main import main

    assert main(["serve"]) == 2
    assert "name the services to run" in capsys.readouterr().err
