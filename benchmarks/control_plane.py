"""What the control plane costs per decision point, as a share of the epoch's training time, in one real run.

The run is examples/fashion-mnist.toml as it is (the narrow CNN, the heuristic controller growing seeds), on one
torch thread, assembled and trained exactly as `esper run` does it. At every epoch's decision point the Trainer's
and its components' own methods are timed (they are wrapped on the instances; nothing is added to the training
step):

- ``kasmina``: the executor's bookkeeping (``decision_point``): ages, embargoes, the watchdog's health checks of
  every seed in flight, the slot statistics on the probe batch;
- ``packet``: the slots' ``SeedState`` export, the hardware context and the ``SystemStatePacket``;
- ``decide``: the controller's decision (heuristic policy, risk engine, signing), on Tolaria's worker thread and
  waited for;
- ``apply``: Kasmina verifying and applying the command (its gates included);
- ``observe``: the controller judging its earlier decisions (field reports);
- ``record``: the run record, the plugin hooks, the bus and the telemetry relayed to the sinks (which flush);
- ``count``: counting a training step's FLOPs anew when the command changed the seeds (the run's compute record).

Validation (with its counterfactual measurements) and the checkpoint are excluded: the control plane is the decision
point less its validation pass, divided by the epoch's training time (``EpochStats.seconds``). The figure is given
per decision point (median and worst over the run) and over the whole run (sums).

Each epoch's compute, as the run records it (counted FLOPs), is shown beside it: the share of the epoch's training,
validation and counterfactual-measurement FLOPs that the measurement took (``cf share``).

Usage: python benchmarks/control_plane.py [--epochs 15] [--train-limit 0] [--threads 1] [--set KEY=VALUE]
[--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import esper_core.tolaria.trainer as trainer_module
from esper_core.leyline import AdaptationCommand, CommandResult, SystemStatePacket, lifecycle
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.history import EpochStats
from esper_core.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
PARTS = ["kasmina", "packet", "decide", "apply", "observe", "record", "count"]
TARGET = 0.005


class Stopwatch:
    """Seconds spent in wrapped callables since the last ``take``."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def measure(epochs: int, train_limit: int, threads: int, workdir: Path, extra: list[str]) -> dict[str, Any]:
    registry = Registry.create(env={})
    overrides = [f"run.epochs={epochs}", f"run.runs_dir={workdir}", "run.name=control-plane",
                 f"run.fashion-mnist.train_limit={train_limit}", f"run.threads={threads}",
                 "nissa.report.automatic=false", *extra]  # fmt: skip
    run = start_run(registry, registry.load_config(CONFIG, env={}, overrides=overrides))
    trainer = Trainer(run)
    watch = Stopwatch()
    watch.wrap(trainer, "decision_point", "decision_point")
    watch.wrap(trainer, "checkpoint", "checkpoint")
    watch.wrap(run.executor, "evaluate", "validation")
    watch.wrap(run.executor, "decision_point", "kasmina")
    watch.wrap(run.executor, "export_seed_states", "packet")
    watch.wrap(trainer_module, "hardware_context", "packet")
    watch.wrap(trainer_module, "build_state_packet", "packet")
    watch.wrap(trainer, "_decide", "decide")
    watch.wrap(trainer, "_apply", "apply")
    watch.wrap(run.controller, "observe", "observe")
    watch.wrap(trainer.recorder, "decision_point", "record")
    watch.wrap(trainer, "refresh_step_cost", "count")
    rows: list[dict[str, Any]] = []
    spent = {"validation": 0, "measurement": 0}

    def on_epoch(
        epoch: int, stats: EpochStats, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult
    ) -> None:
        history = trainer.history
        validation_flops = history.validation_flops - spent["validation"]
        measurement_flops = history.measurement_flops - spent["measurement"]
        spent["validation"], spent["measurement"] = history.validation_flops, history.measurement_flops
        epoch_flops = stats.training_flops + validation_flops + measurement_flops
        spent_s = watch.take()
        control = spent_s["decision_point"] - spent_s.get("validation", 0.0)
        parts = {name: spent_s.get(name, 0.0) for name in PARTS}
        rows.append({
            "epoch": epoch,
            "train_seconds": stats.seconds,
            "control_plane_seconds": control,
            "share": control / stats.seconds,
            "parts_seconds": parts,
            "other_seconds": control - sum(parts.values()),
            "validation_seconds": spent_s.get("validation", 0.0),
            "checkpoint_seconds": spent_s.get("checkpoint", 0.0),
            "training_flops": stats.training_flops,
            "validation_flops": validation_flops,
            "measurement_flops": measurement_flops,
            "measurement_share": measurement_flops / epoch_flops if epoch_flops else 0.0,
            "command": lifecycle.command_name(command),
            "seeds_in_flight": sum(seed.stage in lifecycle.IN_FLIGHT for seed in state.seeds),
        })  # fmt: skip

    trainer.on_epoch = on_epoch
    try:
        trainer.fit()
    finally:
        trainer.close()
    return {"rows": rows, "train_samples": len(run.data.train[0]), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the run (the example's 15)")
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60 000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration override, e.g. urza.urabrask.rate_on_first_use=false")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esper-control-plane-") as workdir:
        measured = measure(args.epochs, args.train_limit, args.threads, Path(workdir), args.set)
    rows = measured["rows"]
    shares = [row["share"] for row in rows]
    overall = sum(row["control_plane_seconds"] for row in rows) / sum(row["train_seconds"] for row in rows)
    part_ms = {
        name: {
            "median": round(statistics.median(row["parts_seconds"][name] for row in rows) * 1000, 3),
            "max": round(max(row["parts_seconds"][name] for row in rows) * 1000, 3),
        }
        for name in PARTS
    }
    results = {
        "share_median": round(statistics.median(shares), 5),
        "share_max": round(max(shares), 5),
        "share_overall": round(overall, 5),
        "control_plane_ms_median": round(statistics.median(row["control_plane_seconds"] for row in rows) * 1000, 3),
        "train_seconds_median": round(statistics.median(row["train_seconds"] for row in rows), 3),
        "parts_ms": part_ms,
        "measurement_share_max": round(max(row["measurement_share"] for row in rows), 5),
        "train_samples": measured["train_samples"],
        "threads": measured["threads"],
        "per_epoch": rows,
    }
    print(f"examples/fashion-mnist.toml, {measured['train_samples']} training images, {measured['threads']} thread(s)")
    print("epoch  train s  control ms   share   kasmina  packet  decide   apply observe  record   count  other  "
          "cf share  command")  # fmt: skip
    for row in rows:
        parts = "".join(f"{row['parts_seconds'][name] * 1000:8.2f}" for name in PARTS)
        print(f"{row['epoch']:5d} {row['train_seconds']:8.2f} {row['control_plane_seconds'] * 1000:11.2f} "
              f"{row['share'] * 100:6.3f}% {parts} {row['other_seconds'] * 1000:6.2f}  "
              f"{row['measurement_share'] * 100:7.2f}%  {row['command']} "
              f"({row['seeds_in_flight']} in flight)")  # fmt: skip
    medians = "  ".join(f"{name} {part_ms[name]['median']:.2f}" for name in PARTS)
    print(f"median per part (ms): {medians}")
    print(f"control plane / epoch training: median {statistics.median(shares) * 100:.3f}%, worst "
          f"{max(shares) * 100:.3f}%, whole run {overall * 100:.3f}%  (target <= {TARGET * 100:.1f}%)")  # fmt: skip
    flops = {part: sum(row[f"{part}_flops"] for row in rows) for part in ("training", "validation", "measurement")}
    print(f"counterfactual measurement / epoch compute (counted FLOPs): worst "
          f"{results['measurement_share_max'] * 100:.2f}%, whole run "
          f"{flops['measurement'] / sum(flops.values()) * 100:.2f}%")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
