"""Learning curves of a Simic training: ``learning.png`` from the ``curves.json`` that ``esper simic train`` writes
into a candidate's directory.

``curves.json`` is a JSON list of rows, numbers only, one per pass: ``phase`` 0 for a behaviour-cloning epoch
(``clone_loss``, ``likelihood``: the geometric mean probability of the demonstrated actions, ``agreement``: the
share of them the policy gives even odds or better), 1 for a PPO iteration
(``return``: the mean episode return of the data, ``entropy``, ``value_loss``, ``approx_kl``, ``clip_fraction``,
``policy_loss``). Another trainer's rows may carry other keys; every numeric key is plotted, one panel each, over
the pass number. ``esper report CANDIDATE_DIR`` writes the plot next to the curves.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from esper_nissa.report.plots import DPI

CURVES_FILE = "curves.json"
LEARNING_PLOT = "learning.png"
#: Panels in this order first (the learning curves the issue names), then any other keys alphabetically.
PREFERRED = (
    "return",
    "entropy",
    "value_loss",
    "approx_kl",
    "clip_fraction",
    "policy_loss",
    "clone_loss",
    "likelihood",
    "agreement",
)


def is_training_dir(directory: Path) -> bool:
    return (directory / CURVES_FILE).is_file()


def read_curves(directory: Path) -> list[dict[str, float]]:
    from esper_nissa.report import ReportError

    path = directory / CURVES_FILE
    try:
        rows: Any = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read the learning curves {path}: {type(error).__name__}: {error}") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ReportError(f"{path} is not a list of rows (the curves `esper simic train` writes)")
    return [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))} for row in rows]


def render_learning(rows: list[dict[str, float]], title: str) -> bytes:
    """One panel per numeric key over the pass number; cloning passes shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = {key for row in rows for key in row if key != "phase"}
    ordered = [k for k in PREFERRED if k in keys] + sorted(keys - set(PREFERRED))
    columns = 2
    panels = max(len(ordered), 1)
    figure = Figure(figsize=(10.0, 2.6 * math.ceil(panels / columns)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    cloning = [index for index, row in enumerate(rows, 1) if row.get("phase") == 0.0]
    for number, key in enumerate(ordered, 1):
        axes = figure.add_subplot(math.ceil(panels / columns), columns, number)
        points = [(index, row[key]) for index, row in enumerate(rows, 1) if key in row and math.isfinite(row[key])]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker=".", color="tab:blue")
        if cloning:
            axes.axvspan(min(cloning) - 0.5, max(cloning) + 0.5, color="tab:gray", alpha=0.12, label="cloning")
        axes.set_title(key.replace("_", " "))
        axes.set_xlabel("pass")
        axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_learning_report(directory: str | Path, output: str | Path | None = None) -> Path:
    """Write ``learning.png`` for the training in ``directory`` to ``output`` (default: ``directory``)."""
    from esper_core.storage import atomic_write_bytes
    from esper_nissa.report import ReportError

    source = Path(directory)
    rows = read_curves(source)
    if not rows:
        raise ReportError(f"{source / CURVES_FILE} holds no passes: the training stopped before its first one")
    target = Path(output) if output is not None else source
    path = target / LEARNING_PLOT
    try:
        atomic_write_bytes(path, render_learning(rows, f"learning curves: {source.name}"))
    except OSError as error:
        raise ReportError(f"cannot write {path}: {error}") from error
    return path
