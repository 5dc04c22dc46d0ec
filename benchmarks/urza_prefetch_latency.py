"""Urza fetch latency through the Urza prefetch service (``esper serve urza``) and the ``urza-prefetch`` store, over a
real Redis on loopback, against a local ``UrzaLibrary.fetch`` of the same artifact in the same run.

It starts a ``redis-server`` on 127.0.0.1 (stopped by pid at the end), runs the Urza service in a thread of this
process (the ``UrzaService`` that ``esper serve urza`` runs, with a bus client and a library of its own) and opens a
``PrefetchStore`` (what ``urza.store = "urza-prefetch"`` builds) and a plain local ``UrzaLibrary``, all three on the
same library root. The blueprint is BP009 (residual block, depth 2) at a Fashion-MNIST slot shape (conv2d
16 x 14 x 14), as in ``urza_fetch.py``; the service builds it once before timing starts. Scenarios:

* baseline: a local warm hit (``UrzaLibrary.fetch`` from the library's memory cache);
* a local cold load (the library's cache cleared before each fetch: the file is read, its SHA-256 checked, parsed
  and loaded into a new module);
* a fetch through the service of an artifact it already holds: request signed and published on
  ``kernel_requests``, read by the service, answered on ``kernel_ready``, read back, then opened from the store's
  memory cache. The difference from the baseline is the bus round trip (serialize, sign, XADD, XREADGROUP, verify,
  parse, twice) and the hand-offs between the two threads;
* the same, with the store's cache cleared before each fetch, so that the client opens the artifact from disk (as a
  training process does the first time it is offered an artifact).

Usage: python benchmarks/urza_prefetch_latency.py [--samples 300] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from urza_fetch import BLUEPRINT, PARAMETERS, SLOT, latency_rows, print_table, timed

from esper_core.oona import Oona, OonaOptions
from esper_core.oona.redis_backend import RedisBackend
from esper_core.protocols import ArtifactStore
from esper_core.signing import SigningKey
from esper_core.testing.servers import RedisServer
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.prefetch import PrefetchStore
from esper_urza.service import UrzaService

#: Shared by the service and the store in this process only (a real deployment sets ESPER_SECRET in both).
SECRET = "urza-prefetch-benchmark-secret-0123456789"
WARM_UP = 20


def fetch_from(store: ArtifactStore, source: str) -> Callable[[], None]:
    """One fetch of the benchmark's artifact from ``store``, checked to come from ``source``."""

    def fetch() -> None:
        fetched = store.fetch(BLUEPRINT, SLOT, PARAMETERS)
        assert fetched.source == source, fetched.source

    return fetch


def measure_on(url: str, root: Path, samples: int) -> dict[str, list[float]]:
    """The four scenarios' timings, with the service running against the Redis at ``url`` and the library at
    ``root``; the service is stopped (and checked to have stopped) before this returns."""
    karn = KarnCatalog()
    key = SigningKey.from_secret(SECRET)
    options = OonaOptions(backend=url)
    service_backend = RedisBackend(url)
    client_backend = RedisBackend(url)
    service_bus = Oona(service_backend, signing_key=key, options=options, group="urza", consumer="urza-bench",
                       source="urza")  # fmt: skip
    service = UrzaService(service_bus, UrzaLibrary(root, [karn]))
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,), name="urza-service", daemon=True)
    worker.start()
    try:
        client_bus = Oona(client_backend, signing_key=key, options=options, group="urza-prefetch-bench",
                          consumer="urza-prefetch-bench", source="urza-prefetch-bench")  # fmt: skip
        store = PrefetchStore(client_bus, UrzaLibrary(root, [karn]), training_run_id="bench", timeout_s=120.0)
        with store, UrzaLibrary(root, [karn]) as library:
            first = store.fetch(BLUEPRINT, SLOT, PARAMETERS)  # the service builds and stores it
            assert first.source == "disk", first.source
            assert service.counters["built"] == 1, service.counters
            assert library.fetch(BLUEPRINT, SLOT, PARAMETERS).source == "disk"  # built by the service, not here
            for _ in range(WARM_UP):  # warm up every path
                library.fetch(BLUEPRINT, SLOT, PARAMETERS)
                store.fetch(BLUEPRINT, SLOT, PARAMETERS)
            timings = {
                "baseline: local warm hit (memory)": timed(fetch_from(library, "memory"), samples),
                "local cold load (disk)": timed(fetch_from(library, "disk"), samples, before=library.clear_cache),
                "service, warm; client from memory": timed(fetch_from(store, "memory"), samples),
                "service, warm; client from disk": timed(
                    fetch_from(store, "disk"), samples, before=store.library.clear_cache
                ),
            }
            assert service.counters["built"] == 1 and service.counters["failed"] == 0, service.counters
    finally:
        stop.set()
        worker.join(10)
        client_backend.close()
        service_backend.close()
    if worker.is_alive():
        raise RuntimeError("the Urza service did not stop within 10 s")
    return timings


def measure(samples: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="esper-urza-prefetch-") as directory:
        server = RedisServer(Path(directory) / "redis").start()  # on 127.0.0.1, a free port
        try:
            timings = measure_on(server.url, Path(directory) / "urza", samples)
        finally:
            server.stop()  # by pid: SIGTERM, then SIGKILL
    return latency_rows({name: (values, None) for name, values in timings.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="fetches per scenario")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.samples)
    print(
        f"Urza fetch of {BLUEPRINT} (residual_block, depth 2) at {SLOT.describe()} through esper serve urza over "
        f"loopback Redis; torch {torch.__version__}, {args.threads} thread(s), Python {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
