"""Every telemetry sink accepts any valid telemetry packet.

Subclass :class:`TelemetrySinkConformance` and provide a ``sink`` fixture returning a fresh sink.
"""

from __future__ import annotations

from hypothesis import given, settings

from esper_core.leyline import TelemetryPacket
from esper_core.protocols import TelemetrySink
from esper_core.testing.conformance.properties import SHARED_ACROSS_SUBCLASSES
from esper_core.testing.strategies import messages


class TelemetrySinkConformance:
    """Subclasses provide a ``sink`` fixture."""

    def test_sink_satisfies_the_protocol(self, sink: TelemetrySink) -> None:
        assert isinstance(sink, TelemetrySink)

    @settings(max_examples=60, deadline=None, suppress_health_check=SHARED_ACROSS_SUBCLASSES)
    @given(packet=messages(TelemetryPacket))
    def test_sink_accepts_any_valid_packet(self, sink: TelemetrySink, packet: TelemetryPacket) -> None:
        sink.emit(packet)
        sink.flush()

    def test_close_is_safe_to_repeat(self, sink: TelemetrySink) -> None:
        sink.emit(TelemetryPacket(packet_id="last", source_subsystem="conformance"))
        sink.flush()
        sink.close()
        sink.close()
