"""The Elasticsearch-compatible test server of the testing kit (``osmem-server``): loopback only, ready when its HTTP
root answers, stopped by pid, empty after a restart, and a missing binary fails under CI but skips elsewhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_core.testing import pytest_plugin
from esper_core.testing.servers import LOOPBACK, ElasticsearchCompatibleServer, ServerUnavailableError, http_ok
from esper_nissa.elastic import ElasticsearchOptions
from esper_nissa.elastic.client import build_client

pytestmark = pytest.mark.slow  # starts servers


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses something listens on at ``port``, from /proc/net/tcp (state 0A: LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_the_server_listens_on_loopback_only_and_stops_by_pid(
    elasticsearch_server_factory: Callable[..., ElasticsearchCompatibleServer],
) -> None:
    server = elasticsearch_server_factory()
    command = server.command("osmem-server")
    assert command[command.index("-addr") + 1] == f"{LOOPBACK}:{server.port}" and LOOPBACK == "127.0.0.1"
    assert "-no-stdin-watch" in command  # its stdin is /dev/null: without this it would exit at once
    assert server.url == f"http://127.0.0.1:{server.port}" and http_ok(server.url)
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(server.port) == {"127.0.0.1"}
    pid = server.pid
    assert pid is not None and alive(pid)
    server.stop()
    assert not alive(pid) and not http_ok(server.url)


def test_a_restarted_server_comes_back_empty_on_the_same_port(
    elasticsearch_server_factory: Callable[..., ElasticsearchCompatibleServer],
) -> None:
    server = elasticsearch_server_factory()
    client = build_client(ElasticsearchOptions(url=server.url))
    try:
        client.index(index="kept-1", id="a", document={"x": 1}, refresh=True)
        assert client.count(index="kept-1")["count"] == 1
        port, pid = server.port, server.pid
        server.kill()
        assert pid is not None and not alive(pid)
        server.restart()
        assert server.port == port and server.starts == 2
        assert not client.indices.exists(index="kept-1"), "osmem keeps everything in memory"
    finally:
        client.close()


def test_the_binary_is_the_one_the_wheel_ships() -> None:
    executable = ElasticsearchCompatibleServer.find_executable()
    assert executable is not None and os.access(executable, os.X_OK)
    assert Path(executable).name == "osmem-server"


def test_a_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ElasticsearchCompatibleServer, "find_executable", classmethod(lambda cls: None))
    with pytest.raises(ServerUnavailableError, match="pip install osmem-server"):
        ElasticsearchCompatibleServer(tmp_path).start()


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_binary_fails_the_fixture_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(ElasticsearchCompatibleServer, "find_executable", classmethod(lambda cls: None))
    with pytest.raises(outcome, match="pip install osmem-server"):
        pytest_plugin._start_elasticsearch(tmp_path)
