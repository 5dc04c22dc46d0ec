"""Does the learned policy decide growth better than the heuristic? Simic's experiment (issue #13).

Training, through the real command line in a workspace of its own (``esper simic ...``, every step a process):

1. round 0: ``collect`` ``--episodes`` ground runs decided by the heuristic (thresholds drawn per run), ``train``
   (behaviour cloning, then PPO with V-trace), ``evaluate`` on the validation plan against the heuristic and the live
   version, ``publish`` if it passed;
2. rounds 1..R: ``collect --behaviour learned --update`` the previous round's candidate (sampling: on-policy
   experience, whether or not that candidate was published), ``train --initial`` from that candidate on the whole
   replay store, evaluate, publish if it passed.

The training ground is ``[simic.ground]``'s defaults with the widths and block counts of ``TRAIN_GROUND``. The
comparison then runs on **held-out** configurations — block widths and block counts (so slot counts) the ground never
drew, and a task family it never saw (Fashion-MNIST CNNs) — each with ``--seeds`` run seeds, at the same parameter
budget for every arm: ``learned`` (the last published version, greedy), ``heuristic`` (its defaults, no drawn
thresholds), ``fixed-schedule`` (germinate at epoch 3 where it fits, advance without judgement). Reported per arm
and held-out family: test accuracy, validation accuracy, parameters added (fraction of the host), counted training
FLOPs relative to the heuristic, the return; and the CPU time the training took.

    ESPER_LEYLINE_SECRET=... python benchmarks/learned_vs_heuristic.py --out var/learned-vs-heuristic
    # the same with two rounds of message passing between slots in the policy network:
    ESPER_LEYLINE_SECRET=... python benchmarks/learned_vs_heuristic.py --out var/lvh-messages \
        --set tamiyo.learned.message_rounds=2

Nothing here was tuned on the held-out plan (its seed, ``HELD_OUT_SEED``, is used only by the final comparison);
the validation plan that gates publication is ``[simic.evaluate]``'s, drawn from the training ground's families.
The markdown table goes to stdout and, with every run's numbers, to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_simic.collect import collect
from esper_simic.evaluation import arm_overrides
from esper_simic.ground import GroundOptions, GroundRun, plan
from esper_simic.replay import ReplayStore
from esper_simic.workbench import open_workbench

#: The training ground: synthetic MLPs of 1-2 blocks, widths 2-4.
TRAIN_GROUND = (
    'simic.ground.families=["synthetic-mlp"]',
    "simic.ground.widths=[2, 3, 4]",
    "simic.ground.blocks=[1, 2]",
)
#: Held-out families: (name, ground options overriding the defaults). Never drawn during training.
HELD_OUT: dict[str, dict[str, Any]] = {
    "synthetic-mlp, unseen widths 6-8 and 3 blocks": {"families": ["synthetic-mlp"], "widths": [6, 8], "blocks": [3]},
    "fashion-mnist-cnn (unseen task)": {"families": ["fashion-mnist-cnn"], "widths": [1, 2], "blocks": [2]},
}
HELD_OUT_SEED = 7_777_777
ARMS = ("learned", "heuristic", "fixed-schedule")
#: The arm that answers "better than starting at the final size?": per run, a static host (no growth) whose block widths
#: give the parameter count nearest the learned arm's final count in that run (ties: the narrower host).
STATIC = "static-final"


#: ``--set`` settings for every ``esper simic`` command and the comparison (e.g. the policy's options).
EXTRA: list[str] = []


def esper(workspace: Path, *arguments: str, settings: Sequence[str] = ()) -> str:
    """Run ``esper simic ...`` in the workspace; the output, or a RuntimeError with it."""
    every = [*TRAIN_GROUND, f"simic.workspace={workspace}", *EXTRA, *settings]
    command = [sys.executable, "-m", "esper_core.cli.main", "simic", *arguments]
    command += [item for setting in every for item in ("--set", setting)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(
            f"{' '.join(arguments)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_rounds(workspace: Path, rounds: int, episodes: int, learned_episodes: int, log: list[str]) -> dict[str, Any]:
    """The training rounds (see the module); returns what each round did and the CPU time it all took."""
    history = []
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    for number in range(rounds + 1):
        previous = workspace / "candidates" / f"r{number - 1}"
        if number == 0:
            behaviour, count = "heuristic", episodes
            log.append(esper(workspace, "collect", "--episodes", str(count), "--seed", "0"))
        else:
            behaviour, count = "learned", learned_episodes
            log.append(esper(workspace, "collect", "--behaviour", "learned", "--update", str(previous),
                             "--episodes", str(count), "--seed", str(number)))  # fmt: skip
        version = f"r{number}"
        log.append(esper(workspace, "train", "--version", version, *(["--initial", str(previous)] if number else [])))
        candidate = workspace / "candidates" / version
        log.append(esper(workspace, "evaluate", str(candidate)))
        verdict = json.loads((candidate / "evaluation.json").read_text())
        published = False
        if verdict["passed"]:
            log.append(esper(workspace, "publish", str(candidate)))
            published = True
        history.append({
            "round": number,
            "behaviour": behaviour,
            "episodes": count,
            "published": published,
            "reasons": verdict["reasons"],
            "validation": {arm: {k: row.get(k) for k in ("return", "val_accuracy", "added_parameter_fraction")}
                           for arm, row in verdict["arms"].items()},
            "training": json.loads((candidate / "training.json").read_text()),
        })  # fmt: skip
        print(f"round {number}: {'published' if published else 'not published'} {verdict['arms']}", file=sys.stderr)
    return {
        "rounds": history,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": children_cpu_seconds() - cpu_before,
    }


def held_out_runs(name: str, changes: dict[str, Any], configurations: int, seeds: Sequence[int]) -> list[GroundRun]:
    """``configurations`` held-out configurations, each run with every seed in ``seeds``."""
    options = attrs.evolve(GroundOptions(), **changes)
    runs = []
    for base in plan(options, HELD_OUT_SEED, configurations, prefix=f"heldout-{len(name)}"):
        for seed in seeds:
            overrides = (*(o for o in base.overrides if not o.startswith("run.seed=")), f"run.seed={seed}")
            runs.append(attrs.evolve(base, name=f"{base.name}-s{seed}", seed=seed, overrides=overrides))
    return runs


def _fixed(overrides: list[str]) -> Callable[[GroundRun], list[str]]:
    """The same controller overrides for every run."""
    return lambda run: overrides


def host_parameters(family: str, widths: Sequence[int]) -> int:
    """Parameters of the ground's built-in host of ``family`` with ``widths``: esper_core's MlpHost (16 features, 4
    classes) or ConvHost (28x28 images, 3x3 convolutions each max-pooled by 2, a linear head on the flattened map, 10
    classes). Counted, not built: the search below tries many widths."""
    if family == "fashion-mnist-cnn":
        parameters, channels, side = 0, 1, 28
        for width in widths:
            parameters += channels * width * 9 + width
            channels, side = width, side // 2
        return parameters + channels * side * side * 10 + 10
    parameters, previous = 0, 16
    for width in widths:
        parameters += previous * width + width
        previous = width
    return parameters + previous * 4 + 4


def static_widths(run: GroundRun, target: int) -> tuple[int, ...]:
    """Block widths, each at least the run's own, whose host's parameter count is nearest ``target``."""
    import itertools

    ranges = [range(width, 4 * width + 33) for width in run.widths]
    return min(
        itertools.product(*ranges),
        key=lambda widths: (abs(host_parameters(run.family, widths) - target), sum(widths)),
    )


def static_arm(runs: Sequence[GroundRun], learned: Sequence[dict[str, Any]]) -> Callable[[GroundRun], list[str]]:
    """The ``static-final`` overrides of each run: its matched widths, and a controller that never grows."""
    final = {outcome["name"]: int(outcome["parameters"]) for outcome in learned}
    task = {run.name: "fashion-mnist" if run.family == "fashion-mnist-cnn" else "synthetic" for run in runs}
    widths = {run.name: static_widths(run, final[run.name]) for run in runs}
    return lambda run: [
        f"run.{task[run.name]}.widths={list(widths[run.name])}",
        "tamiyo.policy=fixed-schedule",
        "tamiyo.fixed-schedule.germinations=[]",
    ]


def compare(workspace: Path, configurations: int, seeds: Sequence[int], workers: int) -> dict[str, Any]:
    """Every arm on every held-out run; per family and arm, the runs' outcomes."""
    workbench = open_workbench(Registry.create(), None, [*TRAIN_GROUND, f"simic.workspace={workspace}", *EXTRA])
    settings = workbench.policy_settings()
    live = workbench.policy_store().live()
    learned_update = live.path if live is not None else None
    if learned_update is None:  # no candidate passed validation: compare the last one anyway, and say so
        candidates = sorted((workspace / "candidates").glob("r*/candidate.update"))
        learned_update = candidates[-1] if candidates else None
    table: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for family, changes in HELD_OUT.items():
        runs = held_out_runs(family, changes, configurations, seeds)
        table[family] = {}
        for arm in ARMS:
            if arm == "learned" and learned_update is None:
                continue
            overrides = arm_overrides(arm, learned_update if arm == "learned" else None)
            directory = workspace / "held-out" / f"{family.split()[0]}-{arm}"
            with ReplayStore(directory / "replay", workbench.policy.feature_schema_digest, capacity=10_000) as store:
                fixed = _fixed(overrides)
                summary = collect(runs, fixed, store, directory / "runs", workers=workers, settings=settings)
                if summary.failed:
                    raise RuntimeError(f"{family} / {arm}: {summary.failed}")
                table[family][arm] = [dict(episode.outcome, name=episode.episode_id) for episode in store.episodes()]
            print(f"{family} / {arm}: {len(table[family][arm])} runs", file=sys.stderr)
        if "learned" in table[family]:
            directory = workspace / "held-out" / f"{family.split()[0]}-{STATIC}"
            with ReplayStore(directory / "replay", workbench.policy.feature_schema_digest, capacity=10_000) as store:
                behaviour = static_arm(runs, table[family]["learned"])
                summary = collect(runs, behaviour, store, directory / "runs", workers=workers, settings=settings)
                if summary.failed:
                    raise RuntimeError(f"{family} / {STATIC}: {summary.failed}")
                table[family][STATIC] = [dict(e.outcome, name=e.episode_id) for e in store.episodes()]
    return {"live_version": live.version if live else None, "learned_update": str(learned_update), "families": table}


