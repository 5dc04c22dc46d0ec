"""Throughput of the ``elasticsearch`` telemetry sink, against the raw Elasticsearch client bulk-indexing the same
documents.

One Elasticsearch-compatible server (``osmem-server``, from ``pip install osmem-server``) is started by this script
on 127.0.0.1 (a free port, in memory) and stopped at the end. Both cases write the same documents, in requests of
``--batch`` documents, on the same server in the same run:

- **raw**: the official client's ``bulk`` on ready-made documents (the action and source dicts the sink would
  produce, built before the clock starts); the client serializes them;
- **sink**: :class:`esper_nissa.elastic.sink.ElasticsearchSink` from the packets: ``emit`` of every packet (turning
  it into documents, serializing them, sending each full batch) and one ``flush`` for the rest.

The packets are what a run's decision point emits, three at a time: Tolaria's (12 metrics, a rollback event every
tenth time), Kasmina's (8 metrics labelled by slot, a seed transition every third time) and Tamiyo's (3 metrics and a
decision event). Every round uses packet ids of its own, so each document is new to the server (an overwrite costs
the server more than a first write), and the two cases write under index prefixes of their own. Each round's
packets carry a day of their own, so each round writes into new daily indices (created by the first bulk of each
case alike), which are deleted after the round, untimed: the in-memory server slows down as it fills, and that
would otherwise favour whichever case ran first.

This machine is shared and noisy, so the two cases take turns (which goes first alternates), ``--packets`` packets
per turn, ``--rounds`` times after one round of warm-up (it creates the indices and the connections); each turn's
rate is divided by raw's rate in the same round, and the median of those ratios is reported, with its quartiles and
the median rates. Target: sink/raw >= 0.8. Also reported: the time to turn one packet into documents, alone.

Usage: python benchmarks/elasticsearch_sink.py [--packets 1500] [--rounds 20] [--batch 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from esper_core.leyline import TelemetryPacket
from esper_core.telemetry import INFO, WARNING, Event, Metric, MetricLike, build_telemetry_packet
from esper_core.testing.servers import ElasticsearchCompatibleServer
from esper_nissa.elastic import ElasticsearchOptions
from esper_nissa.elastic.client import build_client
from esper_nissa.elastic.documents import KINDS, documents_of
from esper_nissa.elastic.sink import ElasticsearchSink
from esper_nissa.elastic.templates import install_templates

RAW_PREFIX = "bench-raw"
SINK_PREFIX = "bench-sink"
STAMP_NS = 1_795_319_403_000_000_000  # 2026-11-22T03:50:03Z
DAY_NS = 86_400 * 1_000_000_000


def decision_point(round_number: int, point: int) -> list[TelemetryPacket]:
    """The three packets of one decision point (see the module)."""
    epoch, step = point + 1, 100 * (point + 1)
    stamp = STAMP_NS + round_number * DAY_NS + point * 1_000_000  # a day of its own per round

    def ids(source: str) -> dict[str, Any]:
        return {
            "training_run_id": "bench-run",
            "epoch": epoch,
            "global_step": step,
            "packet_id": f"{source}-{epoch}-{step}-r{round_number}",
            "timestamp_ns": stamp,
        }

    tolaria_metrics: list[MetricLike] = [
        (f"tolaria.epoch.metric_{k}", 0.01 * k * epoch, "s" if k % 3 == 0 else "") for k in range(12)
    ]
    tolaria_events = (
        [Event("rollback", f"rolled back to epoch {epoch - 1}", WARNING, {"to_epoch": str(epoch - 1)})]
        if point % 10 == 9
        else []
    )
    kasmina_metrics: list[MetricLike] = [
        Metric(f"kasmina.slot.metric_{k}", 0.5 * k, attributes={"slot": f"s{k % 3}"}) for k in range(8)
    ]
    kasmina_events = (
        [Event("seed_transition", "s0: TRAINING -> BLENDING", INFO, {"slot": "s0", "blueprint": "BP052",
                                                                   "from_stage": "TRAINING", "stage": "BLENDING"})]
        if point % 3 == 0
        else []
    )  # fmt: skip
    tamiyo_events = [
        Event("decision", "wait: nothing ready", INFO, {"operation": "noop", "slot": "", "risk_reason": ""})
    ]
    return [
        build_telemetry_packet(source="tolaria", metrics=tolaria_metrics, events=tolaria_events, **ids("tolaria")),
        build_telemetry_packet(source="kasmina", metrics=kasmina_metrics, events=kasmina_events, **ids("kasmina")),
        build_telemetry_packet(
            source="tamiyo",
            metrics=[("tamiyo.decision.latency_ms", 0.4, "ms"), ("tamiyo.budget.left", 3.0), ("tamiyo.risk", 0.1)],
            events=tamiyo_events,
            **ids("tamiyo"),
        ),
    ]


def packets_of(round_number: int, count: int) -> list[TelemetryPacket]:
    packets: list[TelemetryPacket] = []
    point = 0
    while len(packets) < count:
        packets.extend(decision_point(round_number, point))
        point += 1
    return packets[:count]


def raw_operations(packets: list[TelemetryPacket]) -> list[dict[str, Any]]:
    """The bulk body the raw client sends: action and source dicts of the very documents the sink makes."""
    operations: list[dict[str, Any]] = []
    for packet in packets:
        for document in documents_of(packet, RAW_PREFIX):
            operations.append({"index": {"_index": document.index, "_id": document.id}})
            operations.append(document.source())
    return operations


def run_raw(client: Any, operations: list[dict[str, Any]], batch: int) -> int:
    """Bulk requests of ``batch`` documents; returns the documents the server took."""
    taken = 0
    for start in range(0, len(operations), 2 * batch):
        response = client.bulk(operations=operations[start : start + 2 * batch])
        if response["errors"]:
            raise RuntimeError(f"raw bulk failed: {response['items'][:2]}")
        taken += len(response["items"])
    return taken


def run_sink(sink: ElasticsearchSink, packets: list[TelemetryPacket]) -> int:
    before = sink.indexed
    for packet in packets:
        sink.emit(packet)
    sink.flush()
    return sink.indexed - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1500, help="packets per turn (about 1.6 documents each)")
    parser.add_argument("--rounds", type=int, default=20, help="turns per case (the median ratio is kept)")
    parser.add_argument("--batch", type=int, default=500, help="documents per bulk request (the sink's batch_size)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    with ElasticsearchCompatibleServer() as server:
        options = ElasticsearchOptions(
            url=server.url,
            index_prefix=SINK_PREFIX,
            retention_days=0,
            batch_size=args.batch,
            max_buffered=max(args.batch, 4 * args.packets),
        )
        client = build_client(options)
        install_templates(client, RAW_PREFIX)
        sink = ElasticsearchSink(options)
        version = client.info()["version"]["number"]

        raw_rates: list[float] = []
        sink_rates: list[float] = []
        documents = 0
        for round_number in range(args.rounds + 1):  # round 0 warms up: indices, templates, connections
            packets = packets_of(round_number, args.packets)
            operations = raw_operations(packets)
            documents = len(operations) // 2
            turns: list[tuple[str, Callable[[], int]]] = [
                ("raw", functools.partial(run_raw, client, operations, args.batch)),
                ("sink", functools.partial(run_sink, sink, packets)),
            ]
            if round_number % 2:
                turns.reverse()
            rates: dict[str, float] = {}
            for name, work in turns:
                start = time.perf_counter()
                taken = work()
                rates[name] = taken / (time.perf_counter() - start)
                if taken != documents:
                    raise RuntimeError(f"{name} wrote {taken} documents, expected {documents}")
            if round_number:
                raw_rates.append(rates["raw"])
                sink_rates.append(rates["sink"])
            day = time.strftime("%Y.%m.%d", time.gmtime((STAMP_NS + round_number * DAY_NS) // 1_000_000_000))
            names = [f"{prefix}-{kind}-{day}" for prefix in (RAW_PREFIX, SINK_PREFIX) for kind in KINDS]
            client.indices.delete(index=",".join(names), ignore_unavailable=True)

        sample = packets_of(10_000, args.packets)
        start = time.perf_counter()
        converted = sum(len(documents_of(packet, SINK_PREFIX)) for packet in sample)
        convert_us = (time.perf_counter() - start) / converted * 1e6
        failures = sink.counters()
        sink.close()
        client.close()

    ratios = [s / r for s, r in zip(sink_rates, raw_rates, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    result = {
        "server": f"osmem-server (reports {version})",
        "client": importlib.metadata.version("elasticsearch"),
        "python": platform.python_version(),
        "packets_per_turn": args.packets,
        "documents_per_turn": documents,
        "rounds": args.rounds,
        "batch": args.batch,
        "raw_docs_per_s": round(statistics.median(raw_rates)),
        "sink_docs_per_s": round(statistics.median(sink_rates)),
        "ratio_sink_to_raw": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
        "convert_us_per_document": round(convert_us, 2),
        "sink_counters": failures,
    }
    print(
        f"{result['server']} on loopback, elasticsearch-py {result['client']}, Python {result['python']}; "
        f"{args.rounds} turns of {args.packets} packets ({documents} documents), bulk of {args.batch}"
    )
    print(f"{'case':6} {'docs/s':>9} {'ratio to raw':>13} {'quartiles':>14}")
    print(f"{'raw':6} {result['raw_docs_per_s']:>9} {1.0:>13} {'':>14}")
    low, high = result["ratio_quartiles"]
    print(f"{'sink':6} {result['sink_docs_per_s']:>9} {result['ratio_sink_to_raw']:>13} {f'{low}-{high}':>14}")
    print(f"turning a packet into documents alone: {result['convert_us_per_document']} us per document")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
