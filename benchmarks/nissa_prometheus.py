"""What Nissa's sinks cost: the ``prometheus`` and ``elasticsearch`` sinks per decision point against the epoch it
follows, and a ``/metrics`` scrape of 1,000 series against prometheus-client's own exposition of the same number, in
one run.

1. A real Fashion-MNIST run (the ``make run`` configuration, a few epochs) writes its telemetry with the ``jsonl``
   sink; its packets are regrouped by decision point (a Tolaria packet closes one). Each decision point's packets are
   then ingested by a fresh :class:`~esper_nissa.ingest.Nissa` (series, alerts and SLOs, as the sink does), many
   times; reported: the median milliseconds per decision point, and that over the run's median epoch time (the issue's
   target: at most 1 %).
   The same packets go through the ``elasticsearch`` sink (emit, then the flush Tolaria makes at each decision
   point: one bulk request) to the osmem Elasticsearch-compatible server started on 127.0.0.1; reported likewise.
2. Scrape: a Nissa holding at least 1,000 series (runs with slots, fed through real packets) serves ``/metrics``
   on 127.0.0.1; prometheus-client's ``start_http_server`` serves a registry of 1,000 plain gauges. The two are
   scraped alternately; reported: the median and p95 milliseconds of each and their ratio.

Usage: python benchmarks/nissa_prometheus.py [--epochs 3] [--repeats 200] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from esper_core.leyline import TelemetryPacket
from esper_core.plugins import Registry
from esper_core.telemetry import Metric, build_telemetry_packet
from esper_core.testing.servers import ElasticsearchCompatibleServer
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.trainer import Trainer
from esper_nissa.ingest import Nissa
from esper_nissa.sinks import read_packets

EXAMPLE = Path(__file__).parent.parent / "examples" / "fashion-mnist.toml"


def run_packets(runs: Path, epochs: int) -> tuple[list[list[TelemetryPacket]], list[float]]:
    """A real run's telemetry grouped by decision point, and its epoch times."""
    registry = Registry.create(env={})
    overrides = [f"run.epochs={epochs}", f"run.runs_dir={runs}", "run.name=source", "nissa.report.automatic=false"]
    overrides += ['nissa.sinks=["jsonl"]', "nissa.jsonl.fsync=false"]
    trainer = Trainer(start_run(registry, registry.load_config(EXAMPLE, env={}, overrides=overrides)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    groups: list[list[TelemetryPacket]] = [[]]
    epoch_seconds = []
    for packet in read_packets(runs / "source" / "telemetry.jsonl"):
        groups[-1].append(packet)
        values = {point.name: point.value for point in packet.metrics}
        if packet.source_subsystem == "tolaria" and "tolaria.epoch.seconds" in values:
            epoch_seconds.append(values["tolaria.epoch.seconds"])
            groups.append([])
    return [group for group in groups if group], epoch_seconds


def ingest_ms(groups: list[list[TelemetryPacket]], repeats: int) -> float:
    """Median milliseconds to ingest one decision point's packets."""
    samples = []
    for _ in range(repeats):
        nissa = Nissa()
        for group in groups:
            started = time.perf_counter()
            for packet in group:
                nissa.observe(packet)
            samples.append((time.perf_counter() - started) * 1000.0)
        nissa.close()
    return statistics.median(samples)


def elasticsearch_ms(groups: list[list[TelemetryPacket]], repeats: int) -> float:
    """Median milliseconds for the ``elasticsearch`` sink to take and deliver one decision point's packets."""
    from esper_nissa.elastic import ElasticsearchOptions
    from esper_nissa.elastic.sink import ElasticsearchSink

    samples = []
    with ElasticsearchCompatibleServer() as server:
        for repeat in range(repeats):
            sink = ElasticsearchSink(
                ElasticsearchOptions(url=server.url, index_prefix=f"bench{repeat}", retention_days=0)
            )
            for group in groups:
                started = time.perf_counter()
                for packet in group:
                    sink.emit(packet)
                sink.flush()
                samples.append((time.perf_counter() - started) * 1000.0)
            sink.close()
    return statistics.median(samples)


def busy_nissa(series_wanted: int) -> Nissa:
    """A Nissa holding at least ``series_wanted`` series, from real-shaped decision-point packets."""
    nissa = Nissa()
    run = 0
    while nissa.series.series_count() < series_wanted:
        run += 1
        metrics = [Metric("tolaria.validation.accuracy", 0.5), Metric("tolaria.epoch.seconds", 1.0)]
        for slot in range(8):
            labels = {"slot": f"layers.{slot}", "blueprint": "BP001"}
            metrics += [
                Metric("tolaria.seed.stage", 3.0, attributes={**labels, "stage": "BLENDING"}),
                Metric("tolaria.seed.alpha", 0.5, attributes=labels),
                Metric("tolaria.seed.contribution", 0.01, attributes=labels),
                Metric("tolaria.slot.isolation_violations", 0.0, attributes={"slot": labels["slot"]}),
            ]
        for step in (10, 20):
            nissa.observe(
                build_telemetry_packet(
                    source="tolaria", metrics=metrics, training_run_id=f"run-{run}", global_step=step
                )
            )
    return nissa


def scrape_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
    return (time.perf_counter() - started) * 1000.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--series", type=int, default=1000)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as runs:
        groups, epochs = run_packets(Path(runs), arguments.epochs)
    per_point = ingest_ms(groups, arguments.repeats)
    epoch_ms = statistics.median(epochs) * 1000.0
    print(f"decision points: {len(groups)}, packets per point: {statistics.median(len(g) for g in groups):.0f}")
    print(f"prometheus sink ingest per decision point: {per_point:.3f} ms (median of {arguments.repeats} passes)")
    print(f"median epoch: {epoch_ms:.0f} ms -> overhead {per_point / epoch_ms:.5%} of an epoch (target <= 1%)")
    elastic = elasticsearch_ms(groups, max(arguments.repeats // 10, 3))
    print(f"elasticsearch sink per decision point (emit + flush, one bulk): {elastic:.2f} ms -> "
          f"{elastic / epoch_ms:.4%} of an epoch (target <= 1%)")  # fmt: skip

    nissa = busy_nissa(arguments.series)
    server = nissa.serve("127.0.0.1", 0)
    plain = CollectorRegistry()
    gauge = Gauge("bench_series", "one of many plain gauges", ["index"], registry=plain)
    for index in range(nissa.series.series_count()):
        gauge.labels(str(index)).set(index)
    baseline_server, baseline_thread = start_http_server(0, addr="127.0.0.1", registry=plain)
    baseline_url = f"http://127.0.0.1:{baseline_server.server_address[1]}/metrics"
    ours, theirs = [], []
    try:
        for _ in range(arguments.scrapes):
            ours.append(scrape_ms(f"{server.url}/metrics"))
            theirs.append(scrape_ms(baseline_url))
    finally:
        nissa.close()
        baseline_server.shutdown()
        baseline_thread.join()
    print(f"/metrics with {nissa.series.series_count()} series: p50 {statistics.median(ours):.2f} ms, "
          f"p95 {percentile(ours, 0.95):.2f} ms")  # fmt: skip
    print(f"prometheus-client, same number of gauges: p50 {statistics.median(theirs):.2f} ms, "
          f"p95 {percentile(theirs, 0.95):.2f} ms")  # fmt: skip
    print(f"ratio (ours / prometheus-client), p50: {statistics.median(ours) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
