"""Publish and consume throughput of Oona on Redis Streams, against raw redis-py doing the same work.

One ``redis-server`` is started by this script on 127.0.0.1 (a free port, no persistence) and stopped at the end.
Three implementations do the same work on the same server in the same run, on entries of the same size (a signed
bus envelope carrying a ``TelemetryPacket`` with ten metrics):

- **raw**: redis-py's client API directly (``xadd``, ``pipeline``, ``xreadgroup``, ``xack``);
- **backend**: :class:`esper_core.oona.redis_backend.RedisBackend` (retries, breaker, entry decoding);
- **bus**: :class:`esper_core.oona.Oona` over that backend: every message built into an envelope, serialized and
  signed on the way out, verified and decoded on the way in.

Operations:

- *publish, one at a time*: one XADD (``MAXLEN ~``) per message, each waiting for its reply;
- *consume, one at a time*: ``XREADGROUP COUNT 1``, then one XACK for the message (``Oona.consume(count=1)``);
- *consume, acknowledged one by one*: ``XREADGROUP COUNT batch``, then one XACK per message as it is handled
  (``Oona.consume``, the at-least-once contract);
- *publish, pipelined*: ``batch`` XADDs per round trip (``publish_many``);
- *consume, one XACK per batch*: ``XREADGROUP COUNT batch`` + one XACK for all (``Oona.poll`` + ``ack_many``).

This machine is shared and noisy, so the implementations take turns: each works on a stream of its own, ``--chunk``
messages at a time (ten times that for the batched operations), one after the other, ``--chunks`` times; each
turn's rate is divided by raw's rate in the same round, and the median of those ratios is reported, with their
quartiles and the median rate. The first two operations carry the targets (bus/raw ≥ 0.8).

Usage: python benchmarks/oona_redis_throughput.py [--chunk 200] [--chunks 40] [--batch 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from esper_core.leyline import TelemetryPacket
from esper_core.oona import BusMessage, Oona, OonaOptions, StreamNames
from esper_core.oona.redis_backend import RedisBackend
from esper_core.signing import SigningKey
from esper_core.telemetry import build_telemetry_packet
from esper_core.testing.servers import RedisServer

GROUP = "bench"
#: Pipelined and batched operations move this many times more messages per round than the one-at-a-time ones.
BULK = 10


def telemetry_packet(index: int) -> TelemetryPacket:
    return build_telemetry_packet(
        source="kasmina",
        metrics=[(f"kasmina.seeds.metric_{k}", float(index * k), "ms") for k in range(10)],
        epoch=index,
        global_step=index * 100,
    )


class Bench:
    def __init__(self, server: RedisServer, chunk: int, batch: int) -> None:
        self.batch = batch
        self.maxlen = 10_000_000  # trimming is on (as in production) but never removes what a run still reads
        self.raw = redis.Redis.from_url(server.url, protocol=2)
        self.backend = RedisBackend(server.url)
        self.key = SigningKey.generate()
        self.packets = [telemetry_packet(i) for i in range(chunk * BULK)]
        probe = Oona(self.backend, signing_key=self.key)
        envelope = probe.envelope_for(self.packets[0]).SerializeToString(deterministic=True)
        self.fields: dict[str, bytes] = {"envelope": envelope, "signature": self.key.sign(envelope)}
        self.entry_bytes = len(envelope) + 32
        self.run = 0
        self.buses: dict[str, Oona] = {}

    def stream(self, case: str) -> str:
        self.run += 1
        return f"bench.{case}.{self.run}"

    def bus(self, stream: str) -> Oona:
        """The bus client of ``stream`` (one per stream, as a long-lived consumer has)."""
        bus = self.buses.get(stream)
        if bus is None:
            names = StreamNames(normal=stream, telemetry=stream)
            options = OonaOptions(streams=names, max_stream_length=self.maxlen)
            bus = self.buses[stream] = Oona(self.backend, signing_key=self.key, options=options, group=GROUP)
        return bus

    def fill(self, stream: str, count: int) -> None:
        """Put ``count`` signed envelopes on ``stream`` and create the group before them (not timed)."""
        self.raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
        bus = self.bus(stream)
        for start in range(0, count, 1000):
            bus.publish_many(self.packets[start % len(self.packets) :][: min(1000, count - start)])

    def done(self, stream: str) -> None:
        self.raw.delete(stream)
        self.buses.pop(stream, None)

    # -- publishing one at a time --------------------------------------------------------------------------------
    def publish_raw(self, stream: str, count: int) -> None:
        raw, fields, maxlen = self.raw, self.fields, self.maxlen
        for _ in range(count):
            raw.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

    def publish_backend(self, stream: str, count: int) -> None:
        backend, fields, maxlen = self.backend, self.fields, self.maxlen
        for _ in range(count):
            backend.publish(stream, fields, maxlen=maxlen)

    def publish_bus(self, stream: str, count: int) -> None:
        bus = self.bus(stream)
        for packet in self.packets[:count]:
            bus.publish(packet)

    # -- publishing pipelined ------------------------------------------------------------------------------------
    def pipeline_raw(self, stream: str, count: int) -> None:
        for start in range(0, count, self.batch):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(min(self.batch, count - start)):
                pipe.xadd(stream, self.fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()

    def pipeline_backend(self, stream: str, count: int) -> None:
        for start in range(0, count, self.batch):
            self.backend.publish_many([(stream, self.fields)] * min(self.batch, count - start), maxlen=self.maxlen)

    def pipeline_bus(self, stream: str, count: int) -> None:
        bus = self.bus(stream)
        for start in range(0, count, self.batch):
            bus.publish_many(self.packets[start : min(count, start + self.batch)])

    # -- consuming, one message at a time ------------------------------------------------------------------------
    def single_raw(self, stream: str, count: int) -> None:
        raw = self.raw
        for _ in range(count):
            reply: Any = raw.xreadgroup(GROUP, "c", {stream: ">"}, count=1)
            raw.xack(stream, GROUP, reply[0][1][0][0])

    def single_backend(self, stream: str, count: int) -> None:
        backend = self.backend
        for _ in range(count):
            (entry,) = backend.read([stream], GROUP, "c", count=1, block_ms=0)
            backend.ack(stream, GROUP, [entry.entry_id])

    def single_bus(self, stream: str, count: int) -> None:
        bus = self.bus(stream)
        for _ in range(count):
            bus.consume([stream], _ignore, count=1)

    # -- consuming a batch, acknowledging each message as it is handled --------------------------------------------
    def each_raw(self, stream: str, count: int) -> None:
        seen = 0
        while seen < count:
            reply: Any = self.raw.xreadgroup(GROUP, "c", {stream: ">"}, count=self.batch)
            for entry_id, _ in reply[0][1]:
                self.raw.xack(stream, GROUP, entry_id)
                seen += 1

    def each_backend(self, stream: str, count: int) -> None:
        seen = 0
        while seen < count:
            for entry in self.backend.read([stream], GROUP, "c", count=self.batch, block_ms=0):
                self.backend.ack(stream, GROUP, [entry.entry_id])
                seen += 1

    def each_bus(self, stream: str, count: int) -> None:
        bus = self.bus(stream)
        seen = 0
        while seen < count:
            seen += bus.consume([stream], _ignore, count=self.batch).handled

    # -- consuming a batch, one acknowledgement for all -------------------------------------------------------------
    def batch_raw(self, stream: str, count: int) -> None:
        seen = 0
        while seen < count:
            reply: Any = self.raw.xreadgroup(GROUP, "c", {stream: ">"}, count=self.batch)
            ids = [entry_id for _, entries in reply for entry_id, _ in entries]
            self.raw.xack(stream, GROUP, *ids)
            seen += len(ids)

    def batch_backend(self, stream: str, count: int) -> None:
        seen = 0
        while seen < count:
            entries = self.backend.read([stream], GROUP, "c", count=self.batch, block_ms=0)
            self.backend.ack(stream, GROUP, [entry.entry_id for entry in entries])
            seen += len(entries)

    def batch_bus(self, stream: str, count: int) -> None:
        bus = self.bus(stream)
        seen = 0
        while seen < count:
            messages = bus.poll([stream], count=self.batch)
            bus.ack_many(messages)
            seen += len(messages)


def _ignore(message: BusMessage) -> None:
    pass


Work = Callable[[str, int], None]


def timed(work: Work, stream: str, count: int) -> float:
    """Messages per second of one call of ``work`` on ``count`` messages of ``stream``."""
    start = time.perf_counter()
    work(stream, count)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=200, help="messages per turn, one at a time (x10 for batches)")
    parser.add_argument("--chunks", type=int, default=40, help="turns per implementation (the median ratio is kept)")
    parser.add_argument("--batch", type=int, default=500, help="pipeline and XREADGROUP COUNT size")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    with RedisServer() as server:
        bench = Bench(server, args.chunk, args.batch)
        version = bench.raw.info("server")["redis_version"]
        one, bulk = args.chunk, args.chunk * BULK
        b = bench
        operations: list[tuple[str, int, bool, list[tuple[str, Work]]]] = [
            ("publish, one at a time", one, False,
             [("raw", b.publish_raw), ("backend", b.publish_backend), ("bus", b.publish_bus)]),
            ("consume, one at a time", one, True,
             [("raw", b.single_raw), ("backend", b.single_backend), ("bus", b.single_bus)]),
            (f"consume {args.batch}, ack each", bulk, True,
             [("raw", b.each_raw), ("backend", b.each_backend), ("bus", b.each_bus)]),
            (f"publish, pipelined {args.batch}", bulk, False,
             [("raw", b.pipeline_raw), ("backend", b.pipeline_backend), ("bus", b.pipeline_bus)]),
            (f"consume {args.batch}, one ack", bulk, True,
             [("raw", b.batch_raw), ("backend", b.batch_backend), ("bus", b.batch_bus)]),
        ]  # fmt: skip
        results: list[dict[str, Any]] = []
        for operation, count, filled, implementations in operations:
            streams = {name: bench.stream(name) for name, _ in implementations}
            if filled:
                for stream in streams.values():
                    bench.fill(stream, count * args.chunks)
            rates: dict[str, list[float]] = {name: [] for name, _ in implementations}
            for _ in range(args.chunks):  # taking turns, so a burst of load on a shared machine hits them alike
                for name, work in implementations:
                    rates[name].append(timed(work, streams[name], count))
            for stream in streams.values():
                bench.done(stream)
            for name, values in rates.items():
                ratios = [value / raw for value, raw in zip(values, rates["raw"], strict=True)]
                quartiles = statistics.quantiles(ratios, n=4)
                results.append(
                    {
                        "operation": operation,
                        "implementation": name,
                        "msg_per_s": round(statistics.median(values)),
                        "ratio_to_raw": round(statistics.median(ratios), 3),
                        "ratio_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
                    }
                )
        bench.backend.close()
        bench.raw.close()

    print(
        f"Redis {version} on loopback, redis-py {redis.__version__}, Python {platform.python_version()}, "
        f"{bench.entry_bytes}-byte entries; {args.chunks} turns of {one} messages each ({bulk} for batches)"
    )
    print(f"{'operation':30} {'implementation':15} {'msg/s':>9} {'ratio to raw':>13} {'quartiles':>14}")
    for row in results:
        low, high = row["ratio_quartiles"]
        print(
            f"{row['operation']:30} {row['implementation']:15} {row['msg_per_s']:>9} {row['ratio_to_raw']:>13} "
            f"{f'{low}-{high}':>14}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            meta = {"redis": version, "chunk": args.chunk, "chunks": args.chunks, "batch": args.batch}
            json.dump({**meta, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
