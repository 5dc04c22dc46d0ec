"""The ``elasticsearch`` telemetry sink against a real Elasticsearch-compatible server (``osmem-server`` on 127.0.0.1,
started by the ``elasticsearch_server`` fixtures): documents, ids, indices and mappings; no duplicates; a server
that goes away and comes back; the buffer bound; partly failed bulks; retention; configuration errors.

Each test writes under an index prefix of its own, so tests sharing the session's server never see each other's
indices. The server keeps everything in memory: a restarted one is empty.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from esper_core.config import load_config
from esper_core.errors import ConfigError
from esper_core.leyline import HealthStatus, TelemetryPacket
from esper_core.protocols import TelemetrySink
from esper_core.telemetry import WARNING, Event, build_telemetry_packet
from esper_core.testing.conformance import TelemetrySinkConformance
from esper_core.testing.servers import ElasticsearchCompatibleServer, free_port
from esper_nissa.elastic import ElasticsearchOptions, build_elasticsearch_sink
from esper_nissa.elastic.client import build_client, plain_media_type
from esper_nissa.elastic.documents import documents_of
from esper_nissa.elastic.errors import ElasticsearchSinkError
from esper_nissa.elastic.reader import read_run
from esper_nissa.elastic.sink import ElasticsearchSink

pytestmark = pytest.mark.slow  # starts servers

#: 2026-11-22T03:50:03.376853584Z
STAMP_NS = 1_795_319_403_376_853_584
DAY_NS = 86_400 * 1_000_000_000


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def es(elasticsearch_server: ElasticsearchCompatibleServer) -> Iterator[Any]:
    """A client for checking what landed (the production client: plain JSON media types)."""
    client = build_client(ElasticsearchOptions(url=elasticsearch_server.url))
    yield client
    client.close()


def options(url: str, prefix: str, **overrides: Any) -> ElasticsearchOptions:
    settings: dict[str, Any] = {
        "url": url,
        "index_prefix": prefix,
        "retention_days": 0,
        "request_timeout_s": 5.0,
        "max_retries": 0,
        "retry_after_s": 0.0,
    }
    settings.update(overrides)
    return ElasticsearchOptions(**settings)


def packet(
    index: int = 1, *, run: str = "run-a", stamp_ns: int = STAMP_NS, source: str = "tamiyo", packet_id: str = ""
) -> TelemetryPacket:
    """A realistic packet: three metrics (one NaN, one labelled) and one event of each kind the sink routes."""
    return build_telemetry_packet(
        source=source,
        metrics=[
            ("tamiyo.decision.latency_ms", 0.25 * index, "ms"),
            ("tolaria.validation.loss", float("nan")),
            ("kasmina.seeds.active", float(index)),
        ],
        events=[
            Event("decision", f"germinate at epoch {index}", attributes={"operation": "germinate", "slot": "s0"}),
            Event("seed_transition", "s0: DORMANT -> GERMINATED", attributes={"slot": "s0", "stage": "GERMINATED"}),
            Event(
                "field_report",
                "s0 reported",
                attributes={"slot": "s0", "blueprint": "BP052", "outcome": "SUCCESS", "contribution": "0.0425"},
            ),
            Event("gate_failure", "G1 failed", WARNING, {"gate": "G1", "check.name": "gradient"}),
        ],
        training_run_id=run,
        epoch=index,
        global_step=100 * index,
        timestamp_ns=stamp_ns + index * 1_000_000,
        packet_id=packet_id,
        indicators={"workers": "3"},
    )


def identity(sent: TelemetryPacket, n: int = 0) -> str:
    """The id of ``sent``'s telemetry document when it is the ``n``-th packet (from 0) of its run, source, epoch and
    step that the sink saw: ``<run>:<source>:<epoch>:<global_step>:<n>``. Written out here from the documented
    scheme, not asked of the sink, so that a change of ids fails these tests."""
    return f"{sent.training_run_id}:{sent.source_subsystem}:{sent.epoch}:{sent.global_step}:{n}"


def expected_ids(sent: TelemetryPacket, n: int = 0) -> list[str]:
    """The ids of every document of ``sent`` (a run's packet): the telemetry document's, then ``<that>:<event_id>``
    for each event, in the packet's order."""
    base = identity(sent, n)
    return [base, *(f"{base}:{event.event_id}" for event in sent.events)]


def run_count(client: Any, prefix: str, run: str | None = None, kind: str = "*") -> int:
    indices = f"{prefix}-{kind}-*"
    client.indices.refresh(index=indices, ignore_unavailable=True, allow_no_indices=True)
    query = {"match_all": {}} if run is None else {"term": {"run_id": run}}
    return int(client.count(index=indices, query=query, ignore_unavailable=True, allow_no_indices=True)["count"])


def ids(client: Any, prefix: str) -> set[str]:
    client.indices.refresh(index=f"{prefix}-*")
    hits = client.search(index=f"{prefix}-*", query={"match_all": {}}, size=1000)["hits"]["hits"]
    return {hit["_id"] for hit in hits}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestElasticsearchSinkConformance(TelemetrySinkConformance):
    """Any valid packet (hypothesis draws them: odd strings and map keys, extreme numbers, timestamps up to year
    9999) is accepted and flushed without an error, and nothing of it is refused by the mappings."""

    @pytest.fixture
    def sink(self, elasticsearch_server: ElasticsearchCompatibleServer, prefix: str) -> Iterator[TelemetrySink]:
        sink = ElasticsearchSink(options(elasticsearch_server.url, prefix))
        yield sink
        assert sink.rejected == 0, sink.counters()
        sink.close()


# -- documents, ids, indices, mappings ---------------------------------------------------------------------------


def test_a_packet_lands_as_documents_with_their_ids_indices_and_mappings(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    sink = ElasticsearchSink(options(elasticsearch_server.url, prefix))
    sent = packet(1)
    sink.emit(sent)
    assert sink.buffered == 5 and run_count(es, prefix) == 0, "emit only buffers"
    sink.flush()
    sink.close()
    pid = sent.packet_id
    # A run's packet: its documents are named by where it stands in the run (run, source, epoch, step, and the
    # first packet of that place), not by its packet id; the packet id is still a field of every document.
    base = "run-a:tamiyo:1:100:0"
    assert identity(sent) == base and pid != base
    day = "2026.11.22"
    expected = {
        f"{prefix}-telemetry-{day}": base,
        f"{prefix}-decisions-{day}": f"{base}:evt-1",
        f"{prefix}-lifecycle-{day}": f"{base}:evt-2",
        f"{prefix}-field-reports-{day}": f"{base}:evt-3",
        f"{prefix}-events-{day}": f"{base}:evt-4",
    }
    for index, document_id in expected.items():
        assert es.exists(index=index, id=document_id), (index, document_id)
    assert ids(es, prefix) == set(expected.values())
    assert sink.counters()["indexed"] == 5 and sink.counters()["failed_attempts"] == 0

    telemetry = es.get(index=f"{prefix}-telemetry-{day}", id=base)["_source"]
    assert telemetry["@timestamp"] == "2026-11-22T03:50:03.377853584Z"
    common = {"run_id": "run-a", "source": "tamiyo", "epoch": 1, "global_step": 100, "packet_id": pid}
    assert common.items() <= telemetry.items()
    assert telemetry["kind"] == "telemetry" and telemetry["level"] == "WARNING" and telemetry["priority"] == "NORMAL"
    assert telemetry["health"] == {"status": "HEALTHY", "summary": "", "indicators": {"workers": "3"}}
    assert telemetry["event_count"] == 4
    assert telemetry["metrics"] == [
        {"name": "tamiyo.decision.latency_ms", "value": 0.25, "unit": "ms"},
        {"name": "tolaria.validation.loss", "value": None, "unit": "", "special": "NaN"},
        {"name": "kasmina.seeds.active", "value": 1.0, "unit": ""},
    ]
    report = es.get(index=f"{prefix}-field-reports-{day}", id=f"{base}:evt-3")["_source"]
    assert common.items() <= report.items()
    assert report["event"] == "field_report" and report["seq"] == 3 and report["contribution"] == 0.0425
    assert report["attributes"] == {"slot": "s0", "blueprint": "BP052", "outcome": "SUCCESS", "contribution": "0.0425"}
    gate = es.get(index=f"{prefix}-events-{day}", id=f"{base}:evt-4")["_source"]
    assert gate["level"] == "WARNING" and gate["attributes"] == {"gate": "G1", "check_name": "gradient"}

    mappings = es.indices.get_mapping(index=f"{prefix}-telemetry-{day}")[f"{prefix}-telemetry-{day}"]["mappings"]
    assert mappings["dynamic"] == "strict"
    fields = mappings["properties"]
    assert fields["@timestamp"]["type"] == "date"
    assert fields["run_id"]["type"] == fields["packet_id"]["type"] == fields["source"]["type"] == "keyword"
    assert fields["epoch"]["type"] == fields["global_step"]["type"] == "long"
    assert fields["metrics"]["type"] == "nested"
    assert fields["metrics"]["properties"]["value"]["type"] == "double"
    assert fields["metrics"]["properties"]["name"]["type"] == "keyword"
    decisions = es.indices.get_mapping(index=f"{prefix}-decisions-{day}")[f"{prefix}-decisions-{day}"]["mappings"]
    assert decisions["properties"]["attributes"]["properties"]["operation"]["type"] == "keyword"
    assert decisions["properties"]["description"]["type"] == "text"


def test_the_mappings_are_strict_and_metrics_are_queryable_by_name(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    with ElasticsearchSink(options(elasticsearch_server.url, prefix)) as sink:
        for index in range(1, 4):
            sink.emit(packet(index))
        sink.flush()
    index = f"{prefix}-telemetry-2026.11.22"
    with pytest.raises(Exception, match="strict"):
        es.index(index=index, id="stray", document={"run_id": "x", "unexpected": 1})
    es.indices.refresh(index=index)
    found = es.search(
        index=index,
        query={
            "nested": {
                "path": "metrics",
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"metrics.name": "kasmina.seeds.active"}},
                            {"range": {"metrics.value": {"gte": 2}}},
                        ]
                    }
                },
            }
        },
    )
    assert sorted(hit["_source"]["epoch"] for hit in found["hits"]["hits"]) == [2, 3]
    operations = es.search(
        index=f"{prefix}-decisions-*", size=0, aggs={"ops": {"terms": {"field": "attributes.operation"}}}
    )
    assert operations["aggregations"]["ops"]["buckets"] == [{"key": "germinate", "doc_count": 3}]


