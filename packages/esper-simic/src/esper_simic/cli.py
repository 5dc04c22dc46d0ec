"""``esper simic collect | train | evaluate | publish | rollback``: the learner's command line (docs/simic.md).

Each command reads the same configuration (``--config FILE``, ``--set KEY=VALUE``: the ``[simic*]`` sections and
whatever the policy and the ground runs need) and works in ``simic.workspace``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from esper_core.errors import ConfigError

SUBCOMMANDS = ("collect", "train", "evaluate", "publish", "rollback")


def configure_simic(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Improve the learned policy from the outcomes of its decisions: collect episodes from ground runs (or run "
        "directories), train a candidate (behaviour cloning, then PPO with V-trace), evaluate it on held-out runs "
        "against the live policy and the heuristic, publish it to the policy store and the bus, or roll back."
    )
    commands = parser.add_subparsers(dest="simic_command", metavar="COMMAND", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", metavar="FILE", help="a TOML configuration ([simic], [simic.ground], ...)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override one configuration key, e.g. --set simic.workers=4 (repeatable)")  # fmt: skip

    collect = commands.add_parser("collect", help="gather episodes into the replay store")
    common(collect)
    collect.add_argument("--from", dest="runs", nargs="+", metavar="RUN_DIR", type=Path,
                         help="episodes from existing run directories instead of new ground runs")  # fmt: skip
    collect.add_argument("--episodes", type=int, default=32, help="ground runs to train (default 32)")
    collect.add_argument("--seed", type=int, default=0, help="the plan's seed (ground runs are a function of it)")
    collect.add_argument("--start", type=int, default=0, help="index of the plan's first run (default 0)")
    collect.add_argument("--behaviour", choices=("heuristic", "learned"), default="heuristic",
                         help="the heuristic (drawn thresholds) or the live learned version (sampling)")  # fmt: skip
    collect.add_argument("--update", type=Path, metavar="CANDIDATE",
                         help="with --behaviour learned: sample from this candidate (a directory or .update file) "
                              "instead of the live version")  # fmt: skip
    collect.add_argument("--keep-runs", action="store_true", help="keep the ground runs' directories")
    collect.add_argument("--distributed", action="store_true",
                         help="ask `esper serve simic-worker`s on the bus (oona.backend) to train them")  # fmt: skip
    collect.add_argument("--timeout", type=float, default=600.0,
                         help="with --distributed: give up on the runs still missing after this many seconds without "
                              "a result (default 600)")  # fmt: skip

    train = commands.add_parser("train", help="train a candidate on the replay store")
    common(train)
    train.add_argument("--version", help="the candidate's version (default simic-YYYYmmdd-HHMMSS)")
    train.add_argument("--initial", type=Path, metavar="CANDIDATE",
                       help="start from this candidate's weights (a directory or .update file) instead of the live "
                            "policy's (with simic.train.start = 'live')")  # fmt: skip

    evaluate = commands.add_parser("evaluate", help="evaluate a candidate on held-out runs")
    common(evaluate)
    evaluate.add_argument("candidate", type=Path, metavar="CANDIDATE_DIR")

    publish = commands.add_parser("publish", help="publish an evaluated candidate")
    common(publish)
    publish.add_argument("candidate", type=Path, metavar="CANDIDATE_DIR")

    rollback = commands.add_parser("rollback", help="make an earlier version live again")
    common(rollback)
    rollback.add_argument("--to", metavar="VERSION", help="the version (default: the one before the live one)")


@contextmanager
def _bar(description: str) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        yield bar, bar.add_task(description, total=None)


def run_simic(args: argparse.Namespace) -> int:
    from esper_simic.workbench import open_workbench

    workbench = open_workbench(args.registry, args.config, args.overrides)
    handler = {
        "collect": _collect,
        "train": _train,
        "evaluate": _evaluate,
        "publish": _publish,
        "rollback": _rollback,
    }[args.simic_command]
    return handler(workbench, args)


def _collect(workbench: Any, args: argparse.Namespace) -> int:
    from esper_simic.experience import RunDamaged, episode_from_run

    with workbench.replay() as store:
        if store.damage is not None:
            print(f"warning: {store.damage.describe()}")
        if args.runs:
            added = 0
            for directory in args.runs:
                try:
                    experience = episode_from_run(directory, store.schema_digest, workbench.reward_weights())
                except RunDamaged as damaged:
                    print(f"skipped: {damaged}")
                    continue
                if experience.damage:
                    print(f"warning: {experience.damage}")
                store.add(experience.episode)
                added += 1
            print(f"{added} episodes added from run directories; the store holds {len(store)}")
            return 0 if added else 1
        summary = _ground(workbench, args, store)
    print(
        f"collected {len(summary.collected)} episodes in {summary.seconds:.0f} s ({len(summary.skipped)} already "
        f"there, {len(summary.failed)} failed); the store holds {len(store)} ({workbench.workspace / 'replay'})"
    )
    for name, error in summary.failed:
        print(f"failed: {name}: {error}")
    return 0 if not summary.failed else 1


def _ground(workbench: Any, args: argparse.Namespace, store: Any) -> Any:
    from esper_simic.ground import GroundOptions, plan
    from esper_simic.rounds import behaviour_of, gather

    runs = plan(workbench.config.get(GroundOptions), args.seed, args.episodes, start=args.start)
    behaviour = behaviour_of(workbench, args.behaviour, args.update)
    with _bar(f"collecting ({args.behaviour})") as (bar, task):
        bar.update(task, total=len([r for r in runs if r.name not in {e.episode_id for e in store.episodes()}]))
        return gather(
            workbench,
            store,
            runs,
            behaviour,
            distributed=args.distributed,
            timeout_s=args.timeout,
            keep_runs=args.keep_runs,
            progress=lambda name, done, total: bar.update(task, completed=done),
        )


def _train(workbench: Any, args: argparse.Namespace) -> int:
    from esper_simic.rounds import train_candidate

    version = args.version or time.strftime("simic-%Y%m%d-%H%M%S", time.gmtime())
    with _bar(f"training {version}") as (bar, task):
        summary = train_candidate(
            workbench,
            version,
            initial=args.initial,
            progress=lambda phase, done, total, row: bar.update(
                task, description=f"{phase}", completed=done, total=total
            ),
        )
    if summary["replay_damage"]:
        print(f"warning: {summary['replay_damage']}")
    for reason in summary["unusable"]:
        print(f"skipped: {reason}")
    if summary["stopped"]:
        print(f"warning: {summary['stopped']}")
    print(
        f"candidate {version}: {summary['episodes']} episodes, {summary['steps']} decisions "
        f"({summary['demonstrations']} demonstrations), {summary['cpu_seconds']:.0f} CPU s -> {summary['directory']}"
    )
    return 0


def _evaluate(workbench: Any, args: argparse.Namespace) -> int:
    from esper_core.storage.atomic import atomic_write_text
    from esper_simic.evaluation import evaluate
    from esper_simic.publication import CANDIDATE_UPDATE, EVALUATION

    candidate: Path = args.candidate
    if not (candidate / CANDIDATE_UPDATE).exists():
        raise ConfigError(f"{candidate} holds no candidate ({CANDIDATE_UPDATE}): train one with `esper simic train`")
    with _bar("evaluating") as (bar, task):
        result = evaluate(
            workbench,
            (candidate / CANDIDATE_UPDATE).resolve(),
            candidate / "evaluation",
            progress=lambda arm, name, done, total: bar.update(
                task, description=f"evaluating: {arm}", completed=done, total=total
            ),
        )
    atomic_write_text(candidate / EVALUATION, json.dumps(result, indent=2))
    nan = float("nan")
    for arm, row in result["arms"].items():
        print(
            f"{arm:>24}: return {row.get('return', nan):+.4f}  val {row.get('val_accuracy', nan):.2%}  "
            f"test {row.get('test_accuracy', nan):.2%}  added {row.get('added_parameter_fraction', nan):.2f}x host  "
            f"({row['runs']} runs)"
        )
    print("passed" if result["passed"] else "not passed: " + "; ".join(result["reasons"]))
    return 0 if result["passed"] else 1


def _publish(workbench: Any, args: argparse.Namespace) -> int:
    from esper_simic.publication import publish

    live, sent = publish(workbench, args.candidate)
    where = " and on the bus's policy stream" if sent else ""
    print(f"published {live.version} (generation {live.generation}) in {workbench.policy_store().directory}{where}")
    return 0


def _rollback(workbench: Any, args: argparse.Namespace) -> int:
    from esper_simic.publication import rollback

    live, sent = rollback(workbench, args.to)
    where = " and re-sent on the bus's policy stream" if sent else ""
    print(f"rolled back: {live.version} is live again in {workbench.policy_store().directory}{where}")
    return 0
