"""Does growing pay? The efficacy experiment, second edition: six arms on Fashion-MNIST, two host families.

Arms, with the same data, epochs, batch size and optimiser (examples/fashion-mnist.toml):

- ``static-small``: the family's small host, never grown.
- ``static-large``: the family's large host, never grown: the gap growth should close.
- ``static-matched``: a static host whose parameter count is nearest the heuristic arm's mean final count (widths
  searched block by block, between the small host's and four times the large host's; ties go to the fewer FLOPs): *does
  growing beat starting at the final size?* It runs after the heuristic arm, which fixes its size.
- ``fixed-schedule``: width seeds germinated at fixed epochs into fixed slots with fixed widths, started at zero
  (``kasmina.width_init = "zero"``), advanced without judgement: what deciding and initialising add.
- ``heuristic``: the heuristic controller with width seeds, statistics initialisation and budget sizing (for the
  narrow family exactly ``examples/fashion-mnist.toml``, what ``make run`` runs).
- ``gromo`` (narrow family only): GroMo's own TINY growth to the heuristic arm's mean final parameter count
  (``gromo_arm.py``, GROMO.md). Without GroMo installed this arm fails with the install hint; the others still run
  and the harness exits with status 3.

Every run is a real process (``esper run``, or ``gromo_arm.py``); the numbers come from the runs' records. Training
compute is the counted FLOPs every run records (training steps, validation passes, counterfactual measurements;
GroMo's statistics and line searches), relative to ``static-large``. ``--settled`` names the seeds the configuration
was settled on; the table is given for them and, separately, for the held-out seeds.

    python benchmarks/efficacy/run.py --family narrow --seeds 0 1 2 3 4 --out var/efficacy/narrow
    python benchmarks/efficacy/run.py --family large --seeds 0 1 2 --out var/efficacy/large

The markdown tables go to stdout and, with every run's numbers, to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
SIDE, CLASSES = 28, 10
GROMO, GROMO_MISSING = "gromo", 3  # gromo_arm.py's exit status when GroMo is not installed
ARMS = ("static-small", "static-large", "static-matched", "fixed-schedule", "heuristic", GROMO)
STATIC = ["tamiyo.policy=fixed-schedule", "tamiyo.fixed-schedule.germinations=[]"]


def _widths(widths: Sequence[int]) -> str:
    return f"run.fashion-mnist.widths=[{', '.join(str(w) for w in widths)}]"


@attrs.frozen
class Family:
    """A host family: its small and large widths, what every arm shares, and how the growing arms grow."""

    name: str
    small: tuple[int, ...]
    large: tuple[int, ...]
    common: tuple[str, ...]
    heuristic: tuple[str, ...]
    fixed_schedule: tuple[str, ...]
    #: Width steps the static-matched search walks (1 for the narrow hosts; coarser for the large ones).
    step: int = 1
    gromo: bool = False

    def arm(self, arm: str, matched: Sequence[int] | None) -> list[str]:
        if arm == "static-small":
            return [*STATIC, _widths(self.small)]
        if arm == "static-large":
            return [*STATIC, _widths(self.large)]
        if arm == "static-matched":
            assert matched is not None
            return [*STATIC, _widths(matched)]
        if arm == "fixed-schedule":
            return [_widths(self.small), "kasmina.width_init=zero", *self.fixed_schedule]
        return [_widths(self.small), *self.heuristic]


NARROW_SLOTS = '["blocks.0:input->blocks.1.0", "blocks.1:input->head"]'
FAMILIES = {
    # examples/fashion-mnist.toml as it is: the heuristic arm is what `make run` runs.
    "narrow": Family(
        name="narrow",
        small=(1, 2),
        large=(4, 8),
        common=(),
        heuristic=(),
        fixed_schedule=(
            "tamiyo.policy=fixed-schedule",
            'tamiyo.fixed-schedule.germinations=[{epoch = 3, blueprint = "BP057", '
            'slot = "blocks.0:input->blocks.1.0", parameters = {width = 8}}]',
        ),
        gromo=True,
    ),
    # Three blocks, the same data and epochs as the narrow family (docs/results.md says how it was set).
    "large": Family(
        name="large",
        small=(8, 16, 32),
        large=(32, 64, 128),
        common=(
            'run.fashion-mnist.slots=["blocks.0:input->blocks.1.0", "blocks.1:input->blocks.2.0", '
            '"blocks.2:input->head"]',
        ),
        heuristic=("tamiyo.heuristic.max_added_parameter_fraction=3.5",),
        fixed_schedule=(
            "tamiyo.policy=fixed-schedule",
            'tamiyo.fixed-schedule.germinations=[{epoch = 2, blueprint = "BP057", '
            'slot = "blocks.1:input->blocks.2.0", parameters = {width = 16}}, {epoch = 3, blueprint = "BP057", '
            'slot = "blocks.0:input->blocks.1.0", parameters = {width = 16}}]',
        ),
        step=8,
    ),
}


# -- the static-matched arm's size --------------------------------------------------------------------------------
def conv_host_cost(widths: Sequence[int]) -> tuple[int, int]:
    """Parameters and multiply-adds per image of esper_core's ConvHost (3x3 convs, each block max-pooled by 2, a
    linear head on the flattened map)."""
    parameters = macs = 0
    channels, side = 1, SIDE
    for width in widths:
        parameters += channels * width * 9 + width
        macs += channels * width * 9 * side * side
        channels, side = width, side // 2
    features = channels * side * side
    return parameters + features * CLASSES + CLASSES, macs + features * CLASSES


def matched_widths(family: Family, target: float) -> tuple[int, ...]:
    """The widths whose parameter count is nearest ``target`` (ties: fewer multiply-adds), each block between the
    small host's width and four times the large host's."""
    ranges = [range(low, 4 * high + 1, family.step) for low, high in zip(family.small, family.large, strict=True)]
    best = min(
        itertools.product(*ranges),
        key=lambda widths: (abs(conv_host_cost(widths)[0] - target), conv_host_cost(widths)[1]),
    )
    return tuple(best)


# -- running --------------------------------------------------------------------------------------------------------
@attrs.frozen
class Quick:
    """Shorter runs for checking the harness itself (0: the family's own); never for results."""

    epochs: int = 0
    train_limit: int = 0

    def overrides(self) -> list[str]:
        return [f"run.epochs={self.epochs}"] * bool(self.epochs) + [
            f"run.fashion-mnist.train_limit={self.train_limit}"
        ] * bool(self.train_limit)

    def gromo_arguments(self) -> list[str]:
        return ["--epochs", str(self.epochs)] * bool(self.epochs) + ["--train-limit", str(self.train_limit)] * bool(
            self.train_limit
        )


def run_esper(
    family: Family, arm: str, seed: int, out: Path, matched: Sequence[int] | None, quick: Quick = Quick()
) -> dict[str, Any]:
    name = f"{family.name}-{arm}-seed{seed}"
    overrides = [
        *family.common,
        *family.arm(arm, matched),
        *quick.overrides(),
        f"run.seed={seed}",
        f"run.runs_dir={out}",
        f"run.name={name}",
        "run.threads=1",
        "nissa.report.automatic=false",
    ]
    command = [sys.executable, "-m", "esper_core.cli.main", "run", str(CONFIG), "--quiet"]
    command += [item for override in overrides for item in ("--set", override)]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    finished = _finished(out / name)
    row = {"arm": arm, "seed": seed, "wall_seconds": wall, "run_dir": str(out / name), **finished}
    if matched is not None:
        row["widths"] = list(matched)
    return row


def run_gromo(seed: int, out: Path, budget: int, quick: Quick = Quick()) -> dict[str, Any]:
    """The gromo arm in its own process, timed like the others."""
    command = [sys.executable, str(Path(__file__).with_name("gromo_arm.py")), "--seeds", str(seed), "--budget",
               str(budget), "--out", str(out), *quick.gromo_arguments()]  # fmt: skip
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode == GROMO_MISSING:
        raise GromoMissing(completed.stderr.strip())
    if completed.returncode != 0:
        raise RuntimeError(f"gromo seed {seed} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    row = json.loads(completed.stdout.splitlines()[-1])
    return {**row, "arm": GROMO, "wall_seconds": wall, "total_flops": row["training_flops"]}


class GromoMissing(RuntimeError):
    """GroMo is not installed: only the gromo arm fails."""


def _finished(run_dir: Path) -> dict[str, Any]:
    from esper_core.tolaria.record import read_record

    entries = [entry for entry in read_record(run_dir) if entry["kind"] == "run_finished"]
    if not entries:
        raise RuntimeError(f"{run_dir} has no run_finished entry")
    return dict(entries[-1])


def run_wave(jobs: list[tuple[str, int]], workers: int, work: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Run ``work(arm, seed)`` for every job, ``workers`` at a time; the rows, and the failures' messages."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, arm, seed): (arm, seed) for arm, seed in jobs}
        for future in concurrent.futures.as_completed(futures):
            arm, seed = futures[future]
            try:
                row = future.result()
            except GromoMissing as error:
                failures.append(f"{arm} seed {seed}: {error}")
                print(f"{arm:>15} seed {seed}: FAILED: {error}", file=sys.stderr, flush=True)
                continue
            rows.append(row)
            print(f"{arm:>15} seed {seed}: test accuracy {row['test_accuracy']:.2%}, {row['parameters']:,} "
                  f"parameters, {row['total_flops'] / 1e9:.0f} GFLOP, {row['wall_seconds']:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    return rows, failures


# -- the table ------------------------------------------------------------------------------------------------------
def table(results: list[dict[str, Any]], seeds: Sequence[int]) -> str:
    """The markdown table over ``seeds``: accuracy, parameters, gap closed, compute and wall time per arm."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result["seed"] in seeds:
            by_arm.setdefault(result["arm"], []).append(result)
    if "static-small" not in by_arm or "static-large" not in by_arm:
        return "(no static-small and static-large runs for these seeds)"

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(float(r[key]) for r in by_arm[arm])

    small, large = mean("static-small", "test_accuracy"), mean("static-large", "test_accuracy")
    small_params, large_params = mean("static-small", "parameters"), mean("static-large", "parameters")
    large_flops = mean("static-large", "total_flops")
    gap, extra = large - small, large_params - small_params
    lines = [
        "| arm | test accuracy (mean ± std) | parameters | added / large's extra | gap closed | gap closed per 1k "
        "added | training compute / static-large | wall time per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm not in by_arm:
            continue
        accuracies = [r["test_accuracy"] * 100 for r in by_arm[arm]]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        parameters = mean(arm, "parameters")
        added = parameters - small_params
        closed = (mean(arm, "test_accuracy") - small) / gap if gap else float("nan")
        per_k = f"{closed / (added / 1000):.3g}" if added > 0 else "-"
        name = arm
        if arm == "static-matched":
            name += f" {by_arm[arm][0]['widths']}"
        lines.append(
            f"| {name} | {statistics.fmean(accuracies):.2f} ± {spread:.2f} % | {parameters:,.0f} | {added / extra:.0%} "
            f"| {closed:.0%} | {per_k} | {mean(arm, 'total_flops') / large_flops:.2f} | "
            f"{mean(arm, 'wall_seconds'):.0f} s |"
        )
    lines.append("")
    lines.append(
        f"Seeds {sorted(set(seeds))}; the static hosts are {gap * 100:.2f} points apart; the large one adds "
        f"{extra:,.0f} parameters and costs {large_flops / 1e9:,.0f} GFLOP to train."
    )
    return "\n".join(lines)


def per_seed(results: list[dict[str, Any]]) -> str:
    """Test accuracy and final parameters of every run."""
    seeds = sorted({r["seed"] for r in results})
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in results)]
    cells = {(r["arm"], r["seed"]): f"{r['test_accuracy']:.2%}, {r['parameters']:,}" for r in results}
    lines = ["| seed | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    lines += [f"| {seed} | " + " | ".join(cells.get((arm, seed), "-") for arm in arms) + " |" for seed in seeds]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="narrow")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settled", type=int, nargs="*", default=[0, 1], help="seeds the configuration was set on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "efficacy")
    parser.add_argument("--epochs", type=int, default=0, help="checks of the harness only (default: the family's)")
    parser.add_argument("--train-limit", type=int, default=0, help="checks of the harness only (default: all)")
    options = parser.parse_args(argv)
    family = FAMILIES[options.family]
    quick = Quick(options.epochs, options.train_limit)
    arms = [arm for arm in options.arms if arm != GROMO or family.gromo]
    out: Path = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    first = [arm for arm in arms if arm not in ("static-matched", GROMO)]
    results, failures = run_wave(
        [(arm, seed) for seed in options.seeds for arm in first],
        options.workers,
        lambda arm, seed: run_esper(family, arm, seed, out, None, quick),
    )
    # The size the heuristic grew to fixes static-matched's widths and GroMo's budget.
    grown = [r["parameters"] for r in results if r["arm"] == "heuristic"]
    second = [arm for arm in arms if arm in ("static-matched", GROMO)]
    if second and not grown:
        parser.error("static-matched and gromo need the heuristic arm (their size is the heuristic's final size)")
    if second:
        target = statistics.fmean(grown)
        matched = matched_widths(family, target)
        more, failed = run_wave(
            [(arm, seed) for seed in options.seeds for arm in second],
            options.workers,
            lambda arm, seed: (
                run_gromo(seed, out, round(target), quick)
                if arm == GROMO
                else run_esper(family, arm, seed, out, matched, quick)
            ),
        )
        results += more
        failures += failed
    results.sort(key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    settled = [seed for seed in options.seeds if seed in options.settled]
    held_out = [seed for seed in options.seeds if seed not in options.settled]
    print(f"## {family.name} family: small {list(family.small)}, large {list(family.large)}\n")
    for title, seeds in (("all seeds", options.seeds), ("settled on", settled), ("held out", held_out)):
        if seeds:
            print(f"### {title}\n\n{table(results, seeds)}\n")
    print(f"### per seed (test accuracy, final parameters)\n\n{per_seed(results)}")
    for failure in failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    return GROMO_MISSING if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
