"""The test-server kit: loopback only, stopped by pid, a missing binary fails under CI but skips elsewhere, and waiting
for a condition has a deadline that names what never came."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from esper_core.testing.servers import LOOPBACK, RedisServer, free_port, redis_ping, require_binary, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_redis_server_listens_on_loopback_only_and_stops_by_pid(tmp_path: Path) -> None:
    require_binary(RedisServer.binary, RedisServer.apt_package)
    server = RedisServer(tmp_path)
    command = server.command("redis-server")
    assert command[command.index("--bind") + 1] == LOOPBACK == "127.0.0.1"
    with server:
        pid = server.pid
        assert pid is not None and alive(pid)
        assert redis_ping(LOOPBACK, server.port)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        server.restart()
        assert server.pid != pid and not alive(pid) and redis_ping(LOOPBACK, server.port)
        pid = server.pid
    assert pid is not None and not alive(pid)
    assert not redis_ping(LOOPBACK, server.port)


def test_a_killed_server_restarts_on_the_same_port(tmp_path: Path) -> None:
    require_binary(RedisServer.binary, RedisServer.apt_package)
    with RedisServer(tmp_path) as server:
        port = server.port
        server.kill()
        assert not server.is_running()
        server.restart()
        assert server.port == port and redis_ping(LOOPBACK, port)


def test_free_ports_are_free() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_binary_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y esper-no-such-package"):
        require_binary("esper-no-such-binary", "esper-no-such-package")


def test_wait_until_returns_what_the_condition_found_or_fails_naming_what_never_came() -> None:
    calls: list[int] = []

    def third_time() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) == 3 else None

    assert wait_until(third_time, what="the third call", interval_s=0) == [1, 1, 1]
    with pytest.raises(AssertionError, match=r"the impossible: not reached within 0\.05 s"):
        wait_until(lambda: False, what="the impossible", timeout_s=0.05)
