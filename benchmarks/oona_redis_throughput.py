"""Publish and consume throughput of Oona on Redis Streams, against raw redis-py doing the same work.

One ``redis-server`` is started by this script on 127.0.0.1 (a free port, no persistence) and stopped at the end.
Three implementations do the same work on the same server in the same run, interleaved, on entries of the same
size (a signed bus envelope carrying a ``TelemetryPacket`` with ten metrics):

- **raw**: redis-py directly: ``XADD MAXLEN ~`` one at a time; the same XADDs pipelined in batches;
  ``XREADGROUP COUNT batch`` + one ``XACK`` per batch.
- **backend**: :class:`esper_core.oona.redis_backend.RedisBackend` (retries, breaker, entry decoding):
  ``publish``; ``publish_many`` per batch; ``read(count=batch)`` + ``ack`` per batch.
- **bus**: :class:`esper_core.oona.Oona` over that backend (builds, serializes and signs an envelope per message;
  verifies and decodes each on the way in): ``publish``; ``publish_many``; ``consume`` (acknowledges each message
  as its handler returns, the at-least-once contract) and, for comparison, ``poll`` + one batched ``ack``.

Reported: messages per second (median of ``--repeats`` runs) and the ratios backend/raw and bus/raw
(target for the backend: ≥ 0.8).

Usage: python benchmarks/oona_redis_throughput.py [--messages 20000] [--batch 500] [--repeats 3] [--json out.json]
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


def telemetry_packet(index: int) -> TelemetryPacket:
    return build_telemetry_packet(
        source="kasmina",
        metrics=[(f"kasmina.seeds.metric_{k}", float(index * k), "ms") for k in range(10)],
        epoch=index,
        global_step=index * 100,
    )


class Bench:
    def __init__(self, server: RedisServer, messages: int, batch: int) -> None:
        self.messages = messages
        self.batch = batch
        self.maxlen = messages * 2  # trimming is on (as in production) but never removes what a run still reads
        self.raw = redis.Redis.from_url(server.url, protocol=2)
        self.backend = RedisBackend(server.url)
        self.key = SigningKey.generate()
        self.packets = [telemetry_packet(i) for i in range(messages)]
        probe = Oona(self.backend, signing_key=self.key)
        envelope = probe.envelope_for(self.packets[0]).SerializeToString(deterministic=True)
        self.fields: dict[str, bytes] = {"envelope": envelope, "signature": self.key.sign(envelope)}
        self.entry_bytes = len(envelope) + 32
        self.run = 0

    def stream(self, case: str) -> str:
        self.run += 1
        return f"bench.{case}.{self.run}"

    def bus(self, stream: str) -> Oona:
        names = StreamNames(normal=stream, telemetry=stream)
        options = OonaOptions(streams=names, max_stream_length=self.maxlen)
        return Oona(self.backend, signing_key=self.key, options=options, group=GROUP, consumer="c")

    def fill(self, stream: str) -> None:
        """Put ``messages`` signed envelopes on ``stream`` and create the group (not timed)."""
        self.bus(stream).publish_many(self.packets)
        self.raw.xgroup_create(stream, GROUP, id="0")

    def done(self, stream: str) -> None:
        self.raw.delete(stream)

    # -- publishing one at a time --------------------------------------------------------------------------------
    def publish_raw(self, stream: str) -> None:
        raw, fields, maxlen = self.raw, self.fields, self.maxlen
        for _ in range(self.messages):
            raw.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

    def publish_backend(self, stream: str) -> None:
        backend, fields, maxlen = self.backend, self.fields, self.maxlen
        for _ in range(self.messages):
            backend.publish(stream, fields, maxlen=maxlen)

    def publish_bus(self, stream: str) -> None:
        bus = self.bus(stream)
        for packet in self.packets:
            bus.publish(packet)

    # -- publishing pipelined ------------------------------------------------------------------------------------
    def pipeline_raw(self, stream: str) -> None:
        for start in range(0, self.messages, self.batch):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(min(self.batch, self.messages - start)):
                pipe.xadd(stream, self.fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()

    def pipeline_backend(self, stream: str) -> None:
        for start in range(0, self.messages, self.batch):
            count = min(self.batch, self.messages - start)
            self.backend.publish_many([(stream, self.fields)] * count, maxlen=self.maxlen)

    def pipeline_bus(self, stream: str) -> None:
        bus = self.bus(stream)
        for start in range(0, self.messages, self.batch):
            bus.publish_many(self.packets[start : start + self.batch])

    # -- consuming -----------------------------------------------------------------------------------------------
    def consume_raw(self, stream: str) -> None:
        seen = 0
        while seen < self.messages:
            reply: Any = self.raw.xreadgroup(GROUP, "c", {stream: ">"}, count=self.batch)
            ids = [entry_id for _, entries in reply for entry_id, _ in entries]
            self.raw.xack(stream, GROUP, *ids)
            seen += len(ids)

    def consume_backend(self, stream: str) -> None:
        seen = 0
        while seen < self.messages:
            entries = self.backend.read([stream], GROUP, "c", count=self.batch, block_ms=0)
            self.backend.ack(stream, GROUP, [entry.entry_id for entry in entries])
            seen += len(entries)

    def consume_bus(self, stream: str) -> None:
        bus = self.bus(stream)
        seen = 0

        def handler(message: BusMessage) -> None:
            pass

        while seen < self.messages:
            seen += bus.consume([stream], handler, count=self.batch).handled

    def consume_bus_batched_ack(self, stream: str) -> None:
        bus = self.bus(stream)
        seen = 0
        while seen < self.messages:
            messages = bus.poll([stream], count=self.batch)
            self.backend.ack(stream, GROUP, [message.entry_id for message in messages])
            seen += len(messages)


def timed(setup: Callable[[str], None] | None, work: Callable[[str], None], bench: Bench, case: str) -> float:
    """Messages per second of one run of ``work`` on a fresh stream."""
    stream = bench.stream(case)
    if setup is not None:
        setup(stream)
    start = time.perf_counter()
    work(stream)
    elapsed = time.perf_counter() - start
    bench.done(stream)
    return bench.messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per timing run")
    parser.add_argument("--batch", type=int, default=500, help="pipeline and XREADGROUP COUNT size")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per case (the median is reported)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    with RedisServer() as server:
        bench = Bench(server, args.messages, args.batch)
        version = bench.raw.info("server")["redis_version"]
        cases: dict[str, list[tuple[str, Callable[[str], None] | None, Callable[[str], None]]]] = {
            "publish (one XADD per message)": [
                ("raw", None, bench.publish_raw),
                ("backend", None, bench.publish_backend),
                ("bus", None, bench.publish_bus),
            ],
            f"publish (pipelined, {args.batch} per round trip)": [
                ("raw", None, bench.pipeline_raw),
                ("backend", None, bench.pipeline_backend),
                ("bus", None, bench.pipeline_bus),
            ],
            f"consume (XREADGROUP {args.batch} + XACK)": [
                ("raw", bench.fill, bench.consume_raw),
                ("backend", bench.fill, bench.consume_backend),
                ("bus", bench.fill, bench.consume_bus),
                ("bus, one ack per batch", bench.fill, bench.consume_bus_batched_ack),
            ],
        }
        results: list[dict[str, Any]] = []
        for operation, implementations in cases.items():
            samples: dict[str, list[float]] = {name: [] for name, _, _ in implementations}
            for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every one alike
                for name, setup, work in implementations:
                    samples[name].append(timed(setup, work, bench, name.split(",")[0]))
            raw = statistics.median(samples["raw"])
            for name, values in samples.items():
                rate = statistics.median(values)
                results.append(
                    {
                        "operation": operation,
                        "implementation": name,
                        "msg_per_s": round(rate),
                        "best_msg_per_s": round(max(values)),
                        "ratio_to_raw": round(rate / raw, 3),
                    }
                )
        bench.backend.close()
        bench.raw.close()

    print(
        f"Redis {version} on loopback, redis-py {redis.__version__}, Python {platform.python_version()}, "
        f"{args.messages} messages of {bench.entry_bytes} bytes per run, median of {args.repeats}"
    )
    print(f"{'operation':42} {'implementation':24} {'msg/s':>9} {'best':>9} {'ratio to raw':>12}")
    for row in results:
        print(
            f"{row['operation']:42} {row['implementation']:24} {row['msg_per_s']:>9} {row['best_msg_per_s']:>9} "
            f"{row['ratio_to_raw']:>12}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"redis": version, "messages": args.messages, "batch": args.batch, "results": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
