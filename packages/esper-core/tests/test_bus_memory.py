"""The in-process bus backend passes the bus conformance suite (the Redis backend runs the same suite), and the bus
copes with a backend that hands over fields of types the protocol does not allow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import pytest

from esper_core.leyline import FieldReport
from esper_core.oona import BusMessage, MemoryBackend, Oona, OonaOptions, StreamEntry, StreamNames
from esper_core.oona.shared import SharedBackend
from esper_core.signing import SigningKey
from esper_core.testing.bad_entries import template_envelope
from esper_core.testing.conformance import BusBackendConformance


class TestMemoryBackend(BusBackendConformance):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()


class _OddFields(SharedBackend):
    """A backend (a third party's, with a bug) that hands over the entries marked ``odd`` with other fields."""

    def __init__(self, inner: MemoryBackend, odd: Mapping[bytes, dict[str, object]]) -> None:
        super().__init__(inner)
        self.odd = odd

    def read(
        self,
        streams: Sequence[str],
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int,
        ack: Mapping[str, Sequence[str]] | None = None,
    ) -> list[StreamEntry]:
        entries = super().read(streams, group, consumer, count=count, block_ms=block_ms, ack=ack)
        return [
            attrs.evolve(entry, fields=self.odd[entry.fields["odd"]]) if "odd" in entry.fields else entry
            for entry in entries
        ]


def test_fields_of_the_wrong_type_are_dropped_as_malformed() -> None:
    """Whatever a backend hands over, the bus never raises: an envelope or signature that is not ``bytes`` (text,
    None, a number, a bytearray) is not a bus entry; it is acknowledged, dropped and counted before any check."""
    key = SigningKey.generate()
    envelope = template_envelope()
    odd: dict[bytes, dict[str, object]] = {
        b"text": {"envelope": envelope.decode("latin-1"), "signature": key.sign(envelope)},
        b"none": {"envelope": None, "signature": None},
        b"number": {"envelope": 5, "signature": 5},
        b"text signature": {"envelope": envelope, "signature": key.sign(envelope).hex()},
        b"bytearray": {"envelope": bytearray(envelope), "signature": key.sign(envelope)},
        b"list": {"envelope": [envelope], "signature": [b""]},
    }
    streams = StreamNames.prefixed("odd")
    backend = _OddFields(MemoryBackend(), odd)
    bus = Oona(backend, signing_key=key, options=OonaOptions(streams=streams), group="g")
    bus.subscribe([streams.normal])
    for marker in odd:
        backend.publish(streams.normal, {"odd": marker})
    bus.publish(FieldReport(report_id="valid"))
    handled: list[BusMessage] = []
    report = bus.consume([streams.normal], handled.append)
    assert [message.payload.report_id for message in handled] == ["valid"]  # type: ignore[attr-defined]
    assert (report.dropped_malformed, report.dropped_bad_signature, report.dead_lettered) == (len(odd), 0, 0)
    assert backend.pending_count(streams.normal, "g") == 0
