"""End-to-end latency of a remote decision on loopback: a state packet out over Redis Streams to the Tamiyo service,
its signed command back (``tolaria.controller = "remote"`` talking to ``esper serve tamiyo``).

It starts a ``redis-server`` on 127.0.0.1 (stopped by pid at the end), runs the Tamiyo service in a thread of this
process (exactly the service ``esper serve tamiyo`` runs, with its own bus client and Redis connection pool), and
times ``RemoteController.decide`` on state packets with 8 slots. Two baselines are measured in the same run:

- **in-process**: the controller deciding the same packets with the same policy, no bus at all (and, for
  reference, the same with the run's in-memory bus, as ``esper run`` decides: the controller then also builds and
  publishes its telemetry, which the service's controllers do too);
- **raw request-reply**: raw redis-py doing the least any request-reply over Redis Streams can do, between two
  threads of this process: the requester XADDs an entry the size of the signed state envelope and waits in
  ``XREAD BLOCK`` on the reply stream; the responder, waiting in ``XREAD BLOCK`` on the request stream, XADDs an
  entry the size of the signed command envelope. Two XADDs, two blocking XREADs, no groups, no acks, no signing.

The ratio reported is ``remote / (in-process + raw request-reply)``, p50 against p50: what the bus (envelopes,
signatures, consumer groups, acknowledgements, retries, routing) and the service's bookkeeping add to the
unavoidable decision and round trips; it is also given against the in-process decision with its in-memory bus. The
cases take turns every ``--block`` calls (this machine is shared and noisy: a burst of load then hits them alike);
the ratio is the median of the rounds' ratios, and the table's percentiles pool every round's samples.

Usage: python benchmarks/remote_decision_latency.py [--samples 300] [--rounds 7] [--block 10] [--policy heuristic]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from tamiyo_decision import percentiles, state_packet

from esper_core.leyline import BusEnvelope, SystemStatePacket, bus_message_type_of
from esper_core.oona import MemoryBackend, Oona, OonaOptions, StreamNames
from esper_core.oona.redis_backend import RedisBackend
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.testing.servers import RedisServer
from esper_core.tolaria.remote import RemoteController

MAXLEN = 10_000  # what Oona trims its streams to (oona.max_stream_length), for the raw baseline too


def signed_entry(message: Any, key: SigningKey) -> dict[str, bytes]:
    """The two fields of a bus entry carrying ``message``, as Oona writes them (the raw baseline's payload)."""
    envelope = BusEnvelope(message_type=bus_message_type_of(message), payload=message.SerializeToString())
    envelope.created_at.GetCurrentTime()
    data = envelope.SerializeToString(deterministic=True)
    return {"envelope": data, "signature": key.sign(data)}


class RawRequestReply:
    """Request-reply with raw redis-py between two threads: XADD + XREAD BLOCK each way, nothing else."""

    def __init__(self, url: str, request: dict[str, bytes], reply: dict[str, bytes], prefix: str) -> None:
        self.requests, self.replies = f"{prefix}.raw.requests", f"{prefix}.raw.replies"
        self.request, self.reply = request, reply
        self.client = redis.Redis.from_url(url, protocol=2)
        self.responder = redis.Redis.from_url(url, protocol=2)
        self.last_reply = "0-0"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._respond, daemon=True)
        self.thread.start()

    def _respond(self) -> None:
        last = "0-0"
        while not self.stop.is_set():
            got: Any = self.responder.xread({self.requests: last}, count=1, block=200)
            if got:
                last = got[0][1][-1][0]
                self.responder.xadd(self.replies, self.reply, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]

    def call(self, _packet: object = None) -> None:
        self.client.xadd(self.requests, self.request, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
        while True:
            got: Any = self.client.xread({self.replies: self.last_reply}, count=1, block=5_000)
            if got:
                self.last_reply = got[0][1][-1][0]
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close()
        self.responder.close()


def packets(count: int, first: int) -> list[SystemStatePacket]:
    """``count`` state packets, each with a packet id of its own: the service answers a packet id it has seen with
    the command already decided (at-least-once delivery), which would skip the decision being measured."""
    made = []
    for index in range(first, first + count):
        packet = state_packet(10 + index % 50)
        packet.packet_id = f"bench-{index}"
        made.append(packet)
    return made


def timed_interleaved(
    cases: dict[str, Callable[[SystemStatePacket], Any]], samples: int, first: int, block: int
) -> dict[str, list[float]]:
    """Milliseconds per call of each case over ``samples`` fresh packets, after a warm-up of 50 calls each. The
    cases take turns every ``block`` calls: often enough that a burst of load from a neighbour hits them alike,
    seldom enough that each runs with its own code and data in the caches, as it would on its own."""
    batch = packets(samples + 50, first)
    for packet in batch[:50]:
        for decide in cases.values():
            decide(packet)
    results: dict[str, list[float]] = {name: [] for name in cases}
    for start in range(50, len(batch), block):
        for name, decide in cases.items():
            for packet in batch[start : start + block]:
                began = time.perf_counter()
                decide(packet)
                results[name].append((time.perf_counter() - began) * 1000.0)
    return results


def measure(samples: int, rounds: int, policy: str, block: int = 10) -> dict[str, Any]:
    os.environ.setdefault(SECRET_ENV_VAR, "benchmark-secret-0123456789abcdef")
    key = SigningKey.from_env()
    assert key is not None
    registry = Registry.create(env={})
    streams = StreamNames.prefixed(f"bench.{time.time_ns()}")
    options = OonaOptions(streams=streams)
    with RedisServer() as server, tempfile.TemporaryDirectory() as directory:
        config = registry.load_config(
            env={}, overrides=[f"tamiyo.policy={policy}", f"tamiyo.service.data_dir={directory}"]
        )
        local = registry.build(
            registry.controller("tamiyo"), config=config, signing_key=key, run_dir=Path(directory),
            training_run_id="bench",
        )  # fmt: skip
        run_bus = Oona(MemoryBackend(), signing_key=key, group="tolaria", consumer="bench", source="tolaria")
        local_with_bus = registry.build(
            registry.controller("tamiyo"), config=config, signing_key=key, run_dir=Path(directory) / "with-bus",
            training_run_id="bench", bus=run_bus,
        )  # fmt: skip
        raw = RawRequestReply(
            server.url, signed_entry(state_packet(10), key), signed_entry(local.decide(state_packet(10)), key),
            streams.normal,
        )  # fmt: skip

        service_backend = RedisBackend(server.url)
        service_bus = Oona(
            service_backend, signing_key=key, options=options, group="tamiyo", consumer="tamiyo-bench", source="tamiyo"
        )
        service = registry.build(registry.service("tamiyo"), config=config, signing_key=key, bus=service_bus)
        stop = threading.Event()
        worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
        worker.start()
        client_backend = RedisBackend(server.url)
        client_bus = Oona(
            client_backend, signing_key=key, options=options, group="tolaria-bench", consumer="bench", source="tolaria"
        )
        remote = RemoteController(client_bus, training_run_id="bench", timeout_s=10.0)

        cases = {
            "in-process": local.decide,
            "in-process, in-memory bus": local_with_bus.decide,
            "raw request-reply": raw.call,
            "remote": remote.decide,
        }
        pooled: dict[str, list[float]] = {name: [] for name in cases}
        ratios: list[float] = []
        ratios_with_bus: list[float] = []
        for index in range(rounds):
            timings = timed_interleaved(cases, samples, index * (samples + 50), block)
            p50s = {}
            for name, values in timings.items():
                pooled[name] += values
                p50s[name] = statistics.median(values)
            ratios.append(p50s["remote"] / (p50s["in-process"] + p50s["raw request-reply"]))
            ratios_with_bus.append(p50s["remote"] / (p50s["in-process, in-memory bus"] + p50s["raw request-reply"]))

        stop.set()
        worker.join(10)
        remote.close()
        client_backend.close()
        service_backend.close()
        raw.close()
        local.close()
        local_with_bus.close()
    rows = []
    for name, values in pooled.items():
        p50, p95 = percentiles(values)
        rows.append({"what": f"{name} ({policy})" if name != "raw request-reply" else name, "p50_ms": p50,
                     "p95_ms": p95})  # fmt: skip
    return {
        "rows": rows,
        "round_ratios": ratios,
        "ratio": statistics.median(ratios),
        "ratio_with_bus": statistics.median(ratios_with_bus),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="decisions per case and round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the ratio is their median)")
    parser.add_argument("--block", type=int, default=10, help="calls of one case before the next takes its turn")
    parser.add_argument("--policy", default="heuristic")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    result = measure(options.samples, options.rounds, options.policy, options.block)
    print(
        f"8 slots, loopback Redis, {options.rounds} rounds of {options.samples} decisions per case, taking turns every "
        f"{options.block}"
    )
    print(f"{'':48} {'p50 ms':>8} {'p95 ms':>8}")
    for row in result["rows"]:
        print(f"{row['what']:48} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f}")
    spread = ", ".join(f"{ratio:.2f}" for ratio in result["round_ratios"])
    print(f"remote / (in-process + raw request-reply), p50: {result['ratio']:.2f} (rounds: {spread}; target <= 1.5)")
    print(f"remote / (in-process with its in-memory bus + raw request-reply), p50: {result['ratio_with_bus']:.2f}")
    if options.json is not None:
        meta = {"python": platform.python_version(), "samples": options.samples, "rounds": options.rounds}
        options.json.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
