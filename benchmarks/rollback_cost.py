"""Fast rollback against disk rollback: restoring the newest checkpoint from Tolaria's in-memory snapshot versus
reading the checkpoint file back, as a ratio measured in one run.

A run of the synthetic task (an MLP host of ``--width`` units in two blocks, Adam, a seed germinated by the fixed
schedule so the executor has state too) trains two epochs and checkpoints. Then the two tiers take turns restoring
that same checkpoint, ``--repeats`` times each: the memory tier copies the snapshot and loads it
(``Trainer.restore_last_good`` with the snapshot present); the disk tier is that call with no snapshot, which
finds the newest intact checkpoint that the record agrees with, ``torch.load``s it and loads it. Reported: the
median and p95 milliseconds of each, the checkpoint's size in memory, and the median ratio of disk over memory.
Both restore exactly the same state (tests/test_esper_run.py checks that a run continues identically either way).

Usage: python benchmarks/rollback_cost.py [--width 256] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from esper_core.plugins import Registry
from esper_core.stats import percentile
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.checkpoint import DIRECTORY as CHECKPOINTS
from esper_core.tolaria.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256, help="units in each of the host's two blocks")
    parser.add_argument("--repeats", type=int, default=30)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        registry = Registry.create(env={})
        settings = [
            "run.task=synthetic", "run.threads=1", "run.epochs=2", f"run.synthetic.widths=[{arguments.width}, "
            f"{arguments.width}]", "nissa.sinks=[]", "nissa.report.automatic=false", "tamiyo.policy=fixed-schedule",
            'tamiyo.fixed-schedule.germinations=[{epoch = 1, blueprint = "BP052"}]', f"run.runs_dir={scratch}",
            "run.name=rollback", "kasmina.max_seed_parameter_fraction=5", "tamiyo.decision_budget_ms=1e9",
        ]  # fmt: skip
        trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=settings)))
        try:
            trainer.fit()
            snapshot = trainer._snapshot  # the benchmark compares the two tiers of one private mechanism
            assert snapshot is not None, "the checkpoint fits the default fast_rollback_max_mb"
            memory_ms: list[float] = []
            disk_ms: list[float] = []
            for _ in range(arguments.repeats):
                trainer._snapshot = snapshot
                assert trainer.restore_last_good() == "memory"
                memory_ms.append(trainer.last_restore_ms)
                trainer._snapshot = None
                assert trainer.restore_last_good() == "disk"
                disk_ms.append(trainer.last_restore_ms)
            checkpoint_bytes = sum(p.stat().st_size for p in (Path(scratch) / "rollback" / CHECKPOINTS).glob("*"))
        finally:
            trainer.close()
    ratios = [disk / memory for disk, memory in zip(disk_ms, memory_ms, strict=True)]
    print(f"host of 2 x {arguments.width} units; snapshot {snapshot.nbytes / 2**20:.2f} MiB of tensors; "
          f"checkpoint files {checkpoint_bytes / 2**20:.2f} MiB; {arguments.repeats} restores each")  # fmt: skip
    print("| tier | median ms | p95 ms |")
    print("|---|---|---|")
    print(f"| memory (fast) | {statistics.median(memory_ms):.2f} | {percentile(memory_ms, 0.95):.2f} |")
    print(f"| disk | {statistics.median(disk_ms):.2f} | {percentile(disk_ms, 0.95):.2f} |")
    print(f"disk / memory, median of per-turn ratios: {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
