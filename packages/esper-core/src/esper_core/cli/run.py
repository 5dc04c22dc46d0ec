"""``esper run``: train a task with morphogenetic growth, or resume a run that was interrupted."""

from __future__ import annotations

import argparse
from pathlib import Path

from esper_core.cli.arguments import add_config_arguments
from esper_core.config.describe import describe, format_descriptions
from esper_core.plugins.registry import Registry


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from esper_core.extras import require

    require("torch", "esper run")

    from esper_core.tolaria.assembly import RunError, reopen_run, start_run
    from esper_core.tolaria.console import RunDisplay, print_summary
    from esper_core.tolaria.trainer import Trainer

    registry: Registry = args.registry
    console = Console()
    if args.resume is not None:
        if args.config:
            raise RunError(
                "a resumed run keeps the configuration it recorded; give --resume RUN_DIR without a configuration "
                "file (--set nissa.* may change its telemetry sinks)"
            )
        assembled = reopen_run(registry, args.resume, args.overrides)
        trainer = Trainer(assembled)
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
        config = registry.load_config(args.config, overrides=args.overrides)
        assembled = start_run(registry, config)
        trainer = Trainer(assembled)
        console.print(
            f"run {assembled.run_id}: {assembled.task.name}, {assembled.options.epochs} epochs, "
            f"controller {assembled.tolaria.controller}, {len(trainer.run.executor.export_seed_states())} "
            f"slots, host of {trainer.history.host_parameters:,} parameters -> {assembled.run_dir}",
            highlight=False,
        )
    try:
        with RunDisplay(trainer, console, quiet=args.quiet):
            summary = trainer.fit()
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: esper run --resume {assembled.run_dir}")
        return 130
    finally:
        trainer.close()
    print_summary(console, summary, assembled.run_dir)
    report = assembled.run_dir / "report"
    if report.exists():
        console.print(f"report: {report}", highlight=False)
    return 0
