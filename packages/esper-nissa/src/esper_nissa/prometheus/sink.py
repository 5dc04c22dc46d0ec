"""The ``prometheus`` telemetry sink: a run's packets into Nissa's series, alerts and SLOs, served on ``/metrics``.

``emit`` folds a packet in (a few dict updates; Tolaria calls it at decision points only, never per batch). With
``nissa.prometheus.address`` set, ``/metrics``, ``/healthz`` and ``/metrics/summary`` are served from a thread of
their own for as long as the run lives, so a scrape never waits for training. The series survive the run's end only
in Prometheus: a long-lived endpoint for many runs is ``esper serve nissa``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from esper_nissa.ingest import Nissa
from esper_nissa.options import split_address

if TYPE_CHECKING:
    from esper_core.leyline import TelemetryPacket
    from esper_core.plugins import BuildContext

logger = logging.getLogger(__name__)

__all__ = ["PrometheusSink", "build_prometheus_sink"]


class PrometheusSink:
    def __init__(self, nissa: Nissa, address: str = "") -> None:
        self.nissa = nissa
        self.url = ""
        if address:
            host, port = split_address(address)
            server = nissa.serve(host, port)
            self.url = server.url
            logger.warning("esper-nissa: serving metrics at %s/metrics", self.url)

    def emit(self, packet: TelemetryPacket) -> None:
        self.nissa.observe(packet)

    def flush(self) -> None:
        """Nothing is buffered: a scrape reads the series as they are."""

    def close(self) -> None:
        self.nissa.close()


def build_prometheus_sink(context: BuildContext) -> PrometheusSink:
    from esper_nissa.options import AlertOptions, PrometheusOptions, SloOptions

    options: PrometheusOptions = context.options if context.options is not None else PrometheusOptions()
    config = context.config
    alerts = config.get(AlertOptions) if config is not None else AlertOptions()
    slo = config.get(SloOptions) if config is not None else SloOptions()
    bus = context.bus
    publish: Any = None
    if bus is not None:

        def publish(message: Any, priority: int) -> object:
            return bus.publish(message, priority=priority)

    return PrometheusSink(Nissa(prometheus=options, alerts=alerts, slo=slo, publish=publish), options.address)
