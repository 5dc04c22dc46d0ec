"""End-to-end latency of a remote decision on loopback: a state packet out over Redis Streams to the Tamiyo service,
its signed command back (``tolaria.controller = "remote"`` talking to ``esper serve tamiyo``).

It starts a ``redis-server`` on 127.0.0.1 (stopped by pid at the end), runs the Tamiyo service in a thread of this
process (exactly the service ``esper serve tamiyo`` runs, with its own bus client), and times
``RemoteController.decide`` on state packets with 8 slots. The baseline, in the same run, is the in-process
controller deciding the same packets with the same policy: the difference is the bus (serialize, sign, XADD,
XREADGROUP, verify, parse, twice) and the hand-offs between the two threads.

Usage: python benchmarks/remote_decision_latency.py [--samples 1000] [--policy heuristic] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
from pathlib import Path
from typing import Any

from tamiyo_decision import percentiles, timed

from esper_core.oona import Oona
from esper_core.oona.redis_backend import RedisBackend
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.testing.servers import RedisServer
from esper_core.tolaria.remote import RemoteController


def measure(samples: int, policy: str) -> list[dict[str, Any]]:
    os.environ.setdefault(SECRET_ENV_VAR, "benchmark-secret-0123456789abcdef")
    key = SigningKey.from_env()
    assert key is not None
    registry = Registry.create(env={})
    with RedisServer() as server, tempfile.TemporaryDirectory() as directory:
        config = registry.load_config(
            env={}, overrides=[f"tamiyo.policy={policy}", f"tamiyo.service.data_dir={directory}"]
        )
        local = registry.build(
            registry.controller("tamiyo"), config=config, signing_key=key, run_dir=Path(directory),
            training_run_id="bench",
        )  # fmt: skip
        local_p50, local_p95 = percentiles(timed(local.decide, samples))
        local.close()

        backend = RedisBackend(server.url)
        service_bus = Oona(backend, signing_key=key, group="tamiyo", consumer="tamiyo-bench", source="tamiyo")
        service = registry.build(registry.service("tamiyo"), config=config, signing_key=key, bus=service_bus)
        stop = threading.Event()
        worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
        worker.start()
        client_bus = Oona(
            RedisBackend(server.url), signing_key=key, group="tolaria-bench", consumer="bench", source="tolaria"
        )
        remote = RemoteController(client_bus, training_run_id="bench", timeout_s=10.0)
        remote_p50, remote_p95 = percentiles(timed(remote.decide, samples))
        stop.set()
        worker.join(10)
        remote.close()
        backend.close()
    return [
        {"what": f"in-process controller ({policy})", "p50_ms": local_p50, "p95_ms": local_p95, "ratio_p50": 1.0},
        {"what": f"remote over Redis ({policy})", "p50_ms": remote_p50, "p95_ms": remote_p95,
         "ratio_p50": remote_p50 / local_p50},
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--policy", default="heuristic")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    rows = measure(options.samples, options.policy)
    print(f"8 slots, {options.samples} decisions each, loopback Redis")
    print(f"{'':36} {'p50 ms':>8} {'p95 ms':>8} {'p50 / in-process':>18}")
    for row in rows:
        print(f"{row['what']:36} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['ratio_p50']:18.1f}")
    if options.json is not None:
        meta = {"python": platform.python_version(), "samples": options.samples}
        options.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
