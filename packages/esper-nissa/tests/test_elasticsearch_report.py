"""Reading a run back from Elasticsearch: ``esper report --elasticsearch URL --run RUN_ID`` and the reader under it,
against a real Elasticsearch-compatible server (``osmem-server`` on 127.0.0.1)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from esper_core.cli.main import main
from esper_core.telemetry import Event, build_telemetry_packet
from esper_core.testing.servers import ElasticsearchCompatibleServer, free_port
from esper_nissa.elastic import ElasticsearchOptions
from esper_nissa.elastic.client import build_client
from esper_nissa.elastic.errors import ElasticsearchReadError
from esper_nissa.elastic.reader import read_run, summarize
from esper_nissa.elastic.sink import ElasticsearchSink

pytestmark = pytest.mark.slow  # starts a server

STAMP_NS = 1_795_319_403_376_853_584  # 2026-11-22T03:50:03Z
OPERATIONS = ["germinate", "noop", "start_grafting", "noop", "fossilize"]
STAGES = {1: "GERMINATED", 2: "TRAINING", 3: "BLENDING", 5: "FOSSILIZED"}


@pytest.fixture
def prefix() -> str:
    return f"r{uuid.uuid4().hex[:12]}"


def write_run(url: str, prefix: str, run: str) -> None:
    """Five epochs as Tolaria, Kasmina and Tamiyo emit them (packets out of order across sources), plus a packet of
    another run that must not come back."""
    packets = []
    for epoch, operation in enumerate(OPERATIONS, start=1):
        stamp = STAMP_NS + epoch * 60_000_000_000
        events = [Event("decision", operation, attributes={"operation": operation, "slot": "s0"})]
        packets.append(
            build_telemetry_packet(source="tamiyo", events=events, training_run_id=run, epoch=epoch,
                                   global_step=10 * epoch, timestamp_ns=stamp + 2)
        )  # fmt: skip
        kasmina_events = []
        if epoch in STAGES:
            kasmina_events.append(Event("seed_transition", "moved", attributes={"slot": "s0", "stage": STAGES[epoch]}))
        if epoch == 5:
            kasmina_events.append(
                Event("field_report", "done", attributes={"outcome": "SUCCESS", "contribution": "0.1"})
            )
        packets.append(
            build_telemetry_packet(source="kasmina", metrics=[("kasmina.seeds.active", 1.0)], events=kasmina_events,
                                   training_run_id=run, epoch=epoch, global_step=10 * epoch, timestamp_ns=stamp + 1)
        )  # fmt: skip
        packets.append(
            build_telemetry_packet(source="tolaria", metrics=[("tolaria.validation.loss", 1.0 / epoch)],
                                   training_run_id=run, epoch=epoch, global_step=10 * epoch, timestamp_ns=stamp)
        )  # fmt: skip
    packets.append(build_telemetry_packet(source="tolaria", training_run_id=f"{run}-other", epoch=1))
    options = ElasticsearchOptions(url=url, index_prefix=prefix, retention_days=0)
    with ElasticsearchSink(options) as sink:
        for packet in reversed(packets):  # the order written does not matter
            sink.emit(packet)
        sink.flush()


def test_esper_report_reads_a_run_back_in_order_with_a_summary(
    elasticsearch_server: ElasticsearchCompatibleServer,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = elasticsearch_server.url
    write_run(url, prefix, "grow-1")
    out = tmp_path / "back"
    assert main(["report", "--elasticsearch", url, "--run", "grow-1", "--index-prefix", prefix, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    documents = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    # 15 telemetry documents, 5 decisions, 4 transitions, 1 field report.
    assert len(documents) == 25
    assert {document["run_id"] for document in documents} == {"grow-1"}
    keys = [(d["epoch"], d["global_step"], d["@timestamp"], d["packet_id"], d["seq"]) for d in documents]
    assert keys == sorted(keys) and len(set(keys)) == 25
    assert [d["source"] for d in documents if d["kind"] == "telemetry"][:3] == ["tolaria", "kasmina", "tamiyo"]
    assert [d["attributes"]["operation"] for d in documents if d["kind"] == "decisions"] == OPERATIONS
    # Each document is named by where its packet stands in the run (run, source, epoch, step, and the first packet
    # of that place), its events by that and their event id.
    for document in documents:
        place = f"grow-1:{document['source']}:{document['epoch']}:{document['global_step']}:0"
        assert document["_id"] == (f"{place}:{document['event_id']}" if document["seq"] else place), document
    assert documents[0]["_index"] == f"{prefix}-telemetry-2026.11.22" and documents[0]["_id"] == "grow-1:tolaria:1:10:0"
    assert documents[0]["packet_id"] == "tolaria-1-10-1795319463376853584"
    assert "run grow-1: 25 documents, epochs 1-5" in printed
    assert "by kind: telemetry 15, decisions 5, lifecycle 4, field-reports 1" in printed
    assert "decisions by operation: noop 2, germinate 1, start_grafting 1, fossilize 1" in printed
    assert "transitions by target stage: GERMINATED 1, TRAINING 1, BLENDING 1, FOSSILIZED 1" in printed
    assert printed.strip().endswith(str(out / "documents.jsonl"))
    assert (out / "summary.txt").read_text().startswith("run grow-1: 25 documents")


def test_pages_of_the_read_neither_skip_nor_repeat(
    elasticsearch_server: ElasticsearchCompatibleServer, prefix: str
) -> None:
    write_run(elasticsearch_server.url, prefix, "grow-2")
    client = build_client(ElasticsearchOptions(url=elasticsearch_server.url))
    try:
        whole = read_run(client, prefix, "grow-2")
        paged = read_run(client, prefix, "grow-2", page_size=4)
    finally:
        client.close()
    assert [d["_id"] for d in paged] == [d["_id"] for d in whole] and len({d["_id"] for d in paged}) == 25
    summary = summarize("grow-2", paged)
    assert summary.by_kind == {"telemetry": 15, "decisions": 5, "lifecycle": 4, "field-reports": 1}
    assert summary.sources == {"tamiyo": 5, "kasmina": 5, "tolaria": 5}


def test_a_run_with_no_documents_is_a_clean_error(
    elasticsearch_server: ElasticsearchCompatibleServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(elasticsearch_server.url, prefix, "grow-3")
    arguments = ["--elasticsearch", elasticsearch_server.url, "--index-prefix", prefix, "-o", str(tmp_path / "x")]
    assert main(["report", *arguments, "--run", "ghost"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and err.count("\n") == 1
    assert "holds no document of run 'ghost'" in err and elasticsearch_server.url in err
    assert not (tmp_path / "x").exists()


def test_an_unreachable_server_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert main(["report", "--elasticsearch", nowhere, "--run", "grow", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: cannot read run 'grow' from " + nowhere) and "ConnectionError" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--elasticsearch", "http://127.0.0.1:9200"], "needs both --elasticsearch URL and --run RUN_ID"),
        (["--run", "grow"], "needs both --elasticsearch URL and --run RUN_ID"),
        (["runs/grow", "--elasticsearch", "http://127.0.0.1:9200", "--run", "grow"], "not both"),
        (["--elasticsearch", "localhost:9200", "--run", "grow"], "url must be an http:// or https:// URL"),
        (["--elasticsearch", "http://127.0.0.1:9200", "--run", "g", "--index-prefix", "A"], "lower case"),
        ([], "give a run directory"),
    ],
)
def test_wrong_arguments_are_clean_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and message in err


def test_reading_fails_cleanly_in_python_too(prefix: str) -> None:
    client = build_client(ElasticsearchOptions(url=f"http://127.0.0.1:{free_port()}", max_retries=0))
    try:
        with pytest.raises(ElasticsearchReadError, match="cannot read run 'grow'"):
            read_run(client, prefix, "grow")
    finally:
        client.close()
