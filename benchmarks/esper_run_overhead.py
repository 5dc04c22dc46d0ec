"""What an epoch of `esper run` with no seeds costs over a hand-written PyTorch loop, as ratios measured in one run.

The run is examples/fashion-mnist.toml (the narrow CNN, Adam, batch 128, all 54 000 training images and 6 000 held
out for validation unless ``--train-limit`` says fewer) assembled exactly as `esper run` assembles it, with slots
attached and DORMANT, and a controller that never germinates (``tamiyo.policy = "fixed-schedule"`` with no
germinations: it waits at every decision point). The loop is the same host (same initial weights), the same Adam,
the same training and validation tensors in the same batch order, written as one would by hand: zero_grad,
forward, cross-entropy, backward, step, the loss and accuracy accumulated on the device, then a plain validation
pass (batches of 256, as Tolaria's). Both run on one torch thread (``run.threads = 1``).

An Esper epoch is what ``Trainer.fit`` does per epoch: the training, then the decision point (validation that also
measures counterfactuals, the executor's bookkeeping, the state packet, the decision, the record and telemetry),
then the checkpoint. Epochs alternate (Esper epoch k, loop epoch k, Esper epoch k+1, ...; the loop's epoch runs in
``Trainer.on_epoch``), so load on this shared machine falls on both alike. Each Esper epoch is compared with the mean
of the two loop epochs around it (the one just before and the one just after), which cancels a load that drifts;
each ratio is the median of these per-round ratios, after two warm-up rounds. The two models must end every epoch
with bit-identical weights (they do the same arithmetic); the table says whether they did.

Two figures are steadier than the wall-clock ratio on a machine shared with other jobs (two identical loops differ
by up to 4% per epoch there): the process's CPU time per epoch (not inflated when another job takes the core, but
blind to fsync waits), and the time Esper spends outside training minus the loop's (training is the same arithmetic
in both, so its difference is noise).

Usage: python benchmarks/esper_run_overhead.py [--rounds 12] [--train-limit 0] [--json out.json]
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
from torch import nn
from torch.nn import functional

from esper_core.leyline import AdaptationCommand, CommandResult, SystemStatePacket, lifecycle
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import Run, start_run
from esper_core.tolaria.history import EpochStats
from esper_core.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
#: No seeds: the controller waits at every decision point; one thread, as the loop.
NO_SEEDS = ["tamiyo.policy=fixed-schedule", "tamiyo.fixed-schedule.germinations=[]", "run.threads=1"]
#: Rounds not measured: the first Esper epoch has no loop epoch before it, and the first loop epoch warms up.
WARM_UP = 2
#: Tolaria validates in batches of max(batch_size, 256); the loop does the same.
VALIDATION_BATCH = 256


class HandLoop:
    """The plain PyTorch loop: the run's host rebuilt with the run's initial weights, its own Adam."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.model: nn.Module = run.task.build_model().to(run.device)
        host_state = {k: v for k, v in run.model.state_dict().items() if not k.startswith("esper_slots.")}
        self.model.load_state_dict(host_state)
        assert isinstance(run.optimizer, torch.optim.Adam), "the example trains with Adam"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=run.tolaria.learning_rate)
        self.train_seconds = 0.0
        self.validation_seconds = 0.0
        self.cpu_seconds = 0.0

    def epoch(self, epoch: int) -> tuple[float, float, float, float]:
        """One epoch of training and a validation pass: (train loss, train accuracy, val loss, val accuracy)."""
        model, optimizer = self.model, self.optimizer
        inputs, targets = self.run.data.train
        batch, seed = self.run.options.batch_size, self.run.options.seed
        start, cpu_start = time.perf_counter(), time.process_time()
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order = order.to(self.run.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.run.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.run.device)
        model.train()
        for begin in range(0, len(inputs), batch):
            index = order[begin : begin + batch]
            x, y = inputs[index], targets[index]
            optimizer.zero_grad(set_to_none=True)
            outputs = model(x)
            loss = functional.cross_entropy(outputs, y)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            optimizer.step()
            loss_sum += loss.detach().double() * len(index)
            correct += (outputs.detach().argmax(dim=1) == y).sum().double()
        train_loss, train_accuracy = float(loss_sum.item()) / len(inputs), float(correct.item()) / len(inputs)
        middle = time.perf_counter()
        val_inputs, val_targets = self.run.data.val
        val_loss = torch.zeros((), dtype=torch.float64, device=self.run.device)
        val_correct = torch.zeros((), dtype=torch.float64, device=self.run.device)
        model.eval()
        with torch.no_grad():
            for begin in range(0, len(val_inputs), VALIDATION_BATCH):
                x, y = val_inputs[begin : begin + VALIDATION_BATCH], val_targets[begin : begin + VALIDATION_BATCH]
                outputs = model(x)
                val_loss += functional.cross_entropy(outputs, y).double() * len(y)
                val_correct += (outputs.argmax(dim=1) == y).sum().double()
        result = (
            train_loss,
            train_accuracy,
            float(val_loss.item()) / len(val_inputs),
            float(val_correct.item()) / len(val_inputs),
        )
        end = time.perf_counter()
        self.train_seconds, self.validation_seconds = middle - start, end - middle
        self.cpu_seconds = time.process_time() - cpu_start
        return result