# -- no duplicates ---------------------------------------------------------------------------------------------------


def test_the_same_packet_twice_and_a_resent_batch_never_duplicate(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    url = elasticsearch_server.url
    first, second = packet(1), packet(2)
    with ElasticsearchSink(options(url, prefix)) as sink:
        sink.emit(first)
        sink.emit(first)  # relayed twice, both copies in one bulk
        sink.flush()
        assert run_count(es, prefix) == 5
        sink.emit(first)  # and again in a later bulk
        sink.emit(second)
        sink.flush()
    assert run_count(es, prefix) == 10
    # Another sink (a restarted process) sends the same packets again: every document overwrites itself.
    with ElasticsearchSink(options(url, prefix)) as again:
        again.emit(first)
        again.emit(second)
        again.flush()
        assert again.counters()["indexed"] == 10
    assert run_count(es, prefix) == 10
    assert ids(es, prefix) == {*expected_ids(first), *expected_ids(second)}


#: An hour after STAMP_NS: the same UTC day (2026-11-22T04:50Z).
LATER_NS = STAMP_NS + 3600 * 1_000_000_000


def places(documents: list[dict[str, Any]]) -> Counter[tuple[str, str, int, int, int]]:
    """How many documents read back at each place: kind, source, epoch, global step and place in the packet."""
    return Counter((d["kind"], d["source"], d["epoch"], d["global_step"], d["seq"]) for d in documents)


def test_a_resumed_run_overwrites_the_documents_of_the_killed_attempt(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    """A run killed after step 3, whose last checkpoint was step 1: the resumed process builds a new sink (the same
    options) and emits steps 2 and 3 again as new packets (new timestamps, so new packet ids), then step 4. The run
    reads back with every place once, the repeated places holding the resumed run's documents. Kasmina emits two
    packets per step here: each keeps its own place (the first and the second of that step), in both attempts."""
    url = elasticsearch_server.url

    def step(index: int, stamp_ns: int) -> list[TelemetryPacket]:
        return [
            packet(index, source="tolaria", stamp_ns=stamp_ns),
            packet(index, source="tamiyo", stamp_ns=stamp_ns),
            packet(index, source="kasmina", stamp_ns=stamp_ns),
            packet(index, source="kasmina", stamp_ns=stamp_ns + 500_000_000),
        ]

    killed = [sent for index in (1, 2, 3) for sent in step(index, STAMP_NS)]
    resumed = [sent for index in (2, 3, 4) for sent in step(index, LATER_NS)]
    assert not {p.packet_id for p in killed} & {p.packet_id for p in resumed}, "the resumed run's packets are new"
    with ElasticsearchSink(options(url, prefix)) as attempt:
        for sent in killed:
            attempt.emit(sent)
        attempt.flush()
    assert run_count(es, prefix, run="run-a") == 3 * 4 * 5
    with ElasticsearchSink(options(url, prefix)) as again:
        for sent in resumed:
            again.emit(sent)
        again.flush()
        assert again.counters()["indexed"] == 3 * 4 * 5

    documents = read_run(es, prefix, "run-a")
    assert len(documents) == run_count(es, prefix, run="run-a") == 4 * 4 * 5, "steps 2 and 3 are not doubled"
    counted = places(documents)
    assert {(source, epoch) for _, source, epoch, _, _ in counted} == {
        (source, epoch) for source in ("tolaria", "tamiyo", "kasmina") for epoch in (1, 2, 3, 4)
    }, "step 4 is there"
    assert all(n == (2 if place[1] == "kasmina" else 1) for place, n in counted.items()), counted
    # Step 1 is the killed attempt's (not emitted again); steps 2 and 3 were overwritten by the resumed run's.
    assert {d["packet_id"] for d in documents} == {p.packet_id for p in killed[:4] + resumed}
    assert {d["@timestamp"][:13] for d in documents if d["epoch"] >= 2} == {"2026-11-22T04"}
    numbered = [0, 0, 0, 1]  # within each step: tolaria, tamiyo, then kasmina's first and second packet
    expected = {
        document_id
        for sent, n in zip(killed[:4] + resumed, numbered * 4, strict=True)
        for document_id in expected_ids(sent, n)
    }
    assert ids(es, prefix) == expected


def test_a_resumed_run_counts_on_from_its_checkpoint(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    """Tolaria keeps the sink's counts per place in every checkpoint and gives them to the resumed process's sink
    before it emits anything. A packet the resumed run emits at a place used before the checkpoint (Urza's at step
    0 on every start, a rollback's at the checkpoint's step) is then a new document beside the killed attempt's,
    which is not emitted again; the places after the checkpoint are still overwritten."""
    url = elasticsearch_server.url
    with ElasticsearchSink(options(url, prefix)) as attempt:
        attempt.emit(packet(1))
        checkpoint = attempt.state_dict()  # the checkpoint after step 1
        attempt.emit(packet(2))
        attempt.emit(packet(3))
        attempt.flush()
    import torch

    stored = io.BytesIO()  # through a checkpoint's round trip: torch.save, then torch.load with weights_only
    torch.save(checkpoint, stored)
    stored.seek(0)
    saved = torch.load(stored, weights_only=True)
    assert saved == checkpoint
    again = ElasticsearchSink(options(url, prefix))
    again.load_state_dict(saved)
    at_the_checkpoint = packet(1, stamp_ns=LATER_NS)  # a new packet at step 1's place
    resumed = [packet(index, stamp_ns=LATER_NS) for index in (2, 3, 4)]
    for sent in [at_the_checkpoint, *resumed]:
        again.emit(sent)
    again.close()

    documents = read_run(es, prefix, "run-a")
    assert len(documents) == 5 * 5
    counted = places(documents)
    assert all(n == (2 if place[2] == 1 else 1) for place, n in counted.items()), counted
    assert {d["packet_id"] for d in documents} == {p.packet_id for p in [packet(1), at_the_checkpoint, *resumed]}
    assert ids(es, prefix) == {
        *expected_ids(packet(1), 0),
        *expected_ids(at_the_checkpoint, 1),
        *(document_id for sent in resumed for document_id in expected_ids(sent, 0)),
    }


def test_a_resume_on_a_later_utc_day_lands_beside_the_killed_attempt(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    """The limit of the ids (docs/nissa.md says so): the index is dated by the packet's own timestamp,
    so a place emitted again on a later UTC day gets the same id in another daily index, and both stay."""
    url = elasticsearch_server.url
    with ElasticsearchSink(options(url, prefix)) as attempt:
        attempt.emit(packet(1))
        attempt.flush()
    with ElasticsearchSink(options(url, prefix)) as again:
        again.emit(packet(1, stamp_ns=STAMP_NS + DAY_NS))
        again.flush()
    documents = read_run(es, prefix, "run-a")
    assert len(documents) == 10 and set(places(documents).values()) == {2}
    assert {d["_id"] for d in documents} == set(expected_ids(packet(1)))
    assert {d["_index"].rsplit("-", 1)[1] for d in documents} == {"2026.11.22", "2026.11.23"}


def test_a_rollback_within_one_sink_keeps_both_attempts(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    """Within one process, a place emitted again by new packets (a rollback repeats steps) is counted on: the first
    and the second attempt both stay, also when Tolaria hands the sink the checkpoint's counts on the rollback. A
    packet relayed again keeps the identity it got the first time."""
    first = [packet(index) for index in (1, 2, 3)]
    notice = packet(1, stamp_ns=STAMP_NS + 1_000_000_000)  # after the checkpoint, at step 1's place
    rollback = packet(1, stamp_ns=LATER_NS - 1_000_000_000)  # Tolaria's rollback packet, at the checkpoint's place
    rolled_back = [packet(index, stamp_ns=LATER_NS) for index in (2, 3)]
    with ElasticsearchSink(options(elasticsearch_server.url, prefix)) as sink:
        sink.emit(first[0])
        checkpoint = sink.state_dict()
        for sent in [*first[1:], notice]:
            sink.emit(sent)
        sink.load_state_dict(checkpoint)  # what Tolaria does on a rollback: the sink counts on all the same
        for sent in [rollback, *rolled_back]:
            sink.emit(sent)
        sink.emit(first[1])  # relayed again after the rollback: still the first of step 2
        sink.emit(rolled_back[0])  # and the repeat again: still the second
        sink.flush()
    documents = read_run(es, prefix, "run-a")
    assert len(documents) == 7 * 5
    counted = places(documents)
    assert all(n == (3 if place[2] == 1 else 2) for place, n in counted.items()), counted
    assert {d["packet_id"] for d in documents} == {p.packet_id for p in [*first, notice, rollback, *rolled_back]}
    assert ids(es, prefix) == {
        *(document_id for sent in first for document_id in expected_ids(sent, 0)),
        *expected_ids(notice, 1),
        *expected_ids(rollback, 2),
        *(document_id for sent in rolled_back for document_id in expected_ids(sent, 1)),
    }


def test_a_packet_without_id_or_timestamp_still_lands_once(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    bare = TelemetryPacket(source_subsystem="plugin", training_run_id="run-a")
    bare.metrics.add(name="plugin.value", value=float("inf"))
    # A packet of no run (a service's) is named by its packet id: here, a digest of its content.
    service = TelemetryPacket(source_subsystem="weatherlight")
    service.metrics.add(name="weatherlight.value", value=1.0)
    with ElasticsearchSink(options(elasticsearch_server.url, prefix)) as sink:
        sink.emit(bare)
        sink.emit(service)
        sink.emit(bare)  # the same content: the same packet, so the same identity (not the second at its place)
        sink.emit(service)
        sink.flush()
    assert run_count(es, prefix) == 2
    assert run_count(es, prefix, run="run-a") == 1
    service_id = ids(es, prefix) - {"run-a:plugin:0:0:0"}
    assert len(service_id) == 1 and next(iter(service_id)).startswith("sha1-"), ids(es, prefix)
    es.indices.refresh(index=f"{prefix}-*")
    (hit,) = es.search(index=f"{prefix}-*", query={"term": {"run_id": "run-a"}})["hits"]["hits"]
    assert hit["_id"] == "run-a:plugin:0:0:0" and hit["_source"]["packet_id"].startswith("sha1-")


# -- emit, flush, close ----------------------------------------------------------------------------------------------


def test_emit_sends_only_full_batches(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    sink = ElasticsearchSink(options(elasticsearch_server.url, prefix, batch_size=10, max_buffered=100))
    sink.emit(packet(1))
    assert sink.buffered == 5 and run_count(es, prefix) == 0
    sink.emit(packet(2))  # 10 waiting: one full batch goes out without a flush
    assert sink.buffered == 0 and run_count(es, prefix) == 10
    sink.emit(packet(3))
    assert sink.buffered == 5
    sink.close()  # the last flush
    assert run_count(es, prefix) == 15
    sink.close()  # again: nothing
    with pytest.raises(ValueError, match="closed"):
        sink.emit(packet(4))
    sink.flush()  # after close: nothing to do, no error


def test_flush_sends_whatever_is_left_in_batches(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    sink = ElasticsearchSink(options(elasticsearch_server.url, prefix, batch_size=7, max_buffered=100))
    for index in range(1, 7):
        sink.emit(packet(index))  # 30 documents: emit sends 4 full batches of 7 on its own
    assert sink.buffered == 2 and sink.indexed == 28 and run_count(es, prefix) == 28
    sink.flush()
    assert sink.buffered == 0 and sink.indexed == 30 and run_count(es, prefix) == 30
    sink.close()


# -- the server goes away and comes back ----------------------------------------------------------------------------


def test_a_stopped_server_keeps_documents_buffered_until_it_is_back(
    elasticsearch_server_factory: Callable[..., ElasticsearchCompatibleServer], prefix: str
) -> None:
    server = elasticsearch_server_factory()
    clock = Clock()
    sink = ElasticsearchSink(
        options(server.url, prefix, failure_threshold=2, retry_after_s=30.0), clock=clock, wall_clock=lambda: 0.0
    )
    sink.emit(packet(1))
    sink.flush()

    server.kill()  # SIGKILL by pid
    sink.emit(packet(2))
    sink.emit(packet(3))
    with pytest.raises(ElasticsearchSinkError) as failed:
        sink.flush()
    message = str(failed.value)
    assert server.url in message and "ConnectionError" in message and "10 document(s) stay buffered" in message
    assert sink.buffered == 10 and sink.failed_attempts == 1
    with pytest.raises(ElasticsearchSinkError):
        sink.flush()
    assert sink.failed_attempts == 2, "two failures in a row open the breaker"
    with pytest.raises(ElasticsearchSinkError, match="circuit breaker is open"):
        sink.flush()  # no request at all while the breaker is open
    assert sink.failed_attempts == 2 and sink.buffered == 10

    server.restart()  # the same port; osmem comes back empty (no templates, no documents)
    with pytest.raises(ElasticsearchSinkError, match="circuit breaker is open"):
        sink.flush()
    clock.now += 30.0
    sink.flush()  # the probe delivers everything buffered
    assert sink.buffered == 0
    client = build_client(ElasticsearchOptions(url=server.url))
    try:
        assert run_count(client, prefix) == 10, "exactly once: packets 2 and 3 (the restarted server lost packet 1)"
        assert ids(client, prefix) == {*expected_ids(packet(2)), *expected_ids(packet(3))}
        mappings = client.indices.get_mapping(index=f"{prefix}-telemetry-*")
        assert all(m["mappings"]["dynamic"] == "strict" for m in mappings.body.values()), "templates put again"
        sink.flush()
        sink.emit(packet(3))
        sink.flush()
        assert run_count(client, prefix) == 10
    finally:
        client.close()
    sink.close()


def test_emit_never_raises_when_the_server_is_away(prefix: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    sink = ElasticsearchSink(options(nowhere, prefix, batch_size=5, max_buffered=50))
    for index in range(1, 5):
        sink.emit(packet(index))  # full batches are tried (the first one), then left to flush
    assert sink.buffered == 20 and sink.failed_attempts == 1
    with pytest.raises(ElasticsearchSinkError, match=rf"{re.escape(nowhere)}, now lost"):
        sink.close()
    assert sink.abandoned == 20 and sink.closed
    sink.close()


def test_beyond_max_buffered_the_oldest_are_dropped_and_counted(
    elasticsearch_server_factory: Callable[..., ElasticsearchCompatibleServer], prefix: str
) -> None:
    server = elasticsearch_server_factory()
    server.kill()
    sink = ElasticsearchSink(options(server.url, prefix, batch_size=5, max_buffered=12))
    for index in range(1, 5):
        sink.emit(packet(index))  # 20 documents
    assert sink.buffered == 12 and sink.dropped == 8
    with pytest.raises(ElasticsearchSinkError, match="8 dropped so far"):
        sink.flush()
    server.restart()
    sink.flush()
    client = build_client(ElasticsearchOptions(url=server.url))
    try:
        newest = [document_id for i in range(1, 5) for document_id in expected_ids(packet(i))][-12:]
        assert ids(client, prefix) == set(newest)
    finally:
        client.close()
    assert sink.counters()["dropped"] == 8 and sink.counters()["indexed"] == 12
    sink.close()


def test_a_partly_failed_bulk_keeps_only_its_failed_documents(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    """A write block on one day's indices (what a full disk does): that day's documents stay buffered, the rest go;
    once the block is lifted the next flush delivers them."""
    sink = ElasticsearchSink(options(elasticsearch_server.url, prefix))
    sink.emit(packet(1, stamp_ns=STAMP_NS - DAY_NS))  # 2026.11.21: creates that day's indices
    sink.flush()
    blocked = f"{prefix}-*-2026.11.21"
    es.indices.put_settings(index=blocked, settings={"index.blocks.write": True})
    try:
        sink.emit(packet(2, stamp_ns=STAMP_NS - DAY_NS))  # blocked
        sink.emit(packet(3))  # 2026.11.22: fine
        with pytest.raises(ElasticsearchSinkError, match=r"5 of 10 documents.*cluster_block_exception"):
            sink.flush()
        assert sink.buffered == 5
        assert run_count(es, prefix) == 10
    finally:
        es.indices.put_settings(index=blocked, settings={"index.blocks.write": False})
    sink.flush()
    assert sink.buffered == 0 and run_count(es, prefix) == 15 and sink.rejected == 0
    sink.close()


def test_documents_refused_for_good_are_dropped_and_counted_not_retried_forever(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    # Someone made the events index by hand, strict and without fields: the server refuses every document (400).
    es.indices.create(index=f"{prefix}-events-2026.11.22", mappings={"dynamic": "strict", "properties": {}})
    with ElasticsearchSink(options(elasticsearch_server.url, prefix)) as sink:
        sink.emit(packet(1))
        sink.flush()  # no error: the refused document cannot ever be written, so it is not kept
        assert sink.rejected == 1 and sink.buffered == 0 and sink.indexed == 4
    assert run_count(es, prefix) == 4


# -- retention -------------------------------------------------------------------------------------------------------


def test_retention_deletes_only_the_sinks_own_old_indices(
    elasticsearch_server: ElasticsearchCompatibleServer, es: Any, prefix: str
) -> None:
    today = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    now_ns = int(today.timestamp()) * 1_000_000_000
    writer = ElasticsearchSink(options(elasticsearch_server.url, prefix))  # retention 0: keeps everything
    for days in (40, 31, 30, 1, 0):
        writer.emit(packet(days, stamp_ns=now_ns - days * DAY_NS))
    writer.flush()
    foreign = [
        f"other{prefix}-telemetry-2020.01.01",  # another prefix
        f"{prefix}-custom-2020.01.01",  # not one of the sink's kinds
        f"{prefix}-telemetry-2020.13.45",  # not a date
        f"{prefix}-telemetry-archive",
    ]
    for name in foreign:
        es.indices.create(index=name)

    def days_left() -> list[str]:
        names = es.indices.get(index=f"{prefix}-telemetry-*").body
        return sorted(name.rsplit("-", 1)[1] for name in names if name.startswith(f"{prefix}-telemetry-2026"))

    assert days_left() == ["2026.10.13", "2026.10.22", "2026.10.23", "2026.11.21", "2026.11.22"]
    wall = Clock(today.timestamp())
    keeper = ElasticsearchSink(options(elasticsearch_server.url, prefix, retention_days=30), wall_clock=wall)
    keeper.flush()  # the first contact: retention runs even with nothing to send
    assert days_left() == ["2026.10.23", "2026.11.21", "2026.11.22"], "older than 30 days: deleted, every kind"
    kinds = ("telemetry", "decisions", "lifecycle", "field-reports", "events")
    assert sorted(keeper.expired_indices) == sorted(
        f"{prefix}-{kind}-{day}" for kind in kinds for day in ("2026.10.13", "2026.10.22")
    )
    assert all(es.indices.exists(index=name) for name in foreign)
    assert es.indices.exists(index=f"{prefix}-decisions-2026.10.23")

    # At most once a day: an old index that appears now survives until a day has passed.
    writer.emit(packet(50, stamp_ns=now_ns - 50 * DAY_NS))
    writer.flush()
    keeper.emit(packet(7))
    keeper.flush()
    assert es.indices.exists(index=f"{prefix}-telemetry-2026.10.03")
    wall.now += 24 * 3600
    keeper.flush()
    assert not es.indices.exists(index=f"{prefix}-telemetry-2026.10.03")
    assert days_left() == ["2026.11.21", "2026.11.22"], "a day later, 2026.10.23 is past the 30 days too"
    writer.close()
    keeper.close()


# -- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("url='ftp://host:9200'", "url must be an http:// or https:// URL"),
        ("url='http://elastic:secret@host:9200'", "must not carry a user name or password"),
        ("url='http://host:99999'", "invalid port"),
        ("index_prefix='Esper'", "lower case"),
        ("index_prefix='esper*'", "contains '\\*'"),
        ("index_prefix='_esper'", "cannot start with"),
        ("index_prefix=''", "it is empty"),
        ("retention_days=-1", "retention_days cannot be negative"),
        ("batch_size=0", "batch_size must be at least 1"),
        ("max_buffered=10", r"max_buffered \(10\) must be at least batch_size \(500\)"),
        ("request_timeout_s=0", "request_timeout_s must be positive"),
        ("max_retries=-1", "max_retries cannot be negative"),
        ("api_key_env='MY KEY'", "must be the name of an environment variable"),
    ],
)
def test_bad_configuration_values_give_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(sections=[ElasticsearchOptions], env={}, overrides=[f"nissa.elasticsearch.{override}"])
    assert "nissa.elasticsearch" in str(error.value)


def test_the_defaults_and_a_valid_section_load() -> None:
    config = load_config(
        sections=[ElasticsearchOptions],
        env={},
        text='[nissa.elasticsearch]\nurl = "https://es.example:9243"\nindex_prefix = "lab-esper"\nretention_days = 0\n',
    )
    loaded = config.get(ElasticsearchOptions)
    assert loaded.url == "https://es.example:9243" and loaded.index_prefix == "lab-esper"
    assert loaded.retention_days == 0 and loaded.batch_size == ElasticsearchOptions().batch_size


def test_credentials_come_from_the_environment_and_must_be_complete() -> None:
    settings = ElasticsearchOptions()
    with pytest.raises(ConfigError, match="ESPER_ELASTICSEARCH_USERNAME is set but ESPER_ELASTICSEARCH_PASSWORD"):
        build_client(settings, environ={"ESPER_ELASTICSEARCH_USERNAME": "elastic"})
    client = build_client(settings, environ={"ESPER_ELASTICSEARCH_API_KEY": "aWQ6a2V5"})
    assert client._headers["authorization"] == "ApiKey aWQ6a2V5"
    client.close()
    client = build_client(
        settings, environ={"ESPER_ELASTICSEARCH_USERNAME": "elastic", "ESPER_ELASTICSEARCH_PASSWORD": "pw"}
    )
    assert client._headers["authorization"].startswith("Basic ")
    client.close()


def test_the_client_sends_plain_json_media_types() -> None:
    assert plain_media_type("application/vnd.elasticsearch+json; compatible-with=9") == "application/json"
    assert plain_media_type("application/vnd.elasticsearch+x-ndjson; compatible-with=8") == "application/x-ndjson"
    assert plain_media_type("text/plain") == "text/plain"


def test_the_factory_builds_a_sink_without_contacting_the_server(prefix: str) -> None:
    from esper_core.plugins import BuildContext, Registry

    nowhere = f"http://127.0.0.1:{free_port()}"
    context = BuildContext(registry=Registry.create(env={}), options=options(nowhere, prefix))
    sink = build_elasticsearch_sink(context)
    assert isinstance(sink, ElasticsearchSink) and sink.url == nowhere and sink.options.index_prefix == prefix
    sink.close()  # nothing buffered: nothing to lose, no error


def test_importing_the_package_does_not_import_the_client() -> None:
    code = "import sys, esper_nissa.elastic; assert 'elasticsearch' not in sys.modules, 'elasticsearch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_health_and_levels_use_short_names(prefix: str) -> None:
    degraded = build_telemetry_packet(
        source="weatherlight", health=HealthStatus.HEALTH_STATUS_DEGRADED, health_summary="backoff: urza"
    )
    (document,) = documents_of(degraded, prefix)
    source = document.source()
    assert source["health"] == {"status": "DEGRADED", "summary": "backoff: urza", "indicators": {}}
    assert source["level"] == "INFO" and source["run_id"] == "" and document.kind == "telemetry"
