"""The append-only log: every whole, intact record survives any truncation, any corrupted byte and any crash."""

from __future__ import annotations

import random
import signal
import sys
import time
import zlib

import pytest

from esper_core.storage import AppendOnlyLog, LogScan, appendlog, read_records
from esper_core.storage.appendlog import HEADER_SIZE, MAGIC, MAX_RECORD_BYTES, encode_record, scan
from esper_core.testing.processes import Child

PAYLOADS = [
    b"first record",
    b"",
    bytes(range(256)) * 3,
    b"before" + MAGIC + b"after" + MAGIC,
    b"x" * 100,
    b"\x00",
]


def build_log(payloads: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """The log bytes and the [start, end) span of each record."""
    data = b""
    spans = []
    for payload in payloads:
        start = len(data)
        data += encode_record(payload)
        spans.append((start, len(data)))
    return data, spans


def test_record_layout():
    record = encode_record(b"abc")
    assert record.startswith(MAGIC)
    assert len(record) == HEADER_SIZE + 3 == 19
    assert record.endswith(b"abc")
    assert scan(record) == LogScan([b"abc"], 19, 0)


def test_empty_and_missing_logs(tmp_path):
    assert scan(b"") == LogScan([], 0, 0)
    assert read_records(tmp_path / "missing.log") == []


def test_every_truncation_keeps_exactly_the_whole_records(tmp_path):
    """A crash can cut the file at any byte; the reader must return exactly the records that were complete."""
    data, spans = build_log(PAYLOADS)
    path = tmp_path / "cut.log"
    for k in range(len(data) + 1):
        whole = [payload for payload, (_, end) in zip(PAYLOADS, spans, strict=True) if end <= k]
        found = scan(data[:k])
        assert found.records == whole, f"truncated at byte {k}"
        last_end = max((end for _, end in spans if end <= k), default=0)
        assert found.end_of_last_record == last_end
        assert found.skipped_bytes == k - last_end
        if k % 97 == 0 or k == len(data):
            path.write_bytes(data[:k])
            assert read_records(path) == whole


def test_every_corrupted_byte_loses_only_its_own_record():
    """Flipping any one byte (header or payload) loses the record containing it, and no other."""
    data, spans = build_log(PAYLOADS)
    for k in range(len(data)):
        damaged_index = next(i for i, (start, end) in enumerate(spans) if start <= k < end)
        corrupted = bytearray(data)
        corrupted[k] ^= 0xFF
        found = scan(bytes(corrupted))
        expected = [payload for i, payload in enumerate(PAYLOADS) if i != damaged_index]
        assert found.records == expected, f"byte {k} in record {damaged_index}"
        start, end = spans[damaged_index]
        assert found.skipped_bytes == end - start


def _crc32_suffix(data: bytes, target: int) -> bytes:
    """Four bytes that, appended to ``data``, make its CRC32 equal ``target`` (CRC32 is affine over GF(2))."""
    base = zlib.crc32(data + bytes(4))
    basis: dict[int, tuple[int, int]] = {}  # top bit -> (xor of CRC changes, the suffix bits producing it)
    for bit in range(32):
        change, combo = zlib.crc32(data + (1 << bit).to_bytes(4, "little")) ^ base, 1 << bit
        for pivot in sorted(basis, reverse=True):
            if change >> pivot & 1:
                change, combo = change ^ basis[pivot][0], combo ^ basis[pivot][1]
        if change:
            basis[change.bit_length() - 1] = (change, combo)
    want, chosen = target ^ base, 0
    for pivot in sorted(basis, reverse=True):
        if want >> pivot & 1:
            want, chosen = want ^ basis[pivot][0], chosen ^ basis[pivot][1]
    assert want == 0
    return chosen.to_bytes(4, "little")


def test_torn_record_whose_prefix_matches_the_checksum_is_refused():
    """The length is checked, not only the CRC: a payload cut short is refused even if the CRCs happen to agree."""
    prefix = b"the part written before the crash"
    payload = prefix + _crc32_suffix(prefix, zlib.crc32(prefix))
    assert zlib.crc32(payload) == zlib.crc32(prefix)
    torn = encode_record(payload)[: HEADER_SIZE + len(prefix)]
    assert scan(encode_record(b"ok") + torn).records == [b"ok"]


def test_corruption_in_several_records_loses_only_those():
    data, spans = build_log(PAYLOADS)
    corrupted = bytearray(data)
    for index in (0, 3, 5):
        corrupted[spans[index][0] + HEADER_SIZE - 1] ^= 0x01  # the header checksum
    assert scan(bytes(corrupted)).records == [PAYLOADS[1], PAYLOADS[2], PAYLOADS[4]]


def test_garbage_between_records_is_skipped():
    data = encode_record(b"one") + b"garbage" + MAGIC + b"more garbage" + encode_record(b"two")
    found = scan(data)
    assert found.records == [b"one", b"two"]
    assert found.skipped_bytes == len(b"garbage" + MAGIC + b"more garbage")


def test_header_claiming_an_oversized_record_is_corrupt(monkeypatch):
    """A length above the limit is treated as corruption, so a damaged length field cannot make the reader
    swallow the rest of the log as one payload."""
    big = encode_record(b"x" * 11)
    monkeypatch.setattr(appendlog, "MAX_RECORD_BYTES", 10)
    assert scan(big + encode_record(b"ok")).records == [b"ok"]


# --- AppendOnlyLog ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False])
def test_append_and_read_back(tmp_path, sync):
    path = tmp_path / "sub" / "events.log"
    with AppendOnlyLog(path, sync=sync) as log:
        assert log.record_count == 0
        assert log.repaired_bytes == 0
        for payload in PAYLOADS:
            log.append(payload)
        assert log.record_count == len(PAYLOADS)
        assert list(log.records()) == PAYLOADS
    assert read_records(path) == PAYLOADS


def test_reopening_counts_and_continues(tmp_path):
    path = tmp_path / "events.log"
    with AppendOnlyLog(path) as log:
        log.append(b"a")
        log.append(b"b")
    with AppendOnlyLog(path) as log:
        assert log.record_count == 2
        assert log.repaired_bytes == 0
        log.append(b"c")
        assert log.record_count == 3
    assert read_records(path) == [b"a", b"b", b"c"]


@pytest.mark.parametrize("cut", [1, 4, HEADER_SIZE, HEADER_SIZE + 5])
def test_torn_tail_is_cut_and_appends_follow_the_good_records(tmp_path, cut):
    path = tmp_path / "events.log"
    good = encode_record(b"one") + encode_record(b"two") + encode_record(b"three")
    torn = encode_record(b"a record that was being written")[:cut]
    path.write_bytes(good + torn)
    with AppendOnlyLog(path) as log:
        assert log.repaired_bytes == len(torn)
        assert log.record_count == 3
        assert path.stat().st_size == len(good)
        log.append(b"four")
        log.append(b"five")
    assert read_records(path) == [b"one", b"two", b"three", b"four", b"five"]
    assert path.read_bytes() == good + encode_record(b"four") + encode_record(b"five")


def test_torn_tail_on_a_log_with_no_whole_record(tmp_path):
    path = tmp_path / "events.log"
    path.write_bytes(encode_record(b"never finished")[:-1])
    with AppendOnlyLog(path) as log:
        assert log.record_count == 0
        assert log.repaired_bytes == HEADER_SIZE + len(b"never finished") - 1
        log.append(b"first")
    assert read_records(path) == [b"first"]


def test_oversized_record_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "events.log"
    with AppendOnlyLog(path) as log:
        log.append(b"ok")
        with pytest.raises(ValueError, match="at most"):
            log.append(bytes(MAX_RECORD_BYTES + 1))
        assert log.record_count == 1
    assert read_records(path) == [b"ok"]
    assert path.stat().st_size == HEADER_SIZE + 2


def test_record_size_limit_is_inclusive(monkeypatch):
    monkeypatch.setattr(appendlog, "MAX_RECORD_BYTES", 8)
    assert scan(encode_record(b"12345678")).records == [b"12345678"]
    with pytest.raises(ValueError):
        encode_record(b"123456789")


def test_close_is_idempotent(tmp_path):
    log = AppendOnlyLog(tmp_path / "events.log")
    log.append(b"x")
    log.close()
    log.close()
    assert read_records(tmp_path / "events.log") == [b"x"]


# --- a writer killed at any moment -----------------------------------------------------------------------------

_WRITER = """
import sys
from esper_core.storage import AppendOnlyLog

def payload(i):
    return b"%08d|" % i + bytes([i % 251]) * ((i * 7919) % 40_000)

log = AppendOnlyLog(sys.argv[1], sync=sys.argv[2] == "1")
i = log.record_count
log.append(payload(i))
i += 1
print("ready", flush=True)  # reopened (any torn tail cut) and one more record written: progress is certain
while True:
    log.append(payload(i))
    i += 1
"""


def expected_payload(i: int) -> bytes:
    return b"%08d|" % i + bytes([i % 251]) * ((i * 7919) % 40_000)


def test_killed_writer_leaves_an_in_order_prefix(tmp_path):
    """SIGKILL a writer at random moments, reopening the same log each time: the records read back are always
    exactly the sequence it wrote, whole, in order, with no gap (a torn record is cut off on reopening)."""
    rng = random.Random(99)
    path = tmp_path / "crash.log"
    recovered = 0
    for run in range(6):
        with Child([sys.executable, "-c", _WRITER, str(path), str(run % 2)]) as writer:
            writer.wait_for("ready")
            time.sleep(rng.uniform(0.0, 0.1))  # not synchronisation: the random moment of the kill is the test
            assert writer.kill() == -signal.SIGKILL, "the writer died on its own"
        records = read_records(path)
        assert records == [expected_payload(i) for i in range(len(records))]
        assert len(records) > recovered, "the writer made progress and lost nothing already written"
        recovered = len(records)
    with AppendOnlyLog(path) as log:
        assert log.record_count == recovered
        log.append(b"after the crashes")
    assert read_records(path)[-1] == b"after the crashes"
    assert len(read_records(path)) == recovered + 1
