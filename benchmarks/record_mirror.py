"""What ``tolaria.publish_record`` adds to a decision point: writing its record entries with and without the mirror on
a real Redis (127.0.0.1), as a ratio measured in one run.

A short synthetic run (in-process bus, the heuristic growing seeds) gives a real ``record.log``; its entries are
regrouped into the batches its decision points wrote (an ``epoch`` entry starts a new one) and written again, batch by
batch, into two fresh records: one plain, one with the :class:`RecordMirror` publishing on Redis. The two alternate
batch by batch, so load on this shared machine falls on both alike. Reported: the median milliseconds per decision
point's batch for each, and their ratio. A decision point's record batch is one fsync; the mirror adds one
pipelined XADD of the same entries.

Usage: ESPER_LEYLINE_SECRET=... python benchmarks/record_mirror.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from esper_core.oona import Oona, OonaOptions, StreamNames
from esper_core.oona.redis_backend import RedisBackend
from esper_core.plugins import Registry
from esper_core.signing import SigningKey
from esper_core.storage.appendlog import read_records
from esper_core.testing.servers import RedisServer
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import RECORD_FILE, RunRecord
from esper_core.tolaria.record_mirror import RecordMirror
from esper_core.tolaria.trainer import Trainer

RUN = [
    "run.task=synthetic",
    "run.threads=1",
    "run.epochs=12",
    "run.synthetic.samples=2048",
    "run.synthetic.widths=[32, 32]",
    "nissa.sinks=[]",
    "nissa.report.automatic=false",
    "tamiyo.policy=heuristic",
]


def decision_batches(runs: Path) -> list[list[bytes]]:
    """A real run's record entries, grouped as its decision points wrote them."""
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*RUN, f"run.runs_dir={runs}", "run.name=source"])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    batches: list[list[bytes]] = []
    for raw in read_records(runs / "source" / RECORD_FILE):
        if json.loads(raw)["kind"] in ("epoch", "run_started", "run_finished") or not batches:
            batches.append([])
        batches[-1].append(raw)
    return batches


def write(record: RunRecord, batch: list[bytes]) -> float:
    started = time.perf_counter()
    with record.batch():
        for raw in batch:
            entry = json.loads(raw)
            record.append(entry.pop("kind"), **entry)
    return (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="times each run's batches are written")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, RedisServer() as server:
        work = Path(scratch)
        batches = decision_batches(work / "runs")
        streams = StreamNames.prefixed("bench")
        bus = Oona(RedisBackend(server.url), signing_key=SigningKey.from_secret("record-mirror-benchmark-secret-0123"),
                   options=OonaOptions(streams=streams), group="bench", consumer="bench")  # fmt: skip
        plain_ms: list[float] = []
        mirrored_ms: list[float] = []
        for repeat in range(arguments.repeats):
            plain = RunRecord(work / f"plain-{repeat}.log")
            mirrored = RunRecord(work / f"mirrored-{repeat}.log")
            mirrored.on_written = RecordMirror(bus, f"bench-{repeat}", work / "none.toml")
            for batch in batches:
                plain_ms.append(write(plain, batch))
                mirrored_ms.append(write(mirrored, batch))
            plain.close()
            mirrored.close()
        bus.close()
    entries = sum(len(batch) for batch in batches)
    size = sum(len(raw) for batch in batches for raw in batch)
    plain_median, mirrored_median = statistics.median(plain_ms), statistics.median(mirrored_ms)
    print(f"{len(batches)} decision-point batches, {entries} entries, {size / len(batches) / 1024:.1f} KiB per batch; "
          f"{arguments.repeats} repeats")  # fmt: skip
    print("| record batch | median ms | ratio |")
    print("|---|---|---|")
    print(f"| plain (fsync) | {plain_median:.3f} | 1.00 |")
    print(f"| mirrored on Redis | {mirrored_median:.3f} | {mirrored_median / plain_median:.2f} |")


if __name__ == "__main__":
    main()
