"""Real servers for tests and benchmarks: started on 127.0.0.1 on a free port, stopped by pid at the end.

Esper tests against the servers it uses in the field: Redis (:class:`RedisServer`) and an Elasticsearch-compatible
server (:class:`ElasticsearchCompatibleServer`, the ``osmem-server`` binary of the ``osmem-server`` wheel);
Prometheus follows the same pattern. A server kind is a :class:`ManagedServer` subclass that says which binary to
run, with which arguments, and how to tell it is ready; everything else (free port, log file, start-up wait, stop
by pid with SIGTERM then SIGKILL, restart on the same port, clean-up at interpreter exit) is shared::

    with RedisServer(tmp_path) as server:        # starts redis-server, waits for PING
        backend = RedisBackend(server.url)
        ...
        server.restart()                          # same port, same data directory
    # stopped here (SIGTERM, then SIGKILL if it does not exit)

In pytest, use the fixtures of :mod:`esper_core.testing.pytest_plugin`: ``redis_server`` (one server per session)
and ``redis_server_factory`` (servers of your own, for tests that stop or restart them), and likewise
``elasticsearch_server`` and ``elasticsearch_server_factory``. When a binary is missing,
:func:`require_binary` fails the test if the ``CI`` environment variable is set (CI must never skip silently) and
skips it with the install command otherwise.

This module imports nothing beyond the standard library and attrs (no redis-py, no Elasticsearch client, no pytest at
import time).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


class ServerUnavailableError(RuntimeError):
    """A server binary is not installed, or the server did not start; the message says how to fix it."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ci_requires_servers() -> bool:
    """Whether the ``CI`` environment variable is set (to anything but ``0``/``false``/empty)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing_dependency(message: str) -> None:
    """Fail the current test under CI, skip it elsewhere. ``message`` should say how to install what is missing."""
    import pytest

    if ci_requires_servers():
        pytest.fail(f"{message} (CI is set: a missing test dependency is a failure, never a skip)", pytrace=False)
    pytest.skip(message)


def require_binary(binary: str, apt_package: str) -> str:
    """The path of ``binary``, or fail (CI) / skip (elsewhere) the current test with the command that installs it."""
    path = find_binary(binary)
    if path is None:
        missing_dependency(
            f"{binary} is not installed; install it with: sudo apt-get install -y {apt_package} "
            "(or run scripts/install-system-packages.sh)"
        )
        raise AssertionError("unreachable")  # pragma: no cover - missing_dependency always raises
    return path


def require_module(module: str, install: str) -> None:
    """Fail (CI) / skip (elsewhere) the current test when the Python module ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        missing_dependency(f"the Python module {module!r} is not installed; install it with: {install}")


def find_binary(binary: str) -> str | None:
    """``binary`` on PATH, or in the sbin directories Debian uses for daemons (often missing from a user's PATH)."""
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")


_running: dict[int, ManagedServer] = {}


def _stop_all_at_exit() -> None:
    for server in list(_running.values()):
        server.stop()


atexit.register(_stop_all_at_exit)


