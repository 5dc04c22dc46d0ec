"""``esper serve nissa``: Nissa as a Weatherlight service for every trainer and service on the bus.

It reads Oona's telemetry, emergency and normal streams in a consumer group of its own (``nissa``), so it sees every
packet without taking any from the runs that relay their own telemetry to their sinks; folds each telemetry packet
into its series, alerts and SLOs (the same :class:`~esper_nissa.ingest.Nissa` the ``prometheus`` sink uses); counts
the other messages it drains (field reports, state packets, emergency signals); and serves ``/metrics``,
``/healthz`` and ``/metrics/summary`` on ``nissa.service.address`` (127.0.0.1:9464 by default).

Weatherlight restarts the service after a failure (a bus that went away) with backoff; the restarted service starts
with fresh series on the same address, which Prometheus reads as a counter reset (``rate()`` and ``increase()``
handle it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import attrs

from esper_core.config import section
from esper_nissa.ingest import Nissa
from esper_nissa.options import _address, split_address

logger = logging.getLogger(__name__)

__all__ = ["NissaService", "NissaServiceOptions"]


@section("nissa.service")
@attrs.frozen
class NissaServiceOptions:
    #: Where ``esper serve nissa`` serves /metrics, /healthz and /metrics/summary (HOST:PORT; port 0: a free one).
    address: str = attrs.field(default="127.0.0.1:9464", validator=_address)
    #: Messages read per poll, and how long a poll waits for the first one.
    batch: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    poll_ms: int = attrs.field(default=500, validator=attrs.validators.ge(1))


#: Leyline message names counted by kind (telemetry packets are ingested, not just counted).
KINDS = {
    "FieldReport": "field_report",
    "SystemStatePacket": "state",
    "EmergencySignal": "emergency",
    "SeedLifecycleEvent": "lifecycle",
}


class NissaService:
    name = "nissa"

    def __init__(self, bus: Any, nissa: Nissa, options: NissaServiceOptions) -> None:
        self.bus, self.nissa, self.options = bus, nissa, options
        host, port = split_address(options.address)
        self.server = nissa.serve(host, port, setting="nissa.service.address")
        logger.info("esper-nissa: serving metrics at %s/metrics", self.server.url)

    def run(self, stop: threading.Event) -> None:
        streams = [self.bus.streams.telemetry, self.bus.streams.emergency, self.bus.streams.normal]
        self.bus.subscribe(streams)
        while not stop.is_set():
            messages = self.bus.poll(streams, count=self.options.batch, block_ms=self.options.poll_ms)
            for message in messages:
                self.ingest(message.payload)
            if messages:
                self.bus.ack_many(messages)

    def ingest(self, payload: Any) -> None:
        name = payload.DESCRIPTOR.name
        if name == "TelemetryPacket":
            self.nissa.observe(payload)
        else:
            self.nissa.note(KINDS.get(name, "other"))

    def close(self) -> None:
        self.nissa.close()
