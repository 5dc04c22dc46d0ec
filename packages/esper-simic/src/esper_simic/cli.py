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

import attrs

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
    from esper_simic.collect import collect
    from esper_simic.ground import GroundOptions, heuristic_exploration, plan

    runs = plan(workbench.config.get(GroundOptions), args.seed, args.episodes, start=args.start)
    if args.behaviour == "heuristic":
        behaviour = heuristic_exploration
    else:
        workbench.require_secret("collecting with the learned policy")
        if args.update is not None:
            update_path = _update_file(args.update)
        else:
            live = workbench.policy_store().live()
            if live is None:
                raise ConfigError(
                    f"nothing is published in {workbench.policy_store().directory} yet: collect with --behaviour "
                    "heuristic, train, evaluate and publish first (or sample from a candidate with --update)"
                )
            update_path = live.path

        def behaviour(run: Any) -> list[str]:
            return [
                "tamiyo.policy=learned",
                'tamiyo.learned.decoding="sample"',
                f"tamiyo.learned.seed={run.seed}",
                f'tamiyo.learned.initial_update="{update_path.resolve()}"',
            ]

    with _bar(f"collecting ({args.behaviour})") as (bar, task):
        bar.update(task, total=len([r for r in runs if r.name not in {e.episode_id for e in store.episodes()}]))
        if args.distributed:
            from esper_simic.distributed import collect_distributed

            bus = workbench.shared_bus("collecting with workers", "simic-collector")
            try:
                return collect_distributed(
                    runs,
                    behaviour,
                    store,
                    bus,
                    collection_id=f"{args.seed}-{args.start}-{time.time_ns()}",
                    timeout_s=args.timeout,
                    progress=lambda name, done, total: bar.update(task, completed=done),
                )
            finally:
                bus.close()
        return collect(
            runs,
            behaviour,
            store,
            workbench.workspace / "runs",
            workers=workbench.options.workers,
            weights=workbench.reward_weights(),
            keep_runs=args.keep_runs,
            progress=lambda name, done, total: bar.update(task, completed=done),
        )


def _update_file(path: Path) -> Path:
    """A candidate's update: ``path`` itself, or ``path/candidate.update`` for a candidate directory."""
    from esper_simic.publication import CANDIDATE_UPDATE

    found = path / CANDIDATE_UPDATE if path.is_dir() else path
    if not found.is_file():
        raise ConfigError(f"{path}: no policy update there (give a candidate directory or a .update file)")
    return found


def _train(workbench: Any, args: argparse.Namespace) -> int:
    from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text
    from esper_simic.publication import CANDIDATE_UPDATE, TRAINING
    from esper_simic.trainer import UnusableEpisode, prepare

    trainer = workbench.trainer()
    if args.initial is not None:
        from esper_simic.publication import read_update_file

        verdict = workbench.policy.load_update(read_update_file(_update_file(args.initial)))
        if not verdict.accepted:
            raise ConfigError(f"--initial {args.initial}: the policy refuses it ({verdict.reason}: {verdict.detail})")
    version = args.version or time.strftime("simic-%Y%m%d-%H%M%S", time.gmtime())
    directory = workbench.workspace / "candidates" / version
    directory.mkdir(parents=True, exist_ok=True)
    prepared, unusable = [], []
    with workbench.replay() as store:
        for episode in store.episodes():
            try:
                encoder = workbench.policy_under(episode.outcome.get("budget", {}))
                prepared.append(prepare(episode, encoder, workbench.catalog, workbench.reward_weights()))
            except UnusableEpisode as error:
                unusable.append(str(error))
    for reason in unusable:
        print(f"skipped: {reason}")
    if not prepared:
        raise ConfigError(f"the replay store in {workbench.workspace / 'replay'} has no usable episode: collect first")
    started = time.process_time()
    with _bar(f"training {version}") as (bar, task):
        result = trainer.train(
            workbench.policy,
            prepared,
            checkpoint=directory / "checkpoint.pt",
            progress=lambda phase, done, total, row: bar.update(
                task, description=f"{phase}", completed=done, total=total
            ),
        )
    cpu_seconds = time.process_time() - started
    steps = sum(len(episode.steps) for episode in prepared)
    demonstrations = sum(step.demonstrated for episode in prepared for step in episode.steps)
    final = result.curves[-1] if result.curves else {}
    metrics = {key: float(value) for key, value in final.items()} | {
        "episodes": float(len(prepared)),
        "steps": float(steps),
        "cpu_seconds": cpu_seconds,
    }
    update = workbench.policy.export_update(
        policy_version=version, state_dict=result.state_dict, training_metrics=metrics
    )
    atomic_write_bytes(directory / CANDIDATE_UPDATE, update.SerializeToString(deterministic=True))
    summary = {
        "version": version,
        "episodes": len(prepared),
        "unusable": unusable,
        "steps": steps,
        "demonstrations": demonstrations,
        "cpu_seconds": cpu_seconds,
        "stopped": result.stopped,
        "trainer": workbench.selection.trainer,
        "options": attrs.asdict(trainer.options) if attrs.has(type(getattr(trainer, "options", None))) else None,
    }
    atomic_write_text(directory / TRAINING, json.dumps(summary, indent=2))
    atomic_write_text(directory / "curves.json", json.dumps(result.curves, indent=1))
    if result.stopped:
        print(f"warning: {result.stopped}")
    print(
        f"candidate {version}: {len(prepared)} episodes, {steps} decisions ({demonstrations} "
        f"demonstrations), {cpu_seconds:.0f} CPU s -> {directory}"
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
