"""A run's story, read from its run record: the per-epoch series, the lifecycle events worth marking on a plot, the
seeds with their fate, the decisions, rollbacks and failures, and the final numbers if the run finished.

Everything is read defensively: a run that was killed has no ``run_finished`` entry, an older or newer record may
lack a field, and any metric may be null. Nothing here imports matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

#: Lifecycle events the plots mark, in legend order.
MarkerKind = Literal["germinated", "fossilized", "culled", "rollback"]
MARKER_KINDS: tuple[MarkerKind, ...] = ("germinated", "fossilized", "culled", "rollback")

#: Stages a slot passes through after its seed was culled: the seed's own fate stays CULLED.
_AFTER_CULL = frozenset({"EMBARGOED", "RESETTING", "DORMANT"})


@attrs.frozen
class EpochPoint:
    epoch: int
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    parameters: float | None = None
    host_parameters: float | None = None
    epoch_seconds: float | None = None
    #: Counted FLOPs of the run up to this epoch's decision point (records written before compute was counted: None).
    total_flops: float | None = None


@attrs.frozen
class Marker:
    """A lifecycle event at an epoch: a germination, fossilization, cull or rollback."""

    epoch: int
    kind: MarkerKind
    slot: str = ""


@attrs.define
class SeedRow:
    """One seed: from its germination in a slot to its last recorded stage."""

    slot: str
    seed: str
    blueprint: str
    germinated_at: int | None
    stage: str
    ended_at: int | None = None
    #: The last contribution a field report measured for this seed (validation loss without it minus with it).
    contribution: float | None = None
    #: The last field report's outcome (SUCCESS, NEUTRAL, REGRESSION, ABORTED).
    outcome: str | None = None
    #: Why the seed ended where it did, when the record says (e.g. a rollback, a failed gate).
    reason: str = ""


@attrs.frozen
class Rollback:
    epoch: int | None
    to_epoch: int | None
    reason: str
    culled: tuple[str, ...]


@attrs.frozen
class Failure:
    epoch: int | None
    reason: str
    conservative: bool


@attrs.frozen
class RunHistory:
    run_id: str
    task: str
    host_parameters: float | None
    slots: tuple[str, ...]
    epochs: tuple[EpochPoint, ...]
    markers: tuple[Marker, ...]
    seeds: tuple[SeedRow, ...]
    #: operation -> how many times the controller chose it (the run's own count when it finished).
    decisions: Mapping[str, int]
    #: operation -> how many of those commands the seed executor applied.
    applied: Mapping[str, int]
    rollbacks: tuple[Rollback, ...]
    failures: tuple[Failure, ...]
    #: The ``run_finished`` entry; None when the run did not finish (killed, crashed, or still running).
    finished: Mapping[str, Any] | None
    entry_count: int

    @property
    def last_epoch(self) -> EpochPoint | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def baseline_parameters(self) -> float | None:
        """The host's own parameter count (the plots' baseline)."""
        if self.host_parameters is not None:
            return self.host_parameters
        for point in reversed(self.epochs):
            if point.host_parameters is not None:
                return point.host_parameters
        if self.finished is not None:
            return number(self.finished.get("host_parameters"))
        return None


def number(value: Any) -> float | None:
    """A JSON value as a float, or None for null, booleans, strings and anything else that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def integer(value: Any) -> int | None:
    result = number(value)
    if result is None or not math.isfinite(result):
        return None
    return int(result)


def text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    counts: dict[str, int] = {}
    for key, count in value.items():
        parsed = integer(count)
        if parsed is not None:
            counts[str(key)] = parsed
    return counts


