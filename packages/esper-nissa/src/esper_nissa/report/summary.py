"""The report's ``summary.md``: the run's final numbers, its seeds, its decisions, rollbacks and failures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from esper_core.units import format_flops
from esper_nissa.report.history import RunHistory, SeedRow, integer, number

#: The plots the summary links to, with their captions.
PLOTS = (
    ("accuracy.png", "Accuracy per epoch"),
    ("loss.png", "Loss per epoch"),
    ("parameters.png", "Parameters per epoch"),
)


def _shown(value: float | None, form: str) -> str:
    """``value`` in ``form``; "n/a" for a missing value, "nan" or "inf" for a non-finite one."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return format(value, form)


def loss(value: float | None) -> str:
    return _shown(value, ".4f")


def percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _shown(value, "")
    return f"{100 * value:.2f} %"


def count(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _shown(value, "")
    return f"{round(value):,}"


def seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _shown(value, "")
    return f"{value:.1f} s"


def signed(value: float | None) -> str:
    return _shown(value, "+.4f")


def cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, on one line."""
    return " ".join(str(value).split()).replace("|", "\\|") or " "


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return lines


def flops(total: float | None, parts: Sequence[tuple[str, float | None]] = ()) -> str:
    """A counted FLOP total with its parts (those the record holds)."""
    if total is None or not math.isfinite(total):
        return _shown(total, "")
    return format_flops(total, [(name, value) for name, value in parts if value is not None and math.isfinite(value)])


def _growth(parameters: float | None, host: float | None) -> str:
    shown = count(parameters)
    if parameters is None or host is None or not math.isfinite(parameters) or not math.isfinite(host) or host <= 0:
        return shown
    added = parameters - host
    return f"{shown} ({added:+,.0f}, {100 * added / host:+.2f} %)"


def final_numbers(history: RunHistory) -> list[tuple[str, str]]:
    """(label, formatted value) rows: the run's own summary when it finished, else its last recorded epoch."""
    last = history.last_epoch
    host = history.baseline_parameters
    rows: list[tuple[str, str]] = []
    finished = history.finished
    if finished is not None:
        f = finished.get
        rows += [
            ("epochs", count(number(f("epochs")))),
            ("train loss (last epoch)", loss(number(f("train_loss")))),
            ("validation loss", loss(number(f("val_loss")))),
            ("validation accuracy", percent(number(f("val_accuracy")))),
            ("test loss", loss(number(f("test_loss")))),
            ("test accuracy", percent(number(f("test_accuracy")))),
            ("host parameters", count(number(f("host_parameters")) or host)),
            ("parameters (host + seeds)", _growth(number(f("parameters")), number(f("host_parameters")) or host)),
            ("seeds fossilized", count(number(f("fossilized")))),
            ("seeds culled", count(number(f("culled")))),
            ("rollbacks", count(number(f("rollbacks")))),
            ("wall time", seconds(number(f("wall_seconds")))),
            ("training time", seconds(number(f("train_seconds")))),
            (
                "compute (counted FLOPs)",
                flops(
                    number(f("total_flops")),
                    [
                        ("training", number(f("training_flops"))),
                        ("validation", number(f("validation_flops"))),
                        ("counterfactuals", number(f("measurement_flops"))),
                    ],
                ),
            ),
        ]
    else:
        recorded = [p.epoch_seconds for p in history.epochs if p.epoch_seconds is not None]
        rows += [
            ("epochs recorded", count(last.epoch if last else 0)),
            ("train loss (last epoch)", loss(last.train_loss if last else None)),
            ("validation loss (last epoch)", loss(last.val_loss if last else None)),
            ("validation accuracy (last epoch)", percent(last.val_accuracy if last else None)),
            ("host parameters", count(host)),
            ("parameters (host + seeds, last epoch)", _growth(last.parameters if last else None, host)),
            ("seeds fossilized", str(sum(row.stage == "FOSSILIZED" for row in history.seeds))),
            ("seeds culled", str(sum(row.stage == "CULLED" for row in history.seeds))),
            ("rollbacks", str(len(history.rollbacks))),
            ("training time (recorded epochs)", seconds(sum(recorded) if recorded else None)),
            ("compute (counted FLOPs, recorded epochs)", flops(last.total_flops if last else None)),
        ]
    best = [p for p in history.epochs if p.val_accuracy is not None and math.isfinite(p.val_accuracy)]
    if best:
        top = max(best, key=lambda p: p.val_accuracy or 0.0)
        rows.append(("best validation accuracy", f"{percent(top.val_accuracy)} (epoch {top.epoch})"))
    return rows


def _stage(row: SeedRow) -> str:
    if row.ended_at is not None and row.stage in {"FOSSILIZED", "CULLED"}:
        return f"{row.stage} (epoch {row.ended_at})"
    return row.stage


def render_summary(history: RunHistory) -> str:
    """The Markdown text of ``summary.md``."""
    last = history.last_epoch
    lines = [f"# Run report: {history.run_id or 'unnamed run'}", ""]
    facts = []
    if history.task:
        facts.append(f"Task `{history.task}`")
    if history.slots:
        facts.append(f"{len(history.slots)} seed slot{'s' if len(history.slots) != 1 else ''}")
    if history.finished is not None:
        epochs = integer(history.finished.get("epochs"))
        facts.append(f"finished after {epochs if epochs is not None else '?'} epochs")
    lines.append(("; ".join(facts) + ".") if facts else "")
    if history.finished is None:
        where = f"after epoch {last.epoch}" if last else "before its first epoch"
        lines += [
            "",
            f"**The run did not finish**: its record ends {where} with no `run_finished` entry (the run was killed, "
            "crashed, or is still running). The numbers below are from the last recorded epoch.",
        ]
    lines += ["", "## Final numbers", ""]
    lines += table(("metric", "value"), final_numbers(history))

    lines += ["", "## Seeds", ""]
    if history.seeds:
        lines += table(
            ("slot", "blueprint", "germinated at", "final stage", "contribution", "last field report", "reason"),
            (
                (
                    row.slot,
                    row.blueprint or "?",
                    f"epoch {row.germinated_at}" if row.germinated_at is not None else "?",
                    _stage(row),
                    signed(row.contribution),
                    row.outcome or "",
                    row.reason,
                )
                for row in history.seeds
            ),
        )
        lines += [
            "",
            "Contribution: the validation loss without the seed minus the loss with it, as last measured by a field "
            "report (positive: the seed helps).",
        ]
    else:
        lines.append("No seed was germinated.")

    lines += ["", "## Decisions", ""]
    if history.decisions:
        lines += table(
            ("operation", "decided", "applied"),
            ((operation, n, history.applied.get(operation, 0)) for operation, n in history.decisions.items()),
        )
    else:
        lines.append("No decision was recorded.")

    if history.rollbacks:
        lines += ["", "## Rollbacks", ""]
        lines += table(
            ("epoch", "back to epoch", "reason", "culled"),
            (
                (
                    r.epoch if r.epoch is not None else "?",
                    r.to_epoch if r.to_epoch is not None else "?",
                    r.reason,
                    ", ".join(r.culled) or "none",
                )
                for r in history.rollbacks
            ),
        )
    if history.failures:
        lines += ["", "## Failures", ""]
        lines += table(
            ("epoch", "reason", "conservative mode"),
            (
                (f.epoch if f.epoch is not None else "?", f.reason, "yes" if f.conservative else "no")
                for f in history.failures
            ),
        )

    lines += ["", "## Plots", ""]
    for file, caption in PLOTS:
        lines += [f"![{caption}]({file})", ""]
    lines.append(
        "Vertical lines mark lifecycle events: germinated (green, dashed), fossilized (blue), culled (red, dotted), "
        "rollback (black, dash-dot)."
    )
    return "\n".join(lines) + "\n"
