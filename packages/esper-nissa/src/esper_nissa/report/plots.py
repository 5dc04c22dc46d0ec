"""The report's plots, rendered to PNG bytes with matplotlib's Agg canvas (no display, no pyplot global state, so
it is safe from any thread). matplotlib is imported here only, when a report is made."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from esper_nissa.report.history import MARKER_KINDS, EpochPoint, MarkerKind, RunHistory, number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Pixel size of every plot: FIGSIZE inches at DPI.
FIGSIZE = (8.0, 4.5)
DPI = 100

#: How each lifecycle event is drawn: a vertical line of this colour and style across the plot.
MARKER_STYLE: dict[MarkerKind, tuple[str, str]] = {
    "germinated": ("tab:green", "--"),
    "fossilized": ("tab:blue", "-"),
    "culled": ("tab:red", ":"),
    "rollback": ("black", "-."),
}

_TRAIN = "tab:orange"
_VALIDATION = "tab:purple"
_TEST = "tab:olive"


def render_plots(history: RunHistory) -> dict[str, bytes]:
    """``{"accuracy.png": ..., "loss.png": ..., "parameters.png": ...}``: the PNG bytes of each plot."""
    return {
        "accuracy.png": _accuracy(history),
        "loss.png": _loss(history),
        "parameters.png": _parameters(history),
    }


def _values(points: Sequence[EpochPoint], read: Callable[[EpochPoint], float | None]) -> list[float]:
    values = []
    for point in points:
        value = read(point)
        values.append(value if value is not None and math.isfinite(value) else math.nan)
    return values


def _figure(history: RunHistory, title: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    name = history.run_id or "run"
    status = "" if history.finished is not None else " (did not finish)"
    axes.set_title(f"{title}: {name}{status}", fontsize="medium")
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(True, alpha=0.3)
    return figure, axes


def _line(axes: Axes, epochs: Sequence[int], values: Sequence[float], label: str, color: str) -> None:
    if all(math.isnan(value) for value in values):
        return
    few = len(epochs) <= 40
    axes.plot(epochs, values, label=label, color=color, marker="o" if few else None, markersize=3, linewidth=1.5)


def _final_point(axes: Axes, epoch: int | None, value: float | None, label: str) -> None:
    if epoch is None or value is None or not math.isfinite(value):
        return
    axes.plot([epoch], [value], linestyle="none", marker="*", markersize=11, color=_TEST, label=label)


def _finish(figure: Figure, axes: Axes, history: RunHistory) -> bytes:
    epochs = [point.epoch for point in history.epochs]
    events = _mark_events(axes, history)
    span = epochs + events
    if span:
        low, high = min(span), max(span)
        pad = max(0.5, 0.03 * (high - low))
        axes.set_xlim(low - pad, high + pad)
    if not epochs:
        axes.text(0.5, 0.5, "no epoch was recorded", transform=axes.transAxes, ha="center", va="center")
    handles, _labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(loc="best", fontsize="small", framealpha=0.85)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _mark_events(axes: Axes, history: RunHistory) -> list[int]:
    """A vertical line at each lifecycle event, one legend entry per kind (with its count); the epochs marked.

    Kinds that share an epoch (a fossilization and a germination at one decision point) are drawn side by side, a
    hair apart, so that neither hides the other.
    """
    kinds_at: dict[int, list[MarkerKind]] = {}
    for kind in MARKER_KINDS:
        for epoch in sorted({marker.epoch for marker in history.markers if marker.kind == kind}):
            kinds_at.setdefault(epoch, []).append(kind)
    if not kinds_at:
        return []
    epochs = [point.epoch for point in history.epochs] + list(kinds_at)
    step = 0.008 * max(1, max(epochs) - min(epochs))
    for kind in MARKER_KINDS:
        markers = [marker for marker in history.markers if marker.kind == kind]
        if not markers:
            continue
        color, style = MARKER_STYLE[kind]
        label = f"{kind} ({len(markers)})"
        for epoch in sorted({marker.epoch for marker in markers}):
            sharing = kinds_at[epoch]
            offset = (sharing.index(kind) - (len(sharing) - 1) / 2) * step
            axes.axvline(epoch + offset, color=color, linestyle=style, linewidth=1.2, alpha=0.8, label=label)
            label = "_nolegend_"
    return list(kinds_at)


def _accuracy(history: RunHistory) -> bytes:
    from matplotlib.ticker import PercentFormatter

    figure, axes = _figure(history, "Accuracy", "accuracy")
    points = history.epochs
    epochs = [point.epoch for point in points]
    _line(axes, epochs, _values(points, lambda p: p.train_accuracy), "train", _TRAIN)
    _line(axes, epochs, _values(points, lambda p: p.val_accuracy), "validation", _VALIDATION)
    if history.finished is not None:
        _final_point(axes, epochs[-1] if epochs else None, number(history.finished.get("test_accuracy")), "test")
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    return _finish(figure, axes, history)


def _loss(history: RunHistory) -> bytes:
    figure, axes = _figure(history, "Loss", "loss")
    points = history.epochs
    epochs = [point.epoch for point in points]
    _line(axes, epochs, _values(points, lambda p: p.train_loss), "train", _TRAIN)
    _line(axes, epochs, _values(points, lambda p: p.val_loss), "validation", _VALIDATION)
    if history.finished is not None:
        _final_point(axes, epochs[-1] if epochs else None, number(history.finished.get("test_loss")), "test")
    return _finish(figure, axes, history)


def _parameters(history: RunHistory) -> bytes:
    from matplotlib.ticker import FuncFormatter

    figure, axes = _figure(history, "Parameters", "parameters")
    points = history.epochs
    epochs = [point.epoch for point in points]
    values = _values(points, lambda p: p.parameters)
    if not all(math.isnan(value) for value in values):
        axes.plot(
            epochs,
            values,
            label="host + seeds",
            color=_VALIDATION,
            drawstyle="steps-pre",  # epoch N trained with the seeds of decision point N-1
            marker="o" if len(epochs) <= 40 else None,
            markersize=3,
            linewidth=1.5,
        )
    baseline = history.baseline_parameters
    if baseline is not None and math.isfinite(baseline):
        axes.axhline(baseline, color="gray", linestyle="--", linewidth=1.2, label=f"host ({baseline:,.0f})")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:,.0f}"))
    return _finish(figure, axes, history)