class _Seeds:
    """Follows seeds through transitions, rollbacks and field reports."""

    def __init__(self) -> None:
        self.rows: list[SeedRow] = []
        self.by_id: dict[str, SeedRow] = {}
        self.in_slot: dict[str, SeedRow] = {}
        self.markers: list[Marker] = []

    def _mark(self, epoch: int | None, kind: MarkerKind, slot: str) -> None:
        if epoch is None:
            return
        marker = Marker(epoch, kind, slot)
        if kind == "rollback" or marker not in self.markers:
            self.markers.append(marker)

    def _new(self, slot: str, seed: str, blueprint: str, epoch: int | None, stage: str) -> SeedRow:
        row = SeedRow(slot=slot, seed=seed, blueprint=blueprint, germinated_at=epoch, stage=stage)
        self.rows.append(row)
        if seed:
            self.by_id[seed] = row
        self.in_slot[slot] = row
        return row

    def transition(self, entry: Mapping[str, Any]) -> None:
        epoch = integer(entry.get("epoch"))
        slot, seed, blueprint = text(entry.get("slot")), text(entry.get("seed")), text(entry.get("blueprint"))
        source, target = text(entry.get("source")).upper(), text(entry.get("target")).upper()
        reason = text(entry.get("reason"))
        if target == "GERMINATED":
            self._new(slot, seed, blueprint, epoch, target)
            self._mark(epoch, "germinated", slot)
            return
        row = self.by_id.get(seed) if seed else None
        if row is None:
            row = self.in_slot.get(slot)
        if row is None:
            if target in _AFTER_CULL or target == "TERMINATED" or source in {"", "DORMANT"}:
                return  # a slot's own bookkeeping, with no seed we know of
            # The germination is not in the record (e.g. an older record); keep the seed without its start.
            row = self._new(slot, seed, blueprint, None, source)
        if not row.blueprint and blueprint:
            row.blueprint = blueprint
        if row.stage == "CULLED" and (target in _AFTER_CULL or target == "CULLED"):
            # The slot moves on without the seed; or the cull of a rollback, recorded once more as a transition.
            if target == "DORMANT" and self.in_slot.get(slot) is row:
                del self.in_slot[slot]
            return
        row.stage = target
        if target in {"FOSSILIZED", "CULLED"}:
            row.ended_at = epoch
            row.reason = reason
            self._mark(epoch, "fossilized" if target == "FOSSILIZED" else "culled", slot)

    def rollback(self, entry: Mapping[str, Any]) -> Rollback:
        epoch = integer(entry.get("epoch"))
        culled = entry.get("culled")
        slots = tuple(text(slot) for slot in culled) if isinstance(culled, list) else ()
        rollback = Rollback(epoch, integer(entry.get("to_epoch")), text(entry.get("reason")), slots)
        self._mark(epoch, "rollback", "")
        for slot in slots:
            row = self.in_slot.get(slot)
            if row is not None and row.stage != "FOSSILIZED":
                if row.stage != "CULLED":
                    row.stage = "CULLED"
                    row.ended_at = epoch
                if row.ended_at in (None, epoch):  # the rollback is why it was culled
                    row.reason = f"rollback: {rollback.reason}" if rollback.reason else "rollback"
            self._mark(epoch, "culled", slot)
        return rollback

    def field_report(self, entry: Mapping[str, Any]) -> None:
        epoch = integer(entry.get("epoch"))
        slot, blueprint = text(entry.get("slot")), text(entry.get("blueprint"))
        candidates = [
            row
            for row in self.rows
            if row.slot == slot
            and (not blueprint or not row.blueprint or row.blueprint == blueprint)
            and (epoch is None or row.germinated_at is None or row.germinated_at <= epoch)
        ]
        if not candidates:
            return
        row = candidates[-1]
        contribution = number(entry.get("contribution"))
        if contribution is not None:
            row.contribution = contribution
        outcome = text(entry.get("outcome"))
        if outcome:
            row.outcome = outcome


def history_from_entries(entries: Iterable[Mapping[str, Any]]) -> RunHistory:
    """Read a run record's entries (:func:`esper_core.tolaria.record.read_record`) into a :class:`RunHistory`."""
    run_id = task = ""
    host_parameters: float | None = None
    slots: list[str] = []
    epochs: dict[int, EpochPoint] = {}
    seeds = _Seeds()
    counted: dict[str, int] = {}
    applied: dict[str, int] = {}
    rollbacks: list[Rollback] = []
    failures: list[Failure] = []
    finished: Mapping[str, Any] | None = None
    count = 0
    for entry in entries:
        count += 1
        kind = entry.get("kind")
        if kind == "run_started":
            run_id = text(entry.get("run_id")) or run_id
            task = text(entry.get("task")) or task
            host_parameters = number(entry.get("host_parameters"))
            raw_slots = entry.get("slots")
            if isinstance(raw_slots, list):
                slots = [text(s.get("slotId", s.get("slot_id"))) for s in raw_slots if isinstance(s, Mapping)]
        elif kind == "epoch":
            epoch = integer(entry.get("epoch"))
            if epoch is None:
                continue
            # A later entry for the same epoch (after a rollback) replaces the earlier one.
            epochs[epoch] = EpochPoint(
                epoch=epoch,
                train_loss=number(entry.get("train_loss")),
                train_accuracy=number(entry.get("train_accuracy")),
                val_loss=number(entry.get("val_loss")),
                val_accuracy=number(entry.get("val_accuracy")),
                parameters=number(entry.get("parameters")),
                host_parameters=number(entry.get("host_parameters")),
                epoch_seconds=number(entry.get("epoch_seconds")),
                total_flops=number(entry.get("total_flops")),
            )
        elif kind == "decision":
            operation = text(entry.get("operation")) or "unknown"
            counted[operation] = counted.get(operation, 0) + 1
            if text(entry.get("status")).upper() == "APPLIED":
                applied[operation] = applied.get(operation, 0) + 1
        elif kind == "transition":
            seeds.transition(entry)
        elif kind == "field_report":
            seeds.field_report(entry)
        elif kind == "rollback":
            rollbacks.append(seeds.rollback(entry))
        elif kind == "failure":
            failures.append(
                Failure(integer(entry.get("epoch")), text(entry.get("reason")), bool(entry.get("conservative")))
            )
        elif kind == "run_finished":
            finished = entry
    decisions = _counts(finished.get("decisions")) if finished is not None else {}
    if not decisions:
        decisions = counted
    return RunHistory(
        run_id=run_id,
        task=task,
        host_parameters=host_parameters,
        slots=tuple(slots),
        epochs=tuple(epochs[epoch] for epoch in sorted(epochs)),
        markers=tuple(seeds.markers),
        seeds=tuple(seeds.rows),
        decisions=dict(sorted(decisions.items(), key=lambda item: (-item[1], item[0]))),
        applied=applied,
        rollbacks=tuple(rollbacks),
        failures=tuple(failures),
        finished=finished,
        entry_count=count,
    )
