"""The ``remote`` controller: Tolaria's decisions made by ``esper serve tamiyo`` in another process, over Oona.

``tolaria.controller = "remote"`` swaps the in-process controller for this client. At each decision point:

1. the ``SystemStatePacket`` goes on the ``decisions`` stream, its ``packet_id`` as the envelope's correlation id;
2. the client waits on the ``commands`` stream (its own consumer group, ``tolaria-<run id>``) for the
   ``AdaptationCommand`` with that correlation id, at most ``tolaria.decision_timeout_s`` — the local path's
   timeout; without an answer it raises, and Tolaria's usual failure handling takes over (a no-op decision, counted
   towards conservative mode);
3. after Kasmina applied the command, its ``CommandResult`` goes back on ``decisions`` (same correlation id), so the
   service's controller can judge the decision and write field reports, which come back on ``commands`` and are
   handed to Tolaria at the next decision point.

Round trips per decision point: one for the decision (the state packet's XADD pipelined with the blocking read that
brings the command back, which also acknowledges what the previous read brought: :meth:`Oona.request`), then the
result's XADD and one read for field reports. The
service is not kept waiting either: its group on ``decisions`` exists from the moment it is built, and its blocking
read wakes as soon as the packet lands.

Replies that arrive after their decision point timed out (a service that was down or slow, a redelivered state
packet) carry an old correlation id: they are acknowledged and counted as stale, never applied. A command is applied
at most once anyway: Kasmina refuses a replayed nonce. The client's group starts at the end of the ``commands``
stream (created before its first packet goes out) and is deleted when the controller closes.

The commands are signed by the service with the shared secret, so a remote controller needs
``ESPER_LEYLINE_SECRET`` (``security.secret_env``); a run without it stops at setup with that message. The policy's
state lives in the service: a resumed run continues with whatever the service remembers, so unlike the in-process
controller, a remote one does not resume bit-exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from esper_core.config import section
from esper_core.errors import ConfigError, EsperError
from esper_core.leyline import AdaptationCommand, CommandResult, FieldReport, SystemStatePacket
from esper_core.oona import BusMessage, Oona

if TYPE_CHECKING:
    from esper_core.plugins import BuildContext

logger = logging.getLogger("esper.tolaria.remote")

#: How long one poll of the commands stream blocks (the wait is a loop of these until the deadline).
POLL_MS = 100


class RemoteDecisionTimeout(TimeoutError):
    """No command came back from ``esper serve tamiyo`` in time."""


@section("tolaria.remote")
@attrs.frozen
class RemoteControllerOptions:
    #: Seconds to wait for the service's command; 0 uses ``tolaria.decision_timeout_s`` (the local path's timeout).
    reply_timeout_s: float = 0.0


class RemoteController:
    """A :class:`esper_core.protocols.Controller` whose decisions come from the Tamiyo service over the bus."""

    def __init__(self, bus: Oona, *, training_run_id: str, timeout_s: float) -> None:
        self.bus = bus
        self.training_run_id = training_run_id
        self.timeout_s = timeout_s
        self.stale_replies = 0
        self.decisions = 0
        self._reports: list[FieldReport] = []
        # Read and sorted, acknowledged by the next read in the same round trip: the command a decision waits for
        # costs no XACK of its own before decide() returns. Delivered again only after a crash, when it is stale.
        self._handled: list[BusMessage] = []
        # A decision that timed out may still be polling in Tolaria's worker thread while the main thread observes.
        self._lock = threading.Lock()
        # Before the first state packet goes out, so no reply can be published before the group exists; at the
        # stream's end, since nothing already there answers this client's packets.
        self.bus.subscribe([bus.streams.commands])

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        streams = self.bus.streams
        deadline = time.monotonic() + self.timeout_s
        with self._lock:  # the packet out and the wait for its command begun in one round trip
            _, messages = self.bus.request(
                state,
                stream=streams.decisions,
                correlation_id=state.packet_id,
                reply_streams=[streams.commands],
                block_ms=min(int(self.timeout_s * 1000), POLL_MS),
                ack=self._handled,
            )
            self._handled = messages
            command = self._sort(messages, state.packet_id)
        while command is None:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise RemoteDecisionTimeout(
                    f"no command from the Tamiyo service within {self.timeout_s:g} s for {state.packet_id} "
                    "(is `esper serve tamiyo` running on the same bus, with the same ESPER_LEYLINE_SECRET?)"
                )
            command = self._collect(state.packet_id, block_ms=min(remaining_ms, POLL_MS))
        self.decisions += 1
        return command

    def _collect(self, packet_id: str, *, block_ms: int) -> AdaptationCommand | None:
        """Read the commands stream once: keep this run's field reports, return the awaited command if it came."""
        with self._lock:
            messages = self.bus.poll([self.bus.streams.commands], count=32, block_ms=block_ms, ack=self._handled)
            self._handled = messages
            return self._sort(messages, packet_id)

    def _sort(self, messages: list[BusMessage], packet_id: str) -> AdaptationCommand | None:
        """Keep this run's field reports; count replies to decision points that gave up; return the awaited one."""
        found = None
        for message in messages:
            payload = message.payload
            correlation = message.envelope.correlation_id
            if isinstance(payload, FieldReport) and payload.training_run_id == self.training_run_id:
                self._reports.append(payload)
            elif isinstance(payload, AdaptationCommand) and payload.training_run_id == self.training_run_id:
                if correlation == packet_id and found is None:
                    found = payload
                else:
                    self.stale_replies += 1
        return found

    def observe(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> list[FieldReport]:
        """Send the command's result to the service, and return the field reports that have come back so far."""
        if command.security.signature:  # the service's command (not Tolaria's own no-op after a failure)
            report = CommandResult()
            report.CopyFrom(result)
            report.command_id = command.command_id
            self.bus.publish(report, stream=self.bus.streams.decisions, correlation_id=state.packet_id)
        self._collect("", block_ms=0)
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save here: the policy's state lives in the service."""
        return {"remote": True, "decisions": self.decisions, "stale_replies": self.stale_replies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions = int(state.get("decisions", 0))
        self.stale_replies = int(state.get("stale_replies", 0))

    def close(self) -> None:
        """Delete this client's consumer group (it is the run's own; nobody reads it after the run) and close the
        bus client (not the backend, which belongs to the run)."""
        try:
            self.bus.destroy_group([self.bus.streams.commands])
        except EsperError as error:  # the bus may be why the run is closing; a leftover group is harmless
            logger.warning("could not delete the remote controller's group %s: %s", self.bus.group, error)
        self.bus.close()


def build_remote_controller(context: BuildContext) -> RemoteController:
    """The client for one run: its own bus client (group ``tolaria-<run id>``) over the run's bus backend."""
    from esper_core.oona.shared import SharedBackend
    from esper_core.security_options import SecurityOptions
    from esper_core.signing import SigningKey
    from esper_core.tolaria.options import TolariaOptions

    config = context.config
    security = config.get(SecurityOptions) if config is not None else SecurityOptions()
    if SigningKey.from_env(var=security.secret_env) is None:
        raise ConfigError(
            f"tolaria.controller = 'remote' needs the secret the Tamiyo service signs with: set {security.secret_env} "
            "to the same value in this process and in `esper serve tamiyo`"
        )
    bus = context.bus
    if not isinstance(bus, Oona):
        raise ConfigError("the remote controller needs the run's bus (oona.backend shared with `esper serve tamiyo`)")
    run_id = str(context.services.get("training_run_id", "")) or "run"
    options = context.options if isinstance(context.options, RemoteControllerOptions) else RemoteControllerOptions()
    timeout = options.reply_timeout_s or (config.get(TolariaOptions).decision_timeout_s if config else 5.0)
    client = Oona(
        SharedBackend(bus.backend),
        signing_key=bus.key,
        options=bus.options,
        group=f"tolaria-{run_id}",
        consumer=run_id,
        source="tolaria",
    )
    return RemoteController(client, training_run_id=run_id, timeout_s=timeout)
