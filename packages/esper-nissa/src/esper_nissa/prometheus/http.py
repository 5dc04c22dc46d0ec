"""Nissa's HTTP endpoint: ``/metrics`` (Prometheus text), ``/healthz`` and ``/metrics/summary`` (JSON).

The standard library's threading HTTP server on a thread of its own: a scrape never waits for training, and training
never waits for a scrape (the series store takes one short lock to copy its values). It binds to the address it is
given, 127.0.0.1 by default; port 0 picks a free port (``server.port`` tells which).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from esper_core.errors import ConfigError

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves a collector registry, a health check and a JSON summary until :meth:`close`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        summary: Callable[[], Mapping[str, Any]] = dict,
        health: Callable[[], Mapping[str, Any]] = lambda: {"status": "ok"},
        setting: str = "nissa.prometheus.address",
    ) -> None:
        self.registry, self.summary, self.health = registry, summary, health
        handler = _handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as error:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {error.strerror or error}; choose another address in "
                f"{setting} (port 0 picks any free one) or stop what holds it"
            ) from None
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"nissa-http-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port; closing twice does nothing."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/healthz":
                    health = dict(server.health())
                    status = 200 if health.get("status") == "ok" else 503
                    self._send(status, "application/json", json.dumps(health).encode())
                elif path == "/metrics/summary":
                    self._send(200, "application/json", json.dumps(server.summary(), default=str).encode())
                else:
                    self._send(
                        404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz, /metrics/summary\n"
                    )
            except Exception as error:  # noqa: BLE001 - one bad request must not end the server thread
                self._send(500, "text/plain; charset=utf-8", f"{type(error).__name__}: {error}\n".encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds are not worth a log line each."""

    return Handler