class ManagedServer:
    """A server process this process started: on loopback, with its own working directory and log file.

    Subclasses set :attr:`binary` and :attr:`apt_package`, and implement :meth:`command` and :meth:`ready`.
    """

    binary: ClassVar[str]
    apt_package: ClassVar[str]
    #: Seconds to wait for :meth:`ready` after launching.
    startup_timeout_s: ClassVar[float] = 20.0
    #: Seconds to wait after SIGTERM before SIGKILL.
    stop_timeout_s: ClassVar[float] = 10.0

    def __init__(self, workdir: str | Path | None = None, *, port: int | None = None) -> None:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=f"esper-{self.binary}-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / f"{self.binary}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- what a subclass provides -----------------------------------------------------------------------------
    @classmethod
    def find_executable(cls) -> str | None:
        """The server's binary (on PATH or in Debian's sbin directories), or None when it is not installed."""
        return find_binary(cls.binary)

    @classmethod
    def install_hint(cls) -> str:
        """The command that installs the server, for the message a missing binary gives."""
        return f"sudo apt-get install -y {cls.apt_package} (or run scripts/install-system-packages.sh)"

    def command(self, executable: str) -> list[str]:
        """The argv that starts the server in the foreground on ``self.host:self.port``."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers requests now."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Launch the server and wait until it is ready (a port taken meanwhile is replaced, unless fixed)."""
        if self.is_running():
            return self
        executable = self.find_executable()
        if executable is None:
            raise ServerUnavailableError(f"{self.binary} is not installed; install it with: {self.install_hint()}")
        last_error = ""
        for _ in range(3):
            try:
                self._launch(executable)
                return self
            except ServerUnavailableError as error:
                last_error = str(error)
                if self._fixed_port:
                    break
                self.port = free_port()
        raise ServerUnavailableError(last_error)

    def _launch(self, executable: str) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(executable),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        _running[self.process.pid] = self
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._forget()
                raise ServerUnavailableError(
                    f"{self.binary} exited with status {self.process.returncode} while starting on "
                    f"{self.host}:{self.port}; its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.02)
        self.stop()
        raise ServerUnavailableError(
            f"{self.binary} did not become ready on {self.host}:{self.port} within {self.startup_timeout_s:g} s; "
            f"its log ends with:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server by pid: SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        process = self.process
        if process is None or process.poll() is not None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._forget()

    def kill(self) -> None:
        """Kill the server by pid with SIGKILL (a crash: no shutdown work at all)."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._forget()

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with the same working directory."""
        self.stop()
        self._fixed_port = True
        return self.start()

    def _forget(self) -> None:
        if self.process is not None:
            _running.pop(self.process.pid, None)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, {state})"


class RedisServer(ManagedServer):
    """``redis-server`` on 127.0.0.1, in the foreground, with no RDB snapshots.

    :param appendonly: keep an append-only file in ``workdir``, so data survives a restart (or a SIGKILL, with
        ``appendfsync="always"``).
    :param extra_args: more ``redis-server`` arguments (``["--maxmemory", "64mb"]``).
    """

    binary = "redis-server"
    apt_package = "redis-server"

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "always",
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(workdir, port=port)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.workdir),
            "--logfile",
            "",
            *self.extra_args,
        ]

    def ready(self) -> bool:
        """PING answered with PONG (a server still loading its data answers ``-LOADING``: not ready)."""
        return redis_ping(self.host, self.port)


