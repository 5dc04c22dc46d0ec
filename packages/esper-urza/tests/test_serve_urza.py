"""The ``esper serve urza`` command: its preflight explains a missing or unusable ``urza.root``; over Redis, the
service in its own process answers a training process's ``urza-prefetch`` store and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from esper_core.cli.main import main
from esper_core.leyline import SlotKind
from esper_core.oona import Oona, OonaOptions, StreamNames
from esper_core.protocols import SlotShape
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.testing.servers import RedisServer, require_module
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.prefetch import PrefetchStore

SECRET = "serve-urza-test-secret-0123456789abcdef"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)


def check(capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str, str]:
    arguments = ["serve", "--check", "urza", "--set", "oona.backend=memory"]
    for override in overrides:
        arguments += ["--set", override]
    status = main(arguments)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.usefixtures("clean_env")
def test_serve_check_reports_an_unset_or_unusable_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = check(capsys)
    assert status == 2
    assert "esper: error: preflight found 1 problem; nothing was started" in err
    assert "service 'urza': urza.root is not set" in err and "--set urza.root=" in err

    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    status, _, err = check(capsys, f"urza.root={occupied}", "urza.catalogs=['karn', 'acme']")
    assert status == 2 and "preflight found 2 problems" in err
    assert f"urza.root = {str(occupied)!r} is not a directory" in err
    assert "service 'urza': urza.catalogs names 'acme'" in err

    status, out, err = check(capsys, f"urza.root={tmp_path / 'not-yet' / 'urza'}")
    assert status == 0, err
    assert "preflight passed: urza on memory" in out
    assert not (tmp_path / "not-yet").exists()  # checking creates nothing


@pytest.mark.slow
def test_serve_urza_answers_a_prefetch_store_over_redis_and_stops_on_sigterm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    require_module("redis", "pip install 'esper-core[redis]'")
    from esper_core.oona.redis_backend import RedisBackend

    streams = StreamNames.prefixed(f"serve-urza.{uuid.uuid4().hex[:10]}")
    root = tmp_path / "urza"
    overrides = [f"oona.backend={redis_server.url}", f"urza.root={root}", "weatherlight.health_interval_s=1"]
    overrides += streams.as_overrides()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPER_")}
    env[SECRET_ENV_VAR] = SECRET
    command = [sys.executable, "-m", "esper_core.cli.main", "serve", "urza"]
    for override in overrides:
        command += ["--set", override]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        backend = RedisBackend(redis_server.url)
        bus = Oona(
            backend, signing_key=SigningKey.from_secret(SECRET), options=OonaOptions(streams=streams), group="trainer"
        )
        slot = SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (4, 8))
        # The service may still be importing torch: the request waits on the stream until it reads it (the
        # service's group, new, is made with the stream's history).
        with PrefetchStore(bus, UrzaLibrary(root, [KarnCatalog()]), timeout_s=60) as store:
            fetched = store.fetch("BP023", slot, {"heads": 2})
            again = store.fetch("BP023", slot, {"heads": 2})
        backend.close()
        assert tuple(fetched.module(torch.randn(3, 4, 8)).shape) == (3, 4, 8)
        assert fetched.descriptor.name == "transformer_block" and again.source == "memory"
        assert process.poll() is None, "the service exited early"

        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "weatherlight: serving urza on" in err and "weatherlight: stopped cleanly" in err
    assert "Traceback" not in err