def _mean(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for family, arms in result["comparison"]["families"].items():
        heuristic_flops = statistics.fmean(o["total_flops"] for o in arms["heuristic"])
        header = (
            "| arm | test accuracy | validation accuracy | added parameters (x host) | compute (x heuristic) | return |"
        )
        lines += [f"**{family}** ({len(arms['heuristic'])} runs per arm)", "", header, "|---|---|---|---|---|---|"]
        for arm, outcomes in arms.items():
            test, test_sd = _mean([o["test_accuracy"] for o in outcomes])
            val, val_sd = _mean([o["val_accuracy"] for o in outcomes])
            added = statistics.fmean((o["parameters"] - o["host_parameters"]) / o["host_parameters"] for o in outcomes)
            flops = statistics.fmean(o["total_flops"] for o in outcomes) / heuristic_flops
            ret, ret_sd = _mean([o["return"] for o in outcomes])
            lines.append(f"| {arm} | {test:.2%} ± {test_sd:.2%} | {val:.2%} ± {val_sd:.2%} | {added:.2f} | "
                         f"{flops:.2f} | {ret:+.4f} ± {ret_sd:.4f} |")  # fmt: skip
        learned, heuristic = arms.get("learned"), arms["heuristic"]
        if learned:
            by_name = {o["name"]: o for o in heuristic}
            diffs = [o["test_accuracy"] - by_name[o["name"]]["test_accuracy"] for o in learned]
            wins = sum(d > 0 for d in diffs)
            mean, sd = _mean(diffs)
            lines += ["", f"learned - heuristic, paired by run: test accuracy {mean:+.2%} ± {sd:.2%}; learned ahead in "
                          f"{wins} of {len(diffs)} runs"]  # fmt: skip
        if learned and STATIC in arms:
            by_name = {o["name"]: o for o in arms[STATIC]}
            diffs = [o["test_accuracy"] - by_name[o["name"]]["test_accuracy"] for o in learned]
            mean, sd = _mean(diffs)
            ahead = sum(d > 0 for d in diffs)
            lines += [f"learned - {STATIC} (a static host of the learned arm's final size), paired by run: test "
                      f"accuracy {mean:+.2%} ± {sd:.2%}; learned ahead in {ahead} of {len(diffs)}"]  # fmt: skip
        lines.append("")
    training = result["training"]
    lines.append(f"Training: {len(training['rounds'])} rounds, {training['cpu_seconds'] / 60:.1f} CPU minutes "
                 f"({training['wall_seconds'] / 60:.1f} minutes wall) on this machine.")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("var/learned-vs-heuristic"))
    parser.add_argument("--rounds", type=int, default=2, help="rounds of on-policy collection after the first")
    parser.add_argument("--episodes", type=int, default=192, help="heuristic episodes of round 0")
    parser.add_argument("--learned-episodes", type=int, default=128, help="episodes of each later round")
    parser.add_argument("--configurations", type=int, default=4, help="held-out configurations per family")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare-only", action="store_true", help="skip training: compare the published version")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every step, e.g. tamiyo.learned.message_rounds=2 (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    EXTRA[:] = args.set
    if not os.environ.get(SECRET_ENV_VAR):
        print(f"set {SECRET_ENV_VAR} (runs verify the updates Simic signs)", file=sys.stderr)
        return 2
    workspace = args.out.resolve() / "workspace"
    log: list[str] = []
    results_path = args.out / "results.json"
    training = (json.loads(results_path.read_text())["training"] if args.compare_only
                else train_rounds(workspace, args.rounds, args.episodes, args.learned_episodes, log))  # fmt: skip
    result = {"training": training, "comparison": compare(workspace, args.configurations, args.seeds, args.workers)}
    args.out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1))
    (args.out / "log.txt").write_text("\n".join(log))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
