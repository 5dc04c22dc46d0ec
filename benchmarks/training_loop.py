"""The loop real models need (issue #16): what bf16 autocast and gradient accumulation do to a training step's time,
against the default fp32 step in the same run, and what the decision points' gradient measurements cost against
an epoch.

**Steps.** For each host (``--widths``, Fashion-MNIST CNNs of examples/fashion-mnist.toml's shape: the example's
narrow one and a wider one by default), identical copies of the host (same initial weights), each with its own Adam,
are trained by :class:`esper_core.tolaria.step.TrainingStep` in the configurations measured: fp32 (the default),
bf16 autocast, fp32 with ``accumulation_steps = 4`` (and, with ``--compile``, fp32 through ``torch.compile``, whose
cold compile is timed apart). Rounds take turns: every configuration trains ``--steps`` batches of 128 (the same
batches, in the same order) per round; each ratio is the median over rounds of (configuration's time / fp32's time
in that round), after one warm-up round, so load on this shared machine falls on all alike.

**Measurements.** A real run of examples/fashion-mnist.toml (1 thread, all 54,000 training images unless
``--train-limit`` says fewer) with a seed germinated at epoch 1 by the fixed schedule, so that the later decision
points also measure the host-seed conflict (second-order backward passes on the probe's micro-batches). Each decision
point's ``Trainer.measure_gradients`` is timed and set against that epoch's training time.

Usage: python benchmarks/training_loop.py [--rounds 8] [--steps 20] [--widths 1,2 16,32] [--compile]
       [--train-limit 0] [--epochs 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from esper_core.leyline import AdaptationCommand, CommandResult, SystemStatePacket
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.gradients import GradientMeasurement
from esper_core.tolaria.history import EpochStats
from esper_core.tolaria.step import TrainingStep
from esper_core.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
BATCH = 128


def build(widths: str, train_limit: int, threads: int, runs_dir: Path, *extra: str) -> Trainer:
    registry = Registry.create(env={})
    overrides = [
        f"run.runs_dir={runs_dir}",
        f"run.name=w{widths.replace(',', '-')}{len(list(runs_dir.iterdir()))}",
        f"run.threads={threads}",
        f"run.fashion-mnist.widths=[{widths}]",
        f"run.fashion-mnist.train_limit={train_limit}",
        "nissa.sinks=[]",
        *extra,
    ]
    return Trainer(start_run(registry, registry.load_config(CONFIG, env={}, overrides=overrides)))


def step_ratios(widths: str, args: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    """Median per-round time ratios of each configuration's steps over fp32's, on one host."""
    trainer = build(widths, args.train_limit, args.threads, runs_dir)
    run = trainer.run
    configurations: dict[str, dict[str, Any]] = {
        "fp32": {},
        "bf16": {"precision": "bf16"},
        "accumulation 4": {"accumulation_steps": 4},
    }
    if args.compile:
        configurations["compile"] = {"compile": True}
    steps: dict[str, TrainingStep] = {}
    for name, options in configurations.items():
        torch.manual_seed(0)
        model = run.task.build_model().to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=run.tolaria.learning_rate)
        steps[name] = TrainingStep(model, optimizer, run.task.loss, run.task.correct, run.device, **options)
        model.train()
    compile_seconds = None
    if args.compile:
        steps["compile"].prepare("host")
        inputs, targets = run.data.train
        started = time.perf_counter()
        steps["compile"](inputs[:BATCH], targets[:BATCH], 0)
        compile_seconds = time.perf_counter() - started
    inputs, targets = run.data.train
    batches = [(inputs[i * BATCH : (i + 1) * BATCH], targets[i * BATCH : (i + 1) * BATCH]) for i in range(args.steps)]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            for number, (batch_inputs, batch_targets) in enumerate(batches):
                step(batch_inputs, batch_targets, number)
            times[name].append((time.perf_counter() - started) / len(batches))
    parameters = sum(p.numel() for p in steps["fp32"].model.parameters())
    trainer.close()
    result: dict[str, Any] = {"widths": widths, "parameters": parameters, "compile_seconds": compile_seconds}
    for name, series in times.items():
        measured = series[1:]  # the first round warms up
        result[name] = {
            "step_ms": statistics.median(measured) * 1000.0,
            "ratio": statistics.median(t / f for t, f in zip(measured, times["fp32"][1:], strict=True)),
        }
    return result


def measurement_cost(args: argparse.Namespace, runs_dir: Path) -> list[dict[str, Any]]:
    """Each decision point's gradient measurements against the epoch's training time, in a real run."""
    schedule = ["tamiyo.policy=fixed-schedule", 'tamiyo.fixed-schedule.germinations=[{epoch = 1, blueprint = "BP057"}]']
    trainer = build("1,2", args.train_limit, 1, runs_dir, f"run.epochs={args.epochs}", *schedule)
    rows: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    measure = trainer.measure_gradients

    def timed(seeds: list[Any]) -> GradientMeasurement | None:
        started = time.perf_counter()
        measured = measure(seeds)
        pending["ms"] = (time.perf_counter() - started) * 1000.0
        pending["pairs"] = measured.pairs if measured is not None else 0
        return measured

    def on_epoch(
        epoch: int, stats: EpochStats, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult
    ) -> None:
        rows.append({"epoch": epoch, "train_ms": stats.seconds * 1000.0, **pending,
                     "share": pending["ms"] / (stats.seconds * 1000.0)})  # fmt: skip

    trainer.measure_gradients = timed  # type: ignore[method-assign]
    trainer.on_epoch = on_epoch
    try:
        trainer.fit()
    finally:
        trainer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--widths", nargs="+", default=["1,2", "16,32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        runs_dir = Path(directory)
        hosts = [step_ratios(widths, args, runs_dir) for widths in args.widths]
        decision_points = measurement_cost(args, runs_dir)
    names = [name for name in hosts[0] if isinstance(hosts[0][name], dict)]
    print(f"training step, batch {BATCH}, {args.threads} thread(s): median ms per step, and the median per-round "
          f"ratio to fp32 ({args.rounds} rounds of {args.steps} steps)")  # fmt: skip
    for host in hosts:
        cells = "  ".join(f"{name} {host[name]['step_ms']:.2f} ms (x{host[name]['ratio']:.3f})" for name in names)
        print(f"  widths [{host['widths']}] ({host['parameters']:,} parameters): {cells}")
        if host["compile_seconds"] is not None:
            print(f"    cold compile (first step): {host['compile_seconds']:.1f} s")
    print("gradient measurements per decision point (examples/fashion-mnist.toml, 1 thread):")
    for row in decision_points:
        print(f"  epoch {row['epoch']}: {row['ms']:.1f} ms, {row['pairs']} host-seed pairs, "
              f"{row['share']:.3%} of the epoch's training ({row['train_ms']:.0f} ms)")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"steps": hosts, "measurements": decision_points}, handle, indent=2)


if __name__ == "__main__":
    main()
