"""``esper serve tamiyo``: Tamiyo as a service, deciding for training processes over Oona.

Training processes with ``tolaria.controller = "remote"`` put their ``SystemStatePacket``s on the ``decisions``
stream. For each, this service asks the controller of that run (one per ``training_run_id``, built on first sight
exactly as an in-process run builds its own: the configured policy, the risk engine, signing, field reports) for a
decision and publishes the signed ``AdaptationCommand`` on the ``commands`` stream, correlated with the packet. When
the run reports the command's ``CommandResult`` (also on ``decisions``), the controller judges it and the field
reports it closes go back on ``commands`` for the run's record (and, as always, on the bus's normal stream).

Delivery is at least once, so handling is idempotent: a state packet seen before (redelivered after a crash, or
sent twice) is answered with the command already decided for it, never decided anew — the same command, the same
nonce, which Kasmina would refuse to apply twice anyway. A message is acknowledged only after its reply is
published; a service killed mid-message leaves it pending, and the next consumer claims it.

Field-report logs go under ``[tamiyo.service] data_dir``, one directory per run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import attrs

from esper_core.leyline import AdaptationCommand, CommandResult, SystemStatePacket
from esper_core.telemetry import Metric, build_telemetry_packet
from esper_tamiyo.options import TamiyoServiceOptions

if TYPE_CHECKING:
    from esper_core.oona import BusMessage, Oona
    from esper_core.plugins import BuildContext


@attrs.define
class _Decided:
    run_id: str
    state: SystemStatePacket
    command: AdaptationCommand
    observed: bool = False


class TamiyoService:
    name = "tamiyo"

    def __init__(self, context: BuildContext, options: TamiyoServiceOptions | None = None) -> None:
        self.context = context
        self.options = options or TamiyoServiceOptions()
        bus = context.bus
        if bus is None:
            raise ValueError("the Tamiyo service needs a bus (Weatherlight gives each service its own client)")
        self.bus: Oona = bus
        self.controllers: OrderedDict[str, Any] = OrderedDict()
        self.decided: OrderedDict[str, _Decided] = OrderedDict()
        self.counters = {"decisions": 0, "repeated": 0, "results": 0, "field_reports": 0, "unknown_results": 0}

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        import time

        streams = self.bus.streams
        next_telemetry = time.monotonic() + self.options.telemetry_interval_s
        try:
            while not stop.is_set():
                self.bus.consume([streams.decisions], self.handle, block_ms=200)
                if time.monotonic() >= next_telemetry:
                    next_telemetry = time.monotonic() + self.options.telemetry_interval_s
                    self._publish_telemetry()
        finally:
            self.close()

    def handle(self, message: BusMessage) -> None:
        payload = message.payload
        correlation = message.envelope.correlation_id
        if isinstance(payload, SystemStatePacket):
            self._decide(payload)
        elif isinstance(payload, CommandResult):
            self._observe(correlation, payload)

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
        self.bus.publish(decided.command, stream=self.bus.streams.commands, correlation_id=key)

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
        for report in reports:
            self.bus.publish(report, stream=self.bus.streams.commands, correlation_id=packet_id)
        self.counters["field_reports"] += len(reports)

    # -- controllers, one per run -----------------------------------------------------------------------------
    def controller_for(self, run_id: str) -> Any:
        controller = self.controllers.get(run_id)
        if controller is not None:
            self.controllers.move_to_end(run_id)
            return controller
        context = self.context
        registry = context.registry
        run_dir = self.options.data_dir / (run_id or "unnamed")
        run_dir.mkdir(parents=True, exist_ok=True)
        controller = registry.build(
            registry.controller("tamiyo"),
            config=context.config,
            signing_key=context.signing_key,
            bus=self.bus,
            run_dir=run_dir,
            training_run_id=run_id,
        )
        self.controllers[run_id] = controller
        while len(self.controllers) > self.options.max_runs:
            _, oldest = self.controllers.popitem(last=False)
            oldest.close()
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


def build_tamiyo_service(context: BuildContext) -> TamiyoService:
    options = context.options if isinstance(context.options, TamiyoServiceOptions) else TamiyoServiceOptions()
    return TamiyoService(context, options)
