"""Bad bus entries, for tests that show no entry on a stream can stop its consumers.

Anyone who can write to the bus's streams (anyone who can reach Redis) can put any entry there without the secret,
and a process that holds the secret can write a broken one by mistake. Oona deals with each (see ``docs/oona.md``,
"Bad messages"): an entry that is not a bus entry is dropped as *malformed*, one whose signature is missing or wrong
is dropped as *badly signed* (both acknowledged and counted), a signed one that cannot be decoded is *dead-lettered*;
none makes a read raise, and the valid message behind it is handled. This module makes such entries:

- :func:`bad_entries`: a hypothesis strategy, for property tests (the bus conformance suite feeds it to every
  consumer path);
- :func:`poison_corpus`: one entry of every kind, fixed, for tests that can afford only a few (a service running in a
  thread, a real Redis).

An entry is a ``dict[str, bytes]`` as :meth:`BusBackend.publish <esper_core.oona.BusBackend.publish>` takes it. A
field name that is not UTF-8 is written with its bytes as lone surrogates, the backend protocol's convention
(``b"\\xff".decode("utf-8", "surrogateescape") == "\\udcff"``), so a backend stores the raw bytes: on Redis, exactly
what ``redis-cli XADD stream '*' $'\\xff' x`` writes.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs
from hypothesis import strategies as st

from esper_core.errors import EsperError
from esper_core.leyline import BusEnvelope, BusMessageType, FieldReport, bus_message_type_of
from esper_core.oona.backend import BusBackend
from esper_core.oona.bus import ENVELOPE_FIELD, SIGNATURE_FIELD
from esper_core.signing import MIN_SECRET_BYTES, SigningKey

#: What the bus does with a bad entry: dropped (acknowledged and counted) as malformed or as badly signed, or
#: dead-lettered (a signed entry: its writer held the secret, so it is a bug to look at).
Fate = Literal["malformed", "bad_signature", "dead_letter"]
#: The counter of :attr:`Oona.counters <esper_core.oona.Oona.counters>` that each fate increments.
COUNTER: dict[Fate, str] = {
    "malformed": "dropped_malformed",
    "bad_signature": "dropped_bad_signature",
    "dead_letter": "dead_lettered",
}

#: An unknown message type (dead-lettered when signed).
_UNKNOWN_TYPE = 999
#: A length-delimited field 1 that says 5 bytes follow, and 2 do: no decoder can read past it.
_TRUNCATED_FIELD = b"\x0a\x05ab"
#: ``source`` (a string) holding bytes that are not UTF-8, which protobuf refuses to decode.
_SOURCE_NOT_UTF8 = bytes([(BusEnvelope.DESCRIPTOR.fields_by_name["source"].number << 3) | 2, 2]) + b"\xff\xfe"
#: ``payload`` (bytes) written as a varint: the wrong wire type.
_PAYLOAD_AS_VARINT = bytes([(BusEnvelope.DESCRIPTOR.fields_by_name["payload"].number << 3) | 0, 1])


@attrs.frozen
class BadEntry:
    """An entry no consumer may be stopped by, and what the bus does with it."""

    kind: str
    fields: dict[str, bytes]
    fate: Fate

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep a huge field from flooding the report
        shown = {name[:40]: value[:40] for name, value in self.fields.items()}
        return f"BadEntry({self.kind!r}, {shown!r}, {self.fate!r})"


def template_envelope() -> bytes:
    """A valid envelope (a ``FieldReport``), serialized as Oona signs it: what the bad entries are made from."""
    report = FieldReport(report_id="bad-entry-template", training_run_id="run", seed_id="seed-0")
    envelope = BusEnvelope(
        message_type=bus_message_type_of(report), payload=report.SerializeToString(), source="template"
    )
    return envelope.SerializeToString(deterministic=True)


def _signed(key: SigningKey, data: bytes) -> dict[str, bytes]:
    return {ENVELOPE_FIELD: data, SIGNATURE_FIELD: key.sign(data)}


def _unsigned_fate(fields: dict[str, bytes]) -> Fate:
    """What the bus does with an entry nobody holding the secret signed: no envelope field, malformed; else its
    signature (absent, random or another key's) is wrong."""
    return "bad_signature" if ENVELOPE_FIELD in fields else "malformed"


def _payload_span(envelope: bytes) -> tuple[int, int]:
    """Where the payload's bytes lie in the serialized ``envelope`` (a cut strictly inside them cannot decode)."""
    payload = BusEnvelope.FromString(envelope).payload
    start = envelope.index(payload)
    return start, start + len(payload)


def _signed_broken(key: SigningKey, template: bytes) -> dict[str, bytes]:
    """Signed entries that cannot be decoded, by kind (all dead-lettered)."""
    start, end = _payload_span(template)
    cut = (start + end) // 2
    return {
        "signed, truncated inside the payload": template[:cut],
        "signed, a string field that is not UTF-8": template + _SOURCE_NOT_UTF8,
        "signed, an unknown message type": BusEnvelope(
            message_type=BusMessageType.ValueType(_UNKNOWN_TYPE), payload=b"x"
        ).SerializeToString(),
        "signed, a payload that cannot be decoded": BusEnvelope(
            message_type=bus_message_type_of(FieldReport()), payload=_TRUNCATED_FIELD
        ).SerializeToString(),
        "signed, delivered far beyond max_attempts": BusEnvelope(
            message_type=bus_message_type_of(FieldReport()), attempt=2**32 - 1
        ).SerializeToString(deterministic=True),
    }


def poison_corpus(key: SigningKey, *, huge_bytes: int = 1 << 20) -> list[BadEntry]:
    """One bad entry of every kind (fixed: the same list every call for the same key), each with its fate.

    ``huge_bytes`` is the size of the huge envelope (a 1 MiB field by default); the huge field name is a sixteenth
    of it."""
    rng = random.Random(0x0B5E55ED)
    template = template_envelope()
    signature = key.sign(template)
    other = SigningKey(bytes(range(1, 33)) if key.secret != bytes(range(1, 33)) else bytes(range(2, 34)))
    flipped = bytearray(template)
    flipped[len(flipped) // 2] ^= 0x01
    garbage = rng.randbytes(200)
    name_not_utf8 = b"\xff".decode("utf-8", "surrogateescape")
    unsigned: dict[str, dict[str, bytes]] = {
        "a field name that is not UTF-8 (redis-cli XADD s '*' $'\\xff' x)": {name_not_utf8: b"x"},
        "field names and values that are not UTF-8": {
            b"\xc3\x28".decode("utf-8", "surrogateescape"): b"\xff\xfe",
            b"env\xe2\x82".decode("utf-8", "surrogateescape"): b"\x80",
        },
        "the envelope's name misspelt with a byte that is not UTF-8": {
            ENVELOPE_FIELD + name_not_utf8: template,
            SIGNATURE_FIELD: signature,
        },
        "no envelope field": {SIGNATURE_FIELD: signature, "n": b"1"},
        "an empty entry": {},
        "random bytes": {ENVELOPE_FIELD: garbage, SIGNATURE_FIELD: rng.randbytes(32)},
        "random bytes, no signature": {ENVELOPE_FIELD: garbage},
        "an empty envelope, no signature": {ENVELOPE_FIELD: b""},
        "a valid envelope, truncated": {ENVELOPE_FIELD: template[: len(template) // 2], SIGNATURE_FIELD: signature},
        "a valid envelope with a flipped bit": {ENVELOPE_FIELD: bytes(flipped), SIGNATURE_FIELD: signature},
        "a valid envelope signed with another key": {ENVELOPE_FIELD: template, SIGNATURE_FIELD: other.sign(template)},
        "a valid envelope with a signature that is not UTF-8": {ENVELOPE_FIELD: template, SIGNATURE_FIELD: b"\xff"},
        "a valid envelope with a field of the wrong wire type": {
            ENVELOPE_FIELD: template + _PAYLOAD_AS_VARINT,
            SIGNATURE_FIELD: signature,
        },
        "a string field that is not UTF-8, unsigned": {ENVELOPE_FIELD: template + _SOURCE_NOT_UTF8},
        "a huge envelope": {ENVELOPE_FIELD: rng.randbytes(huge_bytes), SIGNATURE_FIELD: rng.randbytes(32)},
        "a huge field name": {"n" * (huge_bytes // 16): b"x"},
    }
    corpus = [BadEntry(kind, fields, _unsigned_fate(fields)) for kind, fields in unsigned.items()]
    for kind, data in _signed_broken(key, template).items():
        corpus.append(BadEntry(kind, _signed(key, data), "dead_letter"))
    junk = _signed(key, template + _SOURCE_NOT_UTF8)
    junk[b"\xfe\xff".decode("utf-8", "surrogateescape")] = b"junk"
    corpus.append(BadEntry("signed and undecodable, with a field name that is not UTF-8", junk, "dead_letter"))
    return corpus


def write(backend: BusBackend, stream: str, entry: BadEntry) -> bool:
    """Write ``entry`` on ``stream`` through ``backend``, as anyone who can reach the backend could; return whether it
    was stored. Only an empty entry may be refused (Redis has no empty entries, so no consumer can be handed one);
    a backend that refuses anything else cannot hold what anyone can write to Redis, and the refusal is raised."""
    if entry.fields:
        backend.publish(stream, entry.fields)
        return True
    try:
        backend.publish(stream, entry.fields)
    except (ValueError, EsperError):
        return False
    return True


# -- hypothesis ----------------------------------------------------------------------------------------------------
#: Field names that are not UTF-8 (a lone continuation byte first), as the backend protocol writes them.
_names_not_utf8 = st.binary(max_size=11).map(lambda raw: (b"\x80" + raw).decode("utf-8", "surrogateescape"))
_field_names = st.one_of(
    st.sampled_from([ENVELOPE_FIELD, SIGNATURE_FIELD, "Envelope", "reason", "n", ""]),
    st.text(max_size=12),
    _names_not_utf8,
)


@st.composite
def _random_fields(draw: st.DrawFn) -> BadEntry:
    fields = draw(st.dictionaries(_field_names, st.binary(max_size=64), min_size=1, max_size=5))
    return BadEntry("random fields", fields, _unsigned_fate(fields))


@st.composite
def _tampered(draw: st.DrawFn, key: SigningKey, template: bytes) -> BadEntry:
    """The template envelope, damaged or re-signed by someone without the secret."""
    signature = key.sign(template)
    how = draw(st.sampled_from(["truncated", "flipped", "other key", "garbage", "wire type", "not utf-8"]))
    if how == "truncated":
        data = template[: draw(st.integers(0, len(template) - 1))]
    elif how == "flipped":
        position = draw(st.integers(0, len(template) - 1))
        damaged = bytearray(template)
        damaged[position] ^= draw(st.integers(1, 255))
        data = bytes(damaged)
    elif how == "garbage":
        data = draw(st.binary(max_size=256))
    elif how == "wire type":
        data = template + _PAYLOAD_AS_VARINT
    elif how == "not utf-8":
        data = template + _SOURCE_NOT_UTF8
    else:
        data = template
    if how == "other key":
        secret = draw(st.binary(min_size=MIN_SECRET_BYTES, max_size=32).filter(lambda raw: raw != key.secret))
        signature = SigningKey(secret).sign(data)
    else:
        signature = draw(st.sampled_from([signature, b"", b"\xff" * 32])) if data != template else b"\x00" * 32
    fields = {ENVELOPE_FIELD: data}
    if signature:
        fields[SIGNATURE_FIELD] = signature
    if draw(st.booleans()):  # with a field name that is not UTF-8 besides
        fields[draw(_names_not_utf8)] = draw(st.binary(max_size=16))
    return BadEntry(f"tampered: {how}", fields, "bad_signature")


def bad_entries(key: SigningKey, *, signed: bool = True) -> st.SearchStrategy[BadEntry]:
    """Bad entries of every kind: random fields (names that are not UTF-8 included), the template envelope damaged
    (truncated, bits flipped, random bytes, a field of the wrong wire type, a string that is not UTF-8) or signed
    with another key, and, with ``signed``, entries signed with ``key`` that cannot be decoded."""
    template = template_envelope()
    kinds = [_random_fields(), _tampered(key, template)]
    if signed:
        broken = _signed_broken(key, template)
        kinds.append(
            st.sampled_from(sorted(broken)).map(lambda kind: BadEntry(kind, _signed(key, broken[kind]), "dead_letter"))
        )
    return st.one_of(*kinds)


__all__ = ["COUNTER", "BadEntry", "Fate", "bad_entries", "poison_corpus", "template_envelope", "write"]
