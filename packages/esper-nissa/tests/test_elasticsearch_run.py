"""End to end: a short real run (the synthetic task, a seed germinated on a fixed schedule) with the
``elasticsearch`` sink selected in its configuration, writing to a real Elasticsearch-compatible server
(``osmem-server`` on 127.0.0.1); then the run read back with ``esper report --elasticsearch``.

Until esper_nissa.plugin registers the sink, this test registers it itself through a small test plugin (the same
factory and options); once the plugin provides it, the test uses the plugin's registration as it is.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper_core import hookimpl
from esper_core.cli.main import main
from esper_core.plugins import Registry, TelemetrySinkSpec
from esper_core.testing.servers import ElasticsearchCompatibleServer
from esper_core.tolaria.assembly import reopen_run, start_run
from esper_core.tolaria.checkpoint import DIRECTORY, LATEST, checkpoint_name
from esper_core.tolaria.trainer import Trainer
from esper_nissa.elastic import SINK_NAME, ElasticsearchOptions, build_elasticsearch_sink
from esper_nissa.elastic.client import build_client
from esper_nissa.elastic.reader import read_run

pytestmark = pytest.mark.slow

TINY = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=512",
    "run.synthetic.widths=[16]",
    "run.batch_size=64",
    "run.epochs=4",
    "tamiyo.policy=fixed-schedule",
    'tamiyo.fixed-schedule.germinations=[{epoch = 1, blueprint = "BP052"}]',
    "kasmina.max_step_overhead=1e9",
    "kasmina.max_seed_parameter_fraction=5",
    "tamiyo.decision_budget_ms=1e9",
    "tamiyo.risk.hook_budget_ms=1e9",
    "nissa.report.automatic=false",
]


class ElasticsearchSinkPlugin:
    """Registers the sink the way esper_nissa.plugin will."""

    @hookimpl
    def esper_nissa_telemetry_sinks(self) -> Iterator[TelemetrySinkSpec]:
        yield TelemetrySinkSpec(
            name=SINK_NAME,
            factory=build_elasticsearch_sink,
            options=ElasticsearchOptions,
            description="Every telemetry packet as Elasticsearch documents (test registration).",
        )


@pytest.fixture
def registry() -> Registry:
    registry = Registry.create(env={})
    if SINK_NAME not in [spec.name for spec in registry.telemetry_sinks()]:
        registry.pm.register(ElasticsearchSinkPlugin(), name="test-elasticsearch-sink")
        registry.invalidate()
    return registry


def test_a_run_with_the_elasticsearch_sink_reads_back(
    registry: Registry,
    elasticsearch_server: ElasticsearchCompatibleServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"e{uuid.uuid4().hex[:12]}"
    overrides = [
        *TINY,
        f"run.runs_dir={tmp_path}",
        "run.name=grow-es",
        'nissa.sinks=["jsonl", "elasticsearch"]',
        f"nissa.elasticsearch.url={elasticsearch_server.url}",
        f"nissa.elasticsearch.index_prefix={prefix}",
        "nissa.elasticsearch.retention_days=0",
        "nissa.elasticsearch.batch_size=50",
    ]
    config = registry.load_config(env={}, overrides=overrides)
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    # The run holds its sinks behind guards (esper_core.plugin_failures): found by what they are, not their type.
    [sink] = [sink for sink in trainer.run.sinks if getattr(sink, "url", None) == elasticsearch_server.url]
    counters = sink.counters()
    assert sink.closed and counters["indexed"] > 0
    assert counters["buffered"] == counters["abandoned"] == counters["dropped"] == counters["rejected"] == 0

    out = tmp_path / "back"
    arguments = ["report", "--elasticsearch", elasticsearch_server.url, "--run", "grow-es", "--index-prefix", prefix]
    assert main([*arguments, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    documents = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    # The jsonl sink saw the same packets: one telemetry document per packet, one more document per event.
    packets = [json.loads(line) for line in (tmp_path / "grow-es" / "telemetry.jsonl").read_text().splitlines()]
    assert len([d for d in documents if d["kind"] == "telemetry"]) == len(packets)
    assert len(documents) == len(packets) + sum(len(packet.get("events", [])) for packet in packets)
    assert {d["run_id"] for d in documents} == {"grow-es"}
    decisions = [d for d in documents if d["kind"] == "decisions"]
    assert len(decisions) == 4 and decisions[0]["attributes"]["operation"] == "germinate"
    stages = [d["attributes"]["stage"] for d in documents if d["kind"] == "lifecycle"]
    assert stages[0] == "GERMINATED"
    assert {"tolaria", "kasmina", "tamiyo"} <= {d["source"] for d in documents if d["kind"] == "telemetry"}
    assert "decisions by operation: " in printed and "germinate 1" in printed
    assert "transitions by target stage: GERMINATED 1" in printed


def test_a_resumed_run_reads_back_like_its_jsonl_file(
    registry: Registry, elasticsearch_server: ElasticsearchCompatibleServer, tmp_path: Path
) -> None:
    """A run killed after epoch 4 whose last checkpoint was epoch 2 (made from a finished run by dropping the newer
    checkpoints), then resumed: it emits epochs 3 and 4 again as new packets. The jsonl sink cuts its file back to
    the checkpoint; the Elasticsearch documents of the places emitted again are overwritten. Both then hold the
    same packets: nothing doubled, nothing lost (packets emitted again at a place used before the checkpoint, such as
    Urza's at step 0 on every start, are kept beside the first)."""
    prefix = f"e{uuid.uuid4().hex[:12]}"
    overrides = [
        *TINY,
        f"run.runs_dir={tmp_path}",
        "run.name=grow-again",
        "tolaria.keep_checkpoints=10",
        'nissa.sinks=["jsonl", "elasticsearch"]',
        f"nissa.elasticsearch.url={elasticsearch_server.url}",
        f"nissa.elasticsearch.index_prefix={prefix}",
        "nissa.elasticsearch.retention_days=0",
    ]
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=overrides)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    run_dir = tmp_path / "grow-again"
    killed = {json.loads(line)["packetId"] for line in (run_dir / "telemetry.jsonl").read_text().splitlines()}
    checkpoints = run_dir / DIRECTORY
    for epoch in (3, 4):
        (checkpoints / checkpoint_name(epoch)).unlink()
    (checkpoints / LATEST).write_text(checkpoint_name(2) + "\n")

    trainer = Trainer(reopen_run(registry, run_dir))
    try:
        assert trainer.restore_latest() is not None and trainer.history.epoch == 2
        trainer.fit()
    finally:
        trainer.close()
    packets = [json.loads(line) for line in (run_dir / "telemetry.jsonl").read_text().splitlines()]
    client = build_client(ElasticsearchOptions(url=elasticsearch_server.url))
    try:
        documents = read_run(client, prefix, "grow-again")
    finally:
        client.close()
    telemetry = [d for d in documents if d["kind"] == "telemetry"]
    assert sorted(d["packet_id"] for d in telemetry) == sorted(packet["packetId"] for packet in packets)
    assert len(documents) == len(packets) + sum(len(packet.get("events", [])) for packet in packets)
    resumed = {d["packet_id"] for d in telemetry} - killed
    assert {d["epoch"] for d in telemetry if d["packet_id"] in resumed} >= {3, 4}, "epochs 3 and 4 were emitted again"
    places = Counter((d["source"], d["epoch"], d["global_step"]) for d in telemetry if d["epoch"] >= 1)
    assert set(places.values()) == {1}, places
    decisions = [d["epoch"] for d in documents if d["kind"] == "decisions"]
    assert decisions == [1, 2, 3, 4]
