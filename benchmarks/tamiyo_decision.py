"""Tamiyo decision latency: the heuristic and learned policies, and the whole controller around them, on a state
packet with 8 slots and 20 offered blueprints.

The baseline, in the same run, is the ``fixed-schedule`` policy: a timetable lookup, so the ratio says what the
judgement itself costs. The controller rows add the risk engine, signing and the field-report bookkeeping. The
issue's target is a p95 of at most 5 ms for a decision.

Usage: python benchmarks/tamiyo_decision.py [--samples 2000] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from esper_core.leyline import (
    BlueprintDescriptor,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    lifecycle,
)
from esper_core.plugins import Registry
from esper_core.signing import SigningKey
from esper_core.stats import percentile

SLOTS = 8
BLUEPRINTS = 20


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95, nearest rank (esper_core.stats): what the services report, computed the same way."""
    return percentile(samples, 0.5), percentile(samples, 0.95)


def state_packet(epoch: int) -> SystemStatePacket:
    """A mid-run packet: dormant slots, seeds training, blending and on probation, every metric filled."""
    stages = [lifecycle.DORMANT] * 4 + [lifecycle.TRAINING, lifecycle.BLENDING, lifecycle.PROBATIONARY]
    seeds = []
    for index in range(SLOTS):
        stage = stages[index] if index < len(stages) else lifecycle.DORMANT
        vector = index == SLOTS - 1
        seed = SeedState(
            slot_id=f"slot{index}",
            stage=stage,
            slot_kind=SlotKind.SLOT_KIND_VECTOR if vector else SlotKind.SLOT_KIND_CONV2D,
            slot_shape=[128] if vector else [16, 14, 14],
            layer_depth=index,
            host_gradient_norm=0.1 * (index + 1),
            activation_rms=1.0,
        )
        if stage != lifecycle.DORMANT:
            seed.seed_id, seed.blueprint_id, seed.parameter_count = f"slot{index}#1", "BP056", 4000
            seed.stage_epochs, seed.age_epochs = 1, 3
            seed.contribution, seed.contribution_stderr = 0.01, 0.002
            seed.alpha_steps, seed.alpha_total_steps = 100, 300
        seeds.append(seed)
    metrics = TrainingMetrics(
        epoch=epoch, global_step=epoch * 400, epochs_total=100, val_loss=0.5 - 0.001 * epoch, val_accuracy=0.8,
        train_loss=0.52, train_accuracy=0.79, parameter_count=100_000, loss_delta=-0.001, loss_ewma=0.5,
        best_val_loss=0.49, samples_per_second=5000.0, hook_latency_ms=5.0, learning_rate=0.002,
    )  # fmt: skip
    packet = SystemStatePacket(
        version=1, packet_id=f"bench-{epoch}", training_run_id="bench", current_epoch=epoch, global_step=epoch * 400,
        metrics=metrics, seeds=seeds,
    )  # fmt: skip
    packet.timestamp.GetCurrentTime()
    return packet


def offered(catalog: Any) -> list[BlueprintDescriptor]:
    safe = [d for d in catalog.descriptors() if not d.quarantine_only]
    return safe[:BLUEPRINTS]


def timed(decide: Callable[[SystemStatePacket], Any], samples: int) -> list[float]:
    packets = [state_packet(10 + index % 50) for index in range(samples)]
    for packet in packets[:100]:  # warm up
        decide(packet)
    results = []
    for packet in packets:
        start = time.perf_counter()
        decide(packet)
        results.append((time.perf_counter() - start) * 1000.0)
    return results


def measure(samples: int) -> list[dict[str, Any]]:
    registry = Registry.create(env={})
    key = SigningKey.generate()
    catalog = registry.build(registry.blueprint_catalog("karn"))
    blueprints = offered(catalog)
    rows = []
    baseline_p50 = None
    for name in ("fixed-schedule", "heuristic", "learned"):
        config = registry.load_config(env={}, overrides=[f"tamiyo.policy={name}"])
        policy = registry.build(registry.policy(name), config=config, signing_key=key, catalogs=[catalog])

        def decide(packet: SystemStatePacket, policy: Any = policy) -> Any:
            return policy.decide(packet, blueprints)

        p50, p95 = percentiles(timed(decide, samples))
        baseline_p50 = baseline_p50 or p50
        rows.append({"what": f"policy {name}", "p50_ms": p50, "p95_ms": p95, "ratio_p50": p50 / baseline_p50})
        with tempfile.TemporaryDirectory() as directory:
            controller = registry.build(
                registry.controller("tamiyo"), config=config, signing_key=key, run_dir=Path(directory),
                catalogs=[catalog], training_run_id="bench",
            )  # fmt: skip
            controller.blueprints = blueprints  # the same 20 offered blueprints as the bare policy
            p50, p95 = percentiles(timed(controller.decide, samples))
            controller.close()
        rows.append({"what": f"controller + {name}", "p50_ms": p50, "p95_ms": p95, "ratio_p50": p50 / baseline_p50})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    rows = measure(options.samples)
    print(f"{SLOTS} slots, {BLUEPRINTS} blueprints, {options.samples} decisions each, torch threads {options.threads}")
    print(f"{'':32} {'p50 ms':>8} {'p95 ms':>8} {'p50 / fixed-schedule':>22}")
    for row in rows:
        print(f"{row['what']:32} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['ratio_p50']:22.1f}")
    if options.json is not None:
        meta = {"python": platform.python_version(), "torch": torch.__version__, "samples": options.samples}
        options.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