class Stopwatch:
    """Seconds spent in wrapped methods since the last ``take``."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, owner: Any, method: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        setattr(owner, method, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def identical(esper: nn.Module, plain: nn.Module) -> bool:
    mine = dict(esper.named_parameters())
    return all(torch.equal(mine[name], value) for name, value in plain.named_parameters())


def measure(rounds: int, train_limit: int, workdir: Path) -> dict[str, Any]:
    registry = Registry.create(env={})
    overrides = [*NO_SEEDS, f"run.epochs={rounds + WARM_UP}", f"run.runs_dir={workdir}", "run.name=esper",
                 f"run.fashion-mnist.train_limit={train_limit}", "nissa.report.automatic=false"]  # fmt: skip
    run = start_run(registry, registry.load_config(CONFIG, env={}, overrides=overrides))
    trainer = Trainer(run)
    torch.set_num_threads(1)  # the loop's own pinning (run.threads=1 already set it for the process)
    loop = HandLoop(run)
    assert identical(run.model, loop.model), "the loop must start from the run's initial weights"
    watch = Stopwatch()
    watch.wrap(trainer, "checkpoint", "checkpoint")
    watch.wrap(trainer, "decision_point", "decision_point")
    watch.wrap(run.executor, "evaluate", "validation")
    rows: list[dict[str, Any]] = []
    resumed = [time.perf_counter(), time.process_time()]

    def on_epoch(
        epoch: int, stats: EpochStats, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult
    ) -> None:
        esper_seconds, esper_cpu = time.perf_counter() - resumed[0], time.process_time() - resumed[1]
        parts = watch.take()
        assert all(seed.stage == lifecycle.DORMANT for seed in state.seeds), "no seed may germinate"
        loop_metrics = loop.epoch(epoch)
        rows.append({
            "epoch": epoch,
            "esper": esper_seconds,
            "esper_train": stats.seconds,
            "esper_validation": parts.get("validation", 0.0),
            "esper_decision_point": parts.get("decision_point", 0.0) - parts.get("validation", 0.0),
            "esper_checkpoint": parts.get("checkpoint", 0.0),
            "loop": loop.train_seconds + loop.validation_seconds,
            "esper_cpu": esper_cpu,
            "loop_cpu": loop.cpu_seconds,
            "loop_train": loop.train_seconds,
            "loop_validation": loop.validation_seconds,
            "same_weights": identical(run.model, loop.model),
            "same_train_loss": loop_metrics[0] == stats.train_loss,
            "same_val_loss": abs(loop_metrics[2] - state.metrics.val_loss) < 1e-9,
        })  # fmt: skip
        resumed[:] = [time.perf_counter(), time.process_time()]

    trainer.on_epoch = on_epoch
    try:
        trainer.fit()
    finally:
        trainer.close()
    counts = {"train": len(run.data.train[0]), "validation": len(run.data.val[0])}
    return {"rows": rows, "samples": counts, "slots": len(run.executor.export_seed_states())}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12, help="measured rounds (one Esper epoch + one loop epoch)")
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60 000)")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esper-run-overhead-") as workdir:
        measured = measure(args.rounds, args.train_limit, Path(workdir))
    every = measured["rows"]
    rows = every[WARM_UP:]

    def ratio_of(esper: Callable[[dict[str, Any]], float], loop: str) -> float:
        """Median over rounds of an Esper epoch's figure over the mean of the loop epochs before and after it."""
        pairs = zip(every[WARM_UP - 1 : -1], every[WARM_UP:], strict=True)
        return median([esper(now) / ((before[loop] + now[loop]) / 2) for before, now in pairs])

    ratio = ratio_of(lambda r: r["esper"], "loop")
    ratio_no_checkpoint = ratio_of(lambda r: r["esper"] - r["esper_checkpoint"], "loop")
    train_ratio = ratio_of(lambda r: r["esper_train"], "loop_train")
    cpu_ratio = ratio_of(lambda r: r["esper_cpu"], "loop_cpu")
    # The training is the same arithmetic in both (the weights stay bit-identical), so its ratio above is this
    # machine's noise; what Esper adds is outside it: its decision point and checkpoint against the loop's validation.
    extra = [(r["esper"] - r["esper_train"]) - (r["loop"] - r["loop_train"]) for r in rows]
    extra_share = median([e / r["loop"] for e, r in zip(extra, rows, strict=True)])
    ms = {key: round(median([r[key] for r in rows]) * 1000, 2) for key in rows[0] if key.startswith(("esper", "loop"))}
    same = all(r["same_weights"] and r["same_train_loss"] and r["same_val_loss"] for r in measured["rows"])
    results = {
        "esper_over_loop": round(ratio, 4),
        "esper_without_checkpoint_over_loop": round(ratio_no_checkpoint, 4),
        "training_only_esper_over_loop": round(train_ratio, 4),
        "cpu_time_esper_over_loop": round(cpu_ratio, 4),
        "extra_outside_training_ms": round(median(extra) * 1000, 2),
        "extra_outside_training_over_loop_epoch": round(extra_share, 5),
        "median_ms": ms,
        "identical_weights_and_losses": same,
        "rounds": len(rows),
        "samples": measured["samples"],
        "slots": measured["slots"],
        "threads": torch.get_num_threads(),
        "per_round": measured["rows"],
    }
    print(f"Fashion-MNIST example host, {measured['slots']} DORMANT slots, {measured['samples']['train']} training / "
          f"{measured['samples']['validation']} validation images, 1 thread, {len(rows)} rounds")  # fmt: skip
    print("per-epoch median (ms)            esper      loop")
    print(f"  whole epoch                 {ms['esper']:9.1f} {ms['loop']:9.1f}")
    print(f"  training                    {ms['esper_train']:9.1f} {ms['loop_train']:9.1f}")
    print(f"  validation                  {ms['esper_validation']:9.1f} {ms['loop_validation']:9.1f}")
    print(f"  rest of the decision point  {ms['esper_decision_point']:9.1f}")
    print(f"  checkpoint                  {ms['esper_checkpoint']:9.1f}")
    print(f"esper epoch / loop epoch, checkpoint included: {ratio:.4f}  (target <= 1.02)")
    print(f"esper epoch / loop epoch, checkpoint excluded: {ratio_no_checkpoint:.4f}")
    print(f"training alone, esper / loop:                  {train_ratio:.4f}  (the same arithmetic: noise)")
    print(f"process CPU time, esper / loop:                {cpu_ratio:.4f}  (no time-slicing noise, no I/O wait)")
    print(f"esper's time outside training minus the loop's: {median(extra) * 1000:.1f} ms per epoch, "
          f"{extra_share * 100:.2f}% of a loop epoch")  # fmt: skip
    print(f"identical weights and losses after every epoch: {same}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
