"""``esper serve tamiyo``: Tamiyo as a service, deciding for training processes over Oona.

Training processes with ``tolaria.controller = "remote"`` put their ``SystemStatePacket``s on the ``decisions``
stream. For each, this service asks the controller of that run (one per ``training_run_id``, built on first sight
exactly as an in-process run builds its own: the configured policy, the risk engine, signing, field reports) for a
decision and publishes the signed ``AdaptationCommand`` on the ``commands`` stream, correlated with the packet. When
the run reports the command's ``CommandResult`` (also on ``decisions``), the controller judges it and the field
reports it closes go back on ``commands`` for the run's record (and, as always, on the bus's normal stream).

The service's consumer group on ``decisions`` is created when the service is built and starts at the stream's end
(a packet older than the service has been given up on by its run); a run's first decision point that comes before
any service ever started is a timeout, counted like any other.

Delivery is at least once, so handling is idempotent: a state packet seen before (redelivered after a crash, or
sent twice) is answered with the command already decided for it, never decided anew — the same command, the same
nonce, which Kasmina would refuse to apply twice anyway. A message is acknowledged only after its reply is
published; both go out with the service's next read, in one round trip (see :meth:`TamiyoService.run`). A service
killed mid-message leaves it pending, and the next consumer claims it and answers it.

Nothing a controller does waits on the bus while its run waits for the command. A run's controller is given a bus
of its own inside the service (:class:`RunBus`): what it publishes (its telemetry, its field reports on the normal
stream) is sent after the command, in the same round trip; and it does not read the policy stream at each decision
itself (a round trip per decision, and with one consumer group for every run, an update would reach only one of
them): the service reads ``policy`` together with ``decisions``, in the same blocking read, and hands each
``PolicyUpdate`` to every run's controller, which applies it before its next decision. The service keeps the
latest update it read, and a run seen for the first time after it gets it before its first decision: every run
decides with the policy published last, whenever it started.

Field-report logs go under ``[tamiyo.service] data_dir``, one directory per run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from google.protobuf.message import Message

from esper_core.errors import EsperError
from esper_core.leyline import AdaptationCommand, CommandResult, MessagePriority, PolicyUpdate, SystemStatePacket
from esper_core.oona import BusMessage, Oona, Outgoing
from esper_core.telemetry import Metric, build_telemetry_packet
from esper_tamiyo.options import TamiyoServiceOptions

if TYPE_CHECKING:
    from esper_core.oona.bus import Priority
    from esper_core.plugins import BuildContext


log = logging.getLogger("esper.tamiyo.service")

#: How long one read waits for a packet: also how soon the service notices that it should stop.
POLL_MS = 200


@attrs.define
class _Decided:
    run_id: str
    state: SystemStatePacket
    command: AdaptationCommand
    observed: bool = False


#: Training run ids the service keeps state for: each names a directory under ``tamiyo.service.data_dir``, so no path
#: separators and no ``..`` (a signed packet must not be able to write anywhere else).
SAFE_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class RunBus(Oona):
    """The bus a run's controller sees inside the service: the service's own client, except that

    - what the controller publishes is held in :attr:`outbox` until the service sends it, after the reply the run
      is waiting for (:meth:`TamiyoService.run`);
    - its reads of the policy stream are answered from :attr:`inbox`, which the service fills with every
      ``PolicyUpdate`` it reads, already acknowledged: no round trip per decision, and every run gets each update.
    """

    def __init__(self, service_bus: Oona) -> None:
        super().__init__(
            service_bus.backend,
            signing_key=service_bus.key,
            options=service_bus.options,
            group=service_bus.group,
            consumer=service_bus.consumer,
            source=service_bus.source,
        )
        self.inbox: list[BusMessage] = []
        self.outbox: list[Outgoing] = []

    def publish(
        self,
        message: Message,
        *,
        priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL,
        stream: str | None = None,
        correlation_id: str = "",
    ) -> str | None:
        """Held for the service to send (no entry id yet: None)."""
        self.outbox.append(Outgoing(message, priority=priority, stream=stream, correlation_id=correlation_id))
        return None

    def publish_many(
        self, messages: Iterable[Message], *, priority: Priority = MessagePriority.MESSAGE_PRIORITY_NORMAL
    ) -> list[str | None]:
        return [self.publish(message, priority=priority) for message in messages]

    def take_outbox(self) -> list[Outgoing]:
        outbox, self.outbox = self.outbox, []
        return outbox

    def subscribe(self, streams: Sequence[str], *, from_start: bool = False) -> None:
        """Nothing to do: the service reads the policy stream for every run."""

    def poll(
        self,
        streams: Sequence[str],
        *,
        count: int = 32,
        block_ms: int = 0,
        ack: Sequence[BusMessage] = (),
        publish: Sequence[Outgoing] = (),
    ) -> list[BusMessage]:
        """The messages the service handed over for ``streams`` (up to ``count``), without waiting; ``publish`` is
        held like everything else the controller publishes."""
        self.outbox += publish
        wanted = set(streams)
        taken = [message for message in self.inbox if message.stream in wanted][:count]
        self.inbox = [message for message in self.inbox if message not in taken]
        return taken

    def ack_many(self, messages: Sequence[BusMessage]) -> None:
        """Nothing to do: the service acknowledged them when it handed them over."""
        self.counters["handled"] += len(messages)

    def close(self) -> None:
        """Nothing to close: the backend is the service's."""


