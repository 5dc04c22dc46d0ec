"""``esper run``: train a task with morphogenetic growth, or resume a run that was interrupted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from esper_core.cli.arguments import add_config_arguments
from esper_core.config.describe import describe, format_descriptions
from esper_core.plugins.registry import Registry

if TYPE_CHECKING:  # torch is imported only when a run starts
    from esper_core.tolaria.assembly import Run
    from esper_core.tolaria.ranks import Ranks


def add_parser(subcommands: argparse._SubParsersAction, registry: Registry) -> None:  # type: ignore[type-arg]
    try:
        options = format_descriptions(describe(registry.config_sections()))
    except Exception as error:  # noqa: BLE001 - help must not fail because a plugin's section is broken
        options = f"  (the options could not be listed: {error})"
    parser = subcommands.add_parser(
        "run",
        help="train a task with morphogenetic growth (or resume a run)",
        description="Train a task; the controller grows the host where growth pays. Every option below can be set "
        "in the TOML configuration file, with --set KEY=VALUE, or with an environment variable "
        "ESPER_<SECTION>__<KEY> (for example ESPER_RUN__EPOCHS=3).",
        epilog="configuration keys (default, type):\n" + options,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, example="run.epochs=3")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", type=Path, help="continue an interrupted run from its last checkpoint"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.add_argument(
        "--nproc",
        metavar="N",
        type=_process_count,
        default=1,
        help="train data-parallel on N processes of this machine, started by torchrun (docs/distributed.md); "
        "under torchrun itself, leave it out",
    )
    parser.add_argument(
        "--rank-timeout",
        metavar="SECONDS",
        type=float,
        default=600.0,
        help="on several processes: how long a process waits for the others in one exchange before the run stops "
        "(default 600)",
    )
    parser.set_defaults(handler=run)


def _process_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--nproc takes a whole number of processes, at least 1, not {text!r}")
    return count


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from esper_core.extras import require

    require("torch", "esper run")

    from esper_core.tolaria.assembly import RunError, reopen_run, start_run
    from esper_core.tolaria.console import RunDisplay, print_summary
    from esper_core.tolaria.distributed import launch, open_ranks
    from esper_core.tolaria.ranks import Ranks, launched_by_torchrun
    from esper_core.tolaria.trainer import Trainer

    registry: Registry = args.registry
    console = Console()
    if args.resume is not None and args.config:
        raise RunError(
            "a resumed run keeps the configuration it recorded; give --resume RUN_DIR without a configuration "
            "file (--set nissa.* may change its telemetry sinks)"
        )
    ranks = Ranks.single()
    if launched_by_torchrun():
        opened = open_ranks(
            registry, config_path=args.config, overrides=args.overrides, resume=args.resume,
            timeout_s=args.rank_timeout,
        )  # fmt: skip
        ranks = opened.ranks
        if not ranks.leads:
            return _follow(opened.run, ranks)
    elif args.nproc > 1:
        return launch(args.argv, args.nproc)
    if args.resume is not None:
        assembled = opened.run if ranks.distributed else reopen_run(registry, args.resume, args.overrides)
        trainer = Trainer(assembled, ranks=ranks)
        loaded = trainer.restore_latest()
        if loaded is None:
            raise RunError(
                f"{args.resume} has no checkpoint yet (it stopped during its first epoch): start the run again, "
                f"after removing {args.resume} or with another name (--set run.name=...)"
            )
        for skipped in loaded.skipped:
            console.print(f"[yellow]warning:[/] skipped checkpoint {skipped.path.name}: {skipped.reason}")
        console.print(f"resuming {assembled.run_dir} after epoch {trainer.history.epoch}", highlight=False)
    else:
        if ranks.distributed:
            assembled = opened.run
        else:
            assembled = start_run(registry, registry.load_config(args.config, overrides=args.overrides))
        trainer = Trainer(assembled, ranks=ranks)
        console.print(
            f"run {assembled.run_id}: {assembled.task.name}, {assembled.options.epochs} epochs, "
            f"controller {assembled.tolaria.controller}, {len(trainer.run.executor.export_seed_states())} "
            f"slots, host of {trainer.history.host_parameters:,} parameters -> {assembled.run_dir}",
            highlight=False,
        )
    if ranks.distributed:
        console.print(f"data-parallel on {ranks.world} processes ({ranks.backend})", highlight=False)
    try:
        with RunDisplay(trainer, console, quiet=args.quiet):
            summary = trainer.fit()
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: esper run --resume {assembled.run_dir}")
        return 130
    finally:
        trainer.close()
        ranks.close()
    print_summary(console, summary, assembled.run_dir)
    report = assembled.run_dir / "report"
    if report.exists():
        console.print(f"report: {report}", highlight=False)
    return 0


def _follow(run: Run, ranks: Ranks) -> int:
    """A follower rank trains in step with the leader and prints nothing (the leader reports for the run)."""
    from esper_core.tolaria.trainer import Trainer

    trainer = Trainer(run, ranks=ranks)
    try:
        trainer.fit()
    finally:
        trainer.close()
        ranks.close()
    return 0
