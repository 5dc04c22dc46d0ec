"""Urza fetch latency: a warm cache hit, a cold load from disk, and a build on a miss, against constructing the
bare module directly in the same run.

The blueprint is BP009 (residual block: two 3x3 convolutions, 4,640 parameters) at a Fashion-MNIST slot shape
(conv2d 16 x 14 x 14, after the first conv + pool of a small CNN). Targets (issue #4): warm hit p95 well under 1 ms,
cold load p95 <= 10 ms. A cold load reads the artifact file (from the OS page cache once it is warm), checks its
SHA-256, parses it with torch.load(weights_only=True), builds the module and loads the weights. A build on a miss is
Tezzeret's whole pipeline (build, probes, timing of six forwards) plus the durable save (journal, atomic write,
SQLite row, each fsynced).

Usage: python benchmarks/urza_fetch.py [--samples 300] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from esper_core.leyline import SlotKind
from esper_core.protocols import SlotShape
from esper_core.stats import percentile
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary

SLOT = SlotShape(SlotKind.SLOT_KIND_CONV2D, (16, 14, 14))
BLUEPRINT = "BP009"
PARAMETERS = {"depth": 2.0}


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95, nearest rank (esper_core.stats): what the services report, computed the same way."""
    return percentile(samples, 0.5), percentile(samples, 0.95)


def timed(function: Callable[[], Any], samples: int, before: Callable[[], Any] | None = None) -> list[float]:
    """Milliseconds per call of ``function``; ``before`` runs untimed ahead of each call."""
    results = []
    for _ in range(samples):
        if before is not None:
            before()
        start = time.perf_counter()
        function()
        results.append((time.perf_counter() - start) * 1000.0)
    return results


def bare_module() -> nn.Module:
    """What constructing the same module directly costs: plain PyTorch, no catalog, no library."""
    return nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))


def measure(samples: int) -> list[dict[str, Any]]:
    karn = KarnCatalog()
    with tempfile.TemporaryDirectory() as root, UrzaLibrary(root, [karn]) as library:
        first = library.fetch(BLUEPRINT, SLOT, PARAMETERS)
        assert first.source == "built"
        key = library.query(blueprint_id=BLUEPRINT)[0].key
        for _ in range(20):  # warm up both paths
            bare_module()
            library.fetch(BLUEPRINT, SLOT, PARAMETERS)

        def fetch_from(source: str) -> Callable[[], None]:
            def fetch() -> None:
                fetched = library.fetch(BLUEPRINT, SLOT, PARAMETERS)
                assert fetched.source == source, fetched.source

            return fetch

        def evict() -> None:
            library.evict(key)

        baseline = timed(bare_module, samples)
        scenarios = {
            "warm hit (memory)": (timed(fetch_from("memory"), samples), 1.0),
            "cold load (disk)": (timed(fetch_from("disk"), samples, before=library.clear_cache), 10.0),
            "build on miss": (timed(fetch_from("built"), max(10, samples // 10), before=evict), None),
        }
    return latency_rows({"baseline: construct the bare module": (baseline, None), **scenarios})


def latency_rows(timings: dict[str, tuple[list[float], float | None]]) -> list[dict[str, Any]]:
    """One row per scenario (name: milliseconds, target p95): p50, p95 and p50 over the first scenario's p50."""
    base_p50, _ = percentiles(next(iter(timings.values()))[0])
    rows = []
    for name, (values, target) in timings.items():
        p50, p95 = percentiles(values)
        rows.append(
            {
                "scenario": name,
                "samples": len(values),
                "p50_ms": round(p50, 4),
                "p95_ms": round(p95, 4),
                "p50_over_baseline": round(p50 / base_p50, 2),
                "target_p95_ms": target,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'scenario':38} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p50/base':>9} {'target p95':>11}")
    for row in rows:
        target = "" if row["target_p95_ms"] is None else f"<= {row['target_p95_ms']:g} ms"
        print(
            f"{row['scenario']:38} {row['samples']:>5} {row['p50_ms']:>9.3f} {row['p95_ms']:>9.3f} "
            f"{row['p50_over_baseline']:>9} {target:>11}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="fetches per scenario (builds: a tenth)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.samples)
    print(
        f"Urza fetch of {BLUEPRINT} (residual_block, depth 2) at {SLOT.describe()}; torch {torch.__version__}, "
        f"{args.threads} thread(s), Python {platform.python_version()}, {platform.machine()}"
    )
    print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
