"""Does growing pay? Four arms on Fashion-MNIST with the same epoch budget, several seeds each.

- ``static-small``: the narrow host of examples/fashion-mnist.toml (conv widths 1, 2), never grown.
- ``static-large``: the same host widened four times (widths 4, 8), never grown.
- ``fixed-schedule``: the small host, growing the heuristic's favourite blueprint for conv slots (BP056,
  wide_residual) at fixed epochs in the shallowest free slots, advanced without judgement.
- ``heuristic``: the small host with the heuristic controller (examples/fashion-mnist.toml as it is).
- ``gromo`` (only when asked, ``--arms ... gromo``; it needs ``pip install -r requirements/efficacy.txt``): GroMo's own
  growth to ``--gromo-budget`` parameters, run by ``gromo_arm.py`` (see GROMO.md). Without GroMo it is skipped with
  the install hint; the other arms run as usual.

Each run is a real ``esper run`` in its own process; the table comes from the runs' records. Runs go two at a
time by default (``--workers``), each on one torch thread, so wall times compare across arms of one invocation.

    python benchmarks/efficacy/run.py                    # 3 seeds, 15 epochs: about 15 minutes on 2 cores
    python benchmarks/efficacy/run.py --seeds 0 1 2 3 4  # more seeds

The markdown table goes to stdout and, with every run's numbers, to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
STATIC = ["tamiyo.policy=fixed-schedule", "tamiyo.fixed-schedule.germinations=[]"]
ARMS: dict[str, list[str]] = {
    "static-small": STATIC,
    "static-large": [*STATIC, "run.fashion-mnist.widths=[4, 8]"],
    "fixed-schedule": [
        "tamiyo.policy=fixed-schedule",
        'tamiyo.fixed-schedule.germinations=[{epoch = 3, blueprint = "BP056"}, {epoch = 6, blueprint = "BP056"}]',
    ],
    "heuristic": [],
    "gromo": [],  # not an esper run: run_gromo
}
GROMO, GROMO_MISSING = "gromo", 3  # gromo_arm.py's exit status when GroMo is not installed


def run_one(arm: str, seed: int, epochs: int, out: Path, gromo_budget: int) -> dict[str, Any] | None:
    if arm == GROMO:
        return run_gromo(seed, epochs, out, gromo_budget)
    name = f"{arm}-seed{seed}"
    overrides = [*ARMS[arm], f"run.seed={seed}", f"run.epochs={epochs}", f"run.runs_dir={out}", f"run.name={name}",
                 "run.threads=1", "nissa.report.automatic=false"]  # fmt: skip
    command = [sys.executable, "-m", "esper_core.cli.main", "run", str(CONFIG), "--quiet"]
    command += [item for override in overrides for item in ("--set", override)]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    finished = _finished(out / name)
    return {"arm": arm, "seed": seed, "wall_seconds": wall, **finished}


def run_gromo(seed: int, epochs: int, out: Path, budget: int) -> dict[str, Any] | None:
    """The gromo arm in its own process, timed like the others; None (the reason on stderr) without GroMo."""
    command = [sys.executable, str(Path(__file__).with_name("gromo_arm.py")), "--seeds", str(seed), "--epochs",
               str(epochs), "--budget", str(budget), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode == GROMO_MISSING:
        print(f"gromo seed {seed} skipped: {completed.stderr.strip()}", file=sys.stderr, flush=True)
        return None
    if completed.returncode != 0:
        raise RuntimeError(f"gromo seed {seed} failed ({completed.returncode}):\n{completed.stderr}")
    return {**json.loads(completed.stdout.splitlines()[-1]), "wall_seconds": wall}


def _finished(run_dir: Path) -> dict[str, Any]:
    from esper_core.tolaria.record import read_record

    entries = [entry for entry in read_record(run_dir) if entry["kind"] == "run_finished"]
    if not entries:
        raise RuntimeError(f"{run_dir} has no run_finished entry")
    return dict(entries[-1])


def table(results: list[dict[str, Any]]) -> str:
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(r[key] for r in by_arm[arm])

    if "static-small" not in by_arm or "static-large" not in by_arm:  # no reference points: the raw numbers only
        return "\n".join(
            f"{r['arm']} seed {r['seed']}: {r['test_accuracy']:.2%}, {r['parameters']:,} parameters" for r in results
        )

    small, large = mean("static-small", "test_accuracy"), mean("static-large", "test_accuracy")
    small_params, large_params = mean("static-small", "parameters"), mean("static-large", "parameters")
    gap, extra = large - small, large_params - small_params
    lines = [
        "| arm | test accuracy (mean ± std) | parameters | added / large's extra | gap closed "
        "| gap closed per 1k added | wall time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm not in by_arm:
            continue
        accuracies = [r["test_accuracy"] * 100 for r in by_arm[arm]]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        parameters = mean(arm, "parameters")
        added = parameters - small_params
        closed = (mean(arm, "test_accuracy") - small) / gap if gap else float("nan")
        per_k = f"{closed / (added / 1000):.2f}" if added > 0 else "-"
        lines.append(
            f"| {arm} | {statistics.fmean(accuracies):.2f} ± {spread:.2f} % | {parameters:,.0f} "
            f"| {added / extra:.0%} | {closed:.0%} | {per_k} | {mean(arm, 'wall_seconds'):.0f} s |"
        )
    seeds = sorted({r["seed"] for r in results})
    lines.append("")
    lines.append(f"Seeds {seeds}; the static hosts are {gap * 100:.2f} points apart; the large one adds {extra:,.0f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=[arm for arm in ARMS if arm != GROMO])
    parser.add_argument("--gromo-budget", type=int, default=2047, help="the gromo arm grows to at most this")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "efficacy")
    options = parser.parse_args(argv)
    out: Path = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in options.seeds for arm in options.arms]
    results: list[dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.workers) as pool:
        futures = {
            pool.submit(run_one, arm, seed, options.epochs, out, options.gromo_budget): (arm, seed)
            for arm, seed in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            if result is None:
                continue
            results.append(result)
            line = (
                f"{result['arm']:>15} seed {result['seed']}: test accuracy {result['test_accuracy']:.2%}, "
                f"{result['parameters']:,} parameters, {result['wall_seconds']:.0f} s"
            )
            print(line, file=sys.stderr, flush=True)
    results.sort(key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
