"""What ``esper run`` shows a person: a progress bar per epoch, one status line per epoch, a summary table, and one
line the first time each plugin raises each exception type (also with ``--quiet``: an error is not progress)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandStatus,
    CommandType,
    SystemStatePacket,
    lifecycle,
    value_name,
)
from esper_core.leyline.annotations import POLICY_ERROR
from esper_core.tolaria.history import EpochStats, Summary
from esper_core.tolaria.trainer import Trainer
from esper_core.units import format_flops

#: The progress bar is redrawn at most this often (in steps), so the display costs nothing measurable per batch.
REFRESH_EVERY = 25


def _stage_counts(state: SystemStatePacket) -> str:
    counts: dict[str, int] = {}
    for seed in state.seeds:
        name = lifecycle.stage_name(seed.stage).lower()
        if name != "dormant":
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{count} {name}" for name, count in sorted(counts.items())) or "all dormant"


def _action(command: AdaptationCommand, result: CommandResult) -> str:
    if command.command_type == CommandType.COMMAND_NOOP:
        # The error itself was shown once, when the policy first raised it (Trainer.on_notice).
        return "wait (policy error)" if command.annotations.get(POLICY_ERROR) else "wait"
    operation = command.seed_operation
    text = lifecycle.command_name(command)
    if operation.blueprint_id:
        text += f" {operation.blueprint_id}"
    text += f" @ {command.target_slot_id}"
    if result.status != CommandStatus.COMMAND_STATUS_APPLIED:
        text += f" ({value_name(CommandStatus, result.status, 'COMMAND_STATUS_').lower()})"
    return text


class RunDisplay:
    def __init__(self, trainer: Trainer, console: Console | None = None, quiet: bool = False) -> None:
        self.trainer = trainer
        self.console = console or Console()
        self.quiet = quiet
        self.host_parameters = trainer.history.host_parameters
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.console, transient=True, disable=quiet,
        )  # fmt: skip
        self.task_id: TaskID | None = None
        trainer.on_notice = self.notice
        if not quiet:  # quiet: nothing else is called during the epochs at all
            trainer.on_step = self.step
            trainer.on_epoch = self.epoch

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def step(self, done: int, total: int) -> None:
        if done % REFRESH_EVERY and done not in (total, 1):
            return
        epoch = self.trainer.history.epoch + 1
        if self.task_id is None:
            self.task_id = self.progress.add_task("train", total=total, epoch=epoch)
        self.progress.update(self.task_id, completed=done, total=total, epoch=epoch)

    def epoch(
        self, epoch: int, stats: EpochStats, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult
    ) -> None:
        metrics = state.metrics
        total = self.trainer.run.options.epochs
        added = int(metrics.parameter_count) - self.host_parameters
        line = (
            f"{epoch:>3}/{total} train {stats.train_loss:.3f} {stats.train_accuracy:6.2%} "
            f"val {metrics.val_loss:.3f} {metrics.val_accuracy:6.2%} {stats.seconds:5.1f}s | "
            f"params {metrics.parameter_count:,} ({added:+,}) | {_stage_counts(state)} | {_action(command, result)}"
        )
        if self.task_id is not None:
            self.progress.reset(self.task_id)
        self.console.print(line, highlight=False)

    def notice(self, what: str, line: str) -> None:
        """One line a person must see now: a plugin's error (its first of that type), conservative mode."""
        style = "red" if what == "plugin error" else "yellow"
        self.console.print(f"[{style}]{escape(what)}:[/] {escape(line)}", highlight=False, soft_wrap=True)


def compute(summary: Summary) -> str:
    """The run's counted FLOPs and their parts."""
    parts = (
        ("training", summary.training_flops),
        ("validation", summary.validation_flops),
        ("counterfactuals", summary.measurement_flops),
    )
    return format_flops(summary.total_flops, parts)


def plugin_rows(summary: Summary) -> list[tuple[str, str]]:
    """The summary's rows on plugins that raised (none when none did): counts per plugin with their exception
    types, and the blueprints quarantined for the run."""
    rows = []
    if summary.plugin_errors:
        parts = []
        for plugin, by_type in sorted(summary.plugin_errors.items()):
            kind, _, name = plugin.partition(":")
            types = ", ".join(f"{count} {error_type}" for error_type, count in sorted(by_type.items()))
            parts.append(f"{kind} {name!r}: {types}")
        rows.append(("plugin errors", "; ".join(parts) + "; tracebacks in plugin-errors/"))
    if summary.quarantined:
        rows.append(("quarantined blueprints", ", ".join(summary.quarantined)))
    return rows


def print_summary(console: Console, summary: Summary, run_dir: Path) -> None:
    table = Table(title=f"Run {run_dir.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    rows = [
        ("epochs", str(summary.epochs)),
        ("test accuracy", percent(summary.test_accuracy)),
        ("validation accuracy", percent(summary.val_accuracy)),
        ("test loss", "-" if summary.test_loss is None else f"{summary.test_loss:.4f}"),
        (
            "parameters",
            f"{summary.parameters:,} (host {summary.host_parameters:,}, "
            f"grown {summary.parameters - summary.host_parameters:+,})",
        ),
        ("seeds fossilized / culled", f"{summary.fossilized} / {summary.culled}"),
        ("rollbacks", str(summary.rollbacks)),
        ("decisions", ", ".join(f"{name} {count}" for name, count in sorted(summary.decisions.items()))),
        *plugin_rows(summary),
        ("wall time", f"{summary.wall_seconds:.0f} s (training {summary.train_seconds:.0f} s)"),
        ("compute (counted FLOPs)", compute(summary)),
        ("run directory", str(run_dir)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