def wait_until(condition: Callable[[], T | None], *, what: str, timeout_s: float = 30.0, interval_s: float = 0.01) -> T:
    """Call ``condition`` until it returns something truthy, and return that; raise ``AssertionError`` naming
    ``what`` if ``timeout_s`` passes first.

    For tests that wait for something to happen (a server ready, an entry idle long enough to claim, a thread
    done): the deadline is generous and only ever fails a test that would otherwise hang, never a slow machine's.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(interval_s)


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``host:port`` (no redis-py needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class ElasticsearchCompatibleServer(ManagedServer):
    """``osmem-server`` on 127.0.0.1: an in-memory server speaking the Elasticsearch REST API (index templates,
    bulk, search, count, aggregations, index deletion), for the ``elasticsearch`` telemetry sink's tests.

    No real Elasticsearch installs on these machines; ``pip install osmem-server`` ships this static binary inside
    the ``osmem_server`` Python package (``osmem_server/bin/osmem-server``), which is where it is looked for first,
    then on PATH. osmem's own pytest fixture is not used: it starts the server its own way (on an address it picks,
    stopped through stdin), while every Esper test server is started, found and stopped the same way, by pid.

    What a test must know about it:

    - it keeps everything in memory: :meth:`restart` (or a kill) brings back an *empty* server on the same port,
      with no index templates and no documents;
    - it answers 406 to the official client's ``application/vnd.elasticsearch+json; compatible-with=N`` media
      types; a client must send plain ``application/json`` (``esper_nissa.elastic.client`` does, and real
      Elasticsearch 8/9 accepts it too);
    - its version string is OpenSearch numbering (3.x): never branch on it.

    It runs with ``-no-stdin-watch`` (its default is to exit when stdin closes, and servers here get
    ``/dev/null``), ``-parent-pid`` (it exits if this process dies without stopping it) and ``-no-ja`` (no
    Japanese analyzer dictionaries: less memory, nothing here needs them).
    """

    binary = "osmem-server"
    apt_package = ""  # not a Debian package: a pip wheel
    #: The command that installs the binary (for the messages of a missing one).
    install_command: ClassVar[str] = "pip install osmem-server"

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        port: int | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(workdir, port=port)
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def find_executable(cls) -> str | None:
        """The binary inside the installed ``osmem_server`` package, else ``osmem-server`` on PATH, else None."""
        import importlib.util

        try:
            spec = importlib.util.find_spec("osmem_server")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin is not None:
            bundled = Path(spec.origin).parent / "bin" / cls.binary
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return str(bundled)
        return find_binary(cls.binary)

    @classmethod
    def install_hint(cls) -> str:
        return f"{cls.install_command} (it is in requirements/dev.txt)"

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            "-addr",
            f"{self.host}:{self.port}",
            "-no-stdin-watch",
            "-parent-pid",
            str(os.getpid()),
            "-no-ja",
            *self.extra_args,
        ]

    def ready(self) -> bool:
        """``GET /`` answers 200 with the cluster's JSON description."""
        return http_ok(f"{self.url}/")


def http_ok(url: str, timeout_s: float = 0.5) -> bool:
    """Whether ``GET url`` answers with a 2xx status (standard library only)."""
    import http.client
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= int(response.status) < 300
    except (OSError, http.client.HTTPException, ValueError):  # URLError and HTTPError are OSErrors
        return False


class PrometheusServer(ManagedServer):
    """A real Prometheus on 127.0.0.1 that scrapes ``targets`` (HOST:PORT, path ``/metrics``, job ``esper``) every
    ``scrape_interval``, with ``rule_files`` loaded and its data in ``workdir``. Its first scrape is queryable a few
    seconds after start: wait for data (:func:`wait_until`), never a fixed time.
    """

    binary = "prometheus"
    apt_package = "prometheus"
    startup_timeout_s = 60.0

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        targets: list[str] | tuple[str, ...] = (),
        rule_files: list[Path] | tuple[Path, ...] = (),
        scrape_interval: str = "1s",
        port: int | None = None,
    ) -> None:
        super().__init__(workdir, port=port)
        self.targets, self.rule_files, self.scrape_interval = list(targets), list(rule_files), scrape_interval

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, executable: str) -> list[str]:
        config = self.workdir / "prometheus.yml"
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
        ]
        if self.rule_files:
            lines += ["rule_files:", *(f"  - {json.dumps(str(path))}" for path in self.rule_files)]
        lines += ["scrape_configs:", "  - job_name: esper", "    static_configs:"]
        lines += [f"      - targets: {json.dumps(self.targets)}"]
        config.write_text("\n".join(lines) + "\n")
        return [
            executable,
            f"--config.file={config}",
            f"--web.listen-address={self.host}:{self.port}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
        ]

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready")


__all__ = [
    "LOOPBACK",
    "ElasticsearchCompatibleServer",
    "ManagedServer",
    "PrometheusServer",
    "RedisServer",
    "ServerUnavailableError",
    "ci_requires_servers",
    "find_binary",
    "free_port",
    "http_ok",
    "missing_dependency",
    "redis_ping",
    "require_binary",
    "require_module",
    "wait_until",
]
