"""The run report: plots and a Markdown summary, made from a run directory's run record.

``write_report(run_dir)`` reads ``<run_dir>/record.log`` and writes ``<run_dir>/report/``:

- ``accuracy.png``: train and validation accuracy per epoch (test accuracy as a star at the end);
- ``loss.png``: train and validation loss per epoch (test loss likewise);
- ``parameters.png``: parameters per epoch (host + seeds), the host's own count as a dashed baseline;
- ``summary.md``: the final numbers, a table of the seeds, the decision counts, rollbacks and failures.

Every plot marks each germination, fossilization, cull and rollback at its epoch. The report works for any record:
a run without seeds, a single epoch, a run that was killed (no ``run_finished`` entry), even one killed before its
first epoch. Everything is rendered in memory first; then each file is written atomically, the summary last, so a
failure leaves the previous report whole and a reader never sees a half-written file.
"""

from __future__ import annotations

from pathlib import Path

from esper_core.errors import EsperError
from esper_nissa.report.history import RunHistory, history_from_entries

__all__ = [
    "REPORT_DIR",
    "REPORT_FILES",
    "NotARunError",
    "ReportError",
    "RunHistory",
    "history_from_entries",
    "load_history",
    "write_report",
]

#: The report's directory inside a run directory.
REPORT_DIR = "report"
#: The files a report consists of.
REPORT_FILES = ("accuracy.png", "loss.png", "parameters.png", "summary.md")


class ReportError(EsperError):
    """A run report could not be made; the message says why."""


class NotARunError(ReportError):
    """The directory given is not a run directory (it has no run record)."""


def _record_file(run_dir: Path) -> Path:
    from esper_core.tolaria.record import RECORD_FILE

    if not run_dir.exists():
        raise NotARunError(f"{run_dir} does not exist. Give the directory of a run (the one `esper run` wrote).")
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a directory. Give the directory of a run (the one `esper run` wrote).")
    record = run_dir / RECORD_FILE
    if not record.is_file():
        raise NotARunError(
            f"{run_dir} is not a run directory: it has no {RECORD_FILE}. Give the directory of a run "
            "(the one `esper run` wrote, holding record.log)."
        )
    return record


def load_history(run_dir: str | Path) -> RunHistory:
    """Read ``run_dir``'s run record; raises :class:`NotARunError` when there is none."""
    from esper_core.tolaria.record import read_record

    record = _record_file(Path(run_dir))
    try:
        entries = read_record(record)
    except (OSError, ValueError) as error:  # ValueError covers a JSON payload that does not decode
        raise ReportError(f"cannot read the run record {record}: {type(error).__name__}: {error}") from error
    return history_from_entries(entry for entry in entries if isinstance(entry, dict))


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of the run in ``run_dir`` to ``output`` (default ``<run_dir>/report``); return that path."""
    from esper_core.storage import atomic_write_bytes, atomic_write_text
    from esper_nissa.report.plots import render_plots
    from esper_nissa.report.summary import render_summary

    run_path = Path(run_dir)
    history = load_history(run_path)
    plots = render_plots(history)
    summary = render_summary(history)
    target = Path(output) if output is not None else run_path / REPORT_DIR
    if target.exists() and not target.is_dir():
        raise ReportError(f"cannot write the report into {target}: it exists and is not a directory")
    try:
        for name, data in plots.items():
            atomic_write_bytes(target / name, data)
        atomic_write_text(target / "summary.md", summary)
    except OSError as error:
        raise ReportError(f"cannot write the report into {target}: {error}") from error
    return target
