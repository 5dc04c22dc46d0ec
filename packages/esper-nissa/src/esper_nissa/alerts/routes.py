"""Where alert transitions go besides the bus: the log, and webhooks.

A route must never slow training: the log route writes one line; webhooks are posted by one background thread from a
bounded queue (full: the oldest is dropped and counted), with a short timeout, and a failure is logged once per
webhook until it works again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Sequence
from typing import Any

from esper_nissa.alerts.engine import AlertTransition

logger = logging.getLogger("esper_nissa.alerts")

__all__ = ["LogRoute", "WebhookRoute", "transition_document"]


def transition_document(change: AlertTransition) -> dict[str, Any]:
    """The JSON body a webhook receives (and what ``/metrics/summary`` lists for a firing alert)."""
    return {"state": change.state, "at": change.at, **change.alert.as_dict()}


class LogRoute:
    """One log line per transition: WARNING when an alert fires (ERROR if critical), INFO when it resolves."""

    name = "log"

    def send(self, change: AlertTransition) -> None:
        alert = change.alert
        if change.state == "firing":
            level = logging.ERROR if alert.rule.severity == "critical" else logging.WARNING
            logger.log(level, "esper-nissa: alert %s firing: %s", alert.rule.name, alert.summary)
        else:
            logger.info("esper-nissa: alert %s resolved: %s", alert.rule.name, alert.summary)

    def close(self) -> None:
        pass


class WebhookRoute:
    """POSTs each transition as JSON to ``url`` from a background thread."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_queued: int = 1000) -> None:
        self.url, self.timeout_s = url, timeout_s
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queued)
        self.sent = self.failed = self.dropped = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="nissa-webhook", daemon=True)
        self._thread.start()

    def send(self, change: AlertTransition) -> None:
        document = transition_document(change)
        while True:
            try:
                self._queue.put_nowait(document)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while True:
            document = self._queue.get()
            if document is None:
                return
            request = urllib.request.Request(
                self.url,
                data=json.dumps(document, default=str).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.sent += 1
                if self._failing:
                    logger.info("esper-nissa: the alert webhook %s answers again", self.url)
                self._failing = False
            except Exception as error:  # noqa: BLE001 - a webhook that fails must never reach training
                self.failed += 1
                if not self._failing:
                    logger.warning(
                        "esper-nissa: the alert webhook %s failed (%s: %s); alerts still go to the log",
                        self.url,
                        type(error).__name__,
                        error,
                    )
                self._failing = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)


def build_routes(names: Sequence[str], webhook_url: str) -> list[LogRoute | WebhookRoute]:
    routes: list[LogRoute | WebhookRoute] = []
    for name in names:
        if name == "log":
            routes.append(LogRoute())
        elif name == "webhook":
            routes.append(WebhookRoute(webhook_url))
    return routes
