"""Oona, the message bus: typed, signed Leyline messages over Redis-Streams-shaped backends.

The in-process :class:`MemoryBackend` is the embedded default; other backends (Redis) plug in through the
``esper_oona_bus_backends`` hook and pass the same conformance suite.
"""

from esper_core.oona.backend import BusBackend, BusUnavailableError, StreamEntry
from esper_core.oona.bus import BusMessage, ConsumeReport, Oona, Outgoing, route_for
from esper_core.oona.memory import MemoryBackend
from esper_core.oona.options import OonaOptions, StreamNames

__all__ = [
    "BusBackend",
    "BusMessage",
    "BusUnavailableError",
    "ConsumeReport",
    "MemoryBackend",
    "Oona",
    "OonaOptions",
    "Outgoing",
    "StreamEntry",
    "StreamNames",
    "route_for",
]