class TamiyoService:
    name = "tamiyo"

    def __init__(self, context: BuildContext, options: TamiyoServiceOptions | None = None) -> None:
        self.context = context
        self.options = options or TamiyoServiceOptions()
        bus = context.bus
        if not isinstance(bus, Oona):
            raise ValueError("the Tamiyo service needs a bus (Weatherlight gives each service its own client)")
        self.bus: Oona = bus
        self.controllers: OrderedDict[str, Any] = OrderedDict()
        self.run_buses: dict[str, RunBus] = {}
        #: Replies to runs (commands, field reports), sent with the next read ahead of everything else.
        self.outbox: list[Outgoing] = []
        self.decided: OrderedDict[str, _Decided] = OrderedDict()
        #: The latest ``PolicyUpdate`` read: handed to each run's controller built after it.
        self.latest_update: BusMessage | None = None
        self.counters = {
            "decisions": 0,
            "repeated": 0,
            "results": 0,
            "field_reports": 0,
            "unknown_results": 0,
            "policy_updates": 0,
        }
        self.streams = [self.bus.streams.decisions, self.bus.streams.policy]
        # The groups exist once the service is built (before Weatherlight reports it running), at the streams' end:
        # a state packet older than the service is one its run has already given up on (decision_timeout_s), and
        # deciding it would only build controllers for runs long gone. A group that exists already (another
        # process of the service, or this one before a restart) keeps its position and its pending packets.
        self.bus.subscribe(self.streams)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Answer until ``stop`` is set.

        Replies go out with the next read, in one pipelined round trip (:meth:`Oona.poll` with ``publish`` and
        ``ack``): the commands first (the runs are waiting for them), then what else the batch caused (the
        controllers' telemetry, their field reports), then the acknowledgements of what was handled, then the read
        that waits for the next packet. So the service is already waiting again when a run gets its command, and
        answering costs one round trip. In a batch of several messages, the replies to all but the last go out as
        soon as they are decided, so that no run waits for another's decision. A message that cannot be handled is
        retried, then dead-lettered (:meth:`Oona.fail`), as ``Oona.consume`` would."""
        next_telemetry = time.monotonic() + self.options.telemetry_interval_s
        handled: list[BusMessage] = []
        try:
            while not stop.is_set():
                messages = self.bus.poll(self.streams, block_ms=POLL_MS, ack=handled, publish=self._take_outbox())
                handled = []
                for index, message in enumerate(messages):
                    try:
                        self.handle(message)
                    except Exception as error:  # noqa: BLE001 - one bad message must not stop the service
                        log.warning("could not handle %s: %s", type(message.payload).__name__, error)
                        self.bus.fail(message, f"{type(error).__name__}: {error}")
                    else:
                        handled.append(message)
                    if index < len(messages) - 1 and self.outbox:  # others in the batch wait: reply now
                        self.bus.publish_batch(self._take_outbox())
                if time.monotonic() >= next_telemetry:
                    next_telemetry = time.monotonic() + self.options.telemetry_interval_s
                    self._publish_telemetry()
        finally:
            try:  # answered and done, even when the service stops or crashes right after
                self.bus.publish_batch(self._take_outbox())
                self.bus.ack_many(handled)
            except EsperError as error:  # the bus may be why it stops; what stays pending is answered again
                log.warning("could not send the replies to %d handled messages: %s", len(handled), error)
            self.close()

    def handle(self, message: BusMessage) -> None:
        """Handle one message; its replies wait in :attr:`outbox` (see :meth:`run`)."""
        payload = message.payload
        correlation = message.envelope.correlation_id
        if isinstance(payload, SystemStatePacket):
            self._decide(payload)
        elif isinstance(payload, CommandResult):
            self._observe(correlation, payload)
        elif isinstance(payload, PolicyUpdate):
            self.counters["policy_updates"] += 1
            self.latest_update = message
            for run_bus in self.run_buses.values():
                run_bus.inbox.append(message)

    def _decide(self, state: SystemStatePacket) -> None:
        key = state.packet_id
        decided = self.decided.get(key)
        if decided is None:
            run_id = state.training_run_id
            command = self.controller_for(run_id).decide(state)
            decided = _Decided(run_id, state, command)
            self._remember(key, decided)
            self.counters["decisions"] += 1
        else:
            self.counters["repeated"] += 1
        self.outbox.append(Outgoing(decided.command, stream=self.bus.streams.commands, correlation_id=key))

    def _observe(self, packet_id: str, result: CommandResult) -> None:
        decided = self.decided.get(packet_id)
        if decided is None or decided.command.command_id != result.command_id:
            self.counters["unknown_results"] += 1
            return
        if decided.observed:
            return
        decided.observed = True
        self.counters["results"] += 1
        reports = self.controller_for(decided.run_id).observe(decided.state, decided.command, result)
        stream = self.bus.streams.commands
        self.outbox += [Outgoing(report, stream=stream, correlation_id=packet_id) for report in reports]
        self.counters["field_reports"] += len(reports)

    def _take_outbox(self) -> list[Outgoing]:
        """What is waiting to be sent: the service's own replies, then what each run's controller published."""
        outbox, self.outbox = self.outbox, []
        for run_bus in self.run_buses.values():
            outbox += run_bus.take_outbox()
        return outbox

    # -- controllers, one per run -----------------------------------------------------------------------------
    def controller_for(self, run_id: str) -> Any:
        controller = self.controllers.get(run_id)
        if controller is not None:
            self.controllers.move_to_end(run_id)
            return controller
        if run_id and not SAFE_RUN_ID.fullmatch(run_id):
            raise EsperError(
                f"training run id {run_id[:80]!r} cannot name a directory under {self.options.data_dir}: use letters, "
                "digits, '.', '_' and '-' (a run's id is its directory's name, run.name)"
            )
        context = self.context
        registry = context.registry
        run_dir = self.options.data_dir / (run_id or "unnamed")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_bus = RunBus(self.bus)
        if self.latest_update is not None:
            run_bus.inbox.append(self.latest_update)
        controller = registry.build(
            registry.controller("tamiyo"),
            config=context.config,
            signing_key=context.signing_key,
            bus=run_bus,
            run_dir=run_dir,
            training_run_id=run_id,
        )
        self.controllers[run_id] = controller
        self.run_buses[run_id] = run_bus
        while len(self.controllers) > self.options.max_runs:
            oldest_id, oldest = self.controllers.popitem(last=False)
            oldest.close()
            self.run_buses.pop(oldest_id, None)
        return controller

    def _remember(self, key: str, decided: _Decided) -> None:
        self.decided[key] = decided
        while len(self.decided) > self.options.remembered_decisions:
            self.decided.popitem(last=False)

    def _publish_telemetry(self) -> None:
        metrics = [Metric(f"tamiyo.service.{name}", float(value)) for name, value in self.counters.items()]
        metrics.append(Metric("tamiyo.service.runs", float(len(self.controllers))))
        packet = build_telemetry_packet(source="tamiyo-service", metrics=metrics)
        self.bus.publish(packet, priority=packet.priority)

    def close(self) -> None:
        for controller in self.controllers.values():
            controller.close()
        self.controllers.clear()
        self.run_buses.clear()


def build_tamiyo_service(context: BuildContext) -> TamiyoService:
    options = context.options if isinstance(context.options, TamiyoServiceOptions) else TamiyoServiceOptions()
    return TamiyoService(context, options)
