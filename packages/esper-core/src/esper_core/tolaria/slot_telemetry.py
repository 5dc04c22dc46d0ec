"""The seeds and field reports of a decision point, as telemetry every sink can read.

A sink sees only telemetry packets, so what an operator graphs about seeds (each slot's stage, alpha and
contribution, the isolation violations counted on it) and the field reports that judged the controller's commands
travel in Tolaria's decision-point packet, built from the state packet the controller was sent. Labels stay bounded:
a slot and a blueprint, never a seed or command id on a metric (events may carry ids: they are documents, not
series).

Metric names (all from source ``tolaria``, attributes ``slot`` and ``blueprint``):

- ``tolaria.seed.stage``: the lifecycle stage's number, with the stage's name as the ``stage`` attribute; one per
  slot, whether or not it holds a seed (a dormant slot has an empty ``blueprint``);
- ``tolaria.seed.alpha``, ``tolaria.seed.parameters``: for a slot holding a seed;
- ``tolaria.seed.contribution`` and ``tolaria.seed.contribution_stderr``: when measured;
- ``tolaria.slot.isolation_violations``: failed isolation checks on the slot over the whole run (a count that only
  grows, kept across culls), attribute ``slot`` only.

The ``field_report`` event carries ``slot``, ``blueprint``, ``outcome``, ``contribution`` (when measured),
``report_id`` and ``command_id``.
"""

from __future__ import annotations

from collections.abc import Iterable

from esper_core.leyline import FieldReport, FieldReportOutcome, SeedState, lifecycle, value_name
from esper_core.telemetry import Event, Metric

__all__ = ["field_report_events", "slot_metrics"]


def slot_metrics(seeds: Iterable[SeedState]) -> list[Metric]:
    """Every slot's stage and violations, and the measurements of the seeds that exist."""
    metrics: list[Metric] = []
    for seed in seeds:
        labels = {"slot": seed.slot_id, "blueprint": seed.blueprint_id}
        metrics.append(
            Metric(
                "tolaria.seed.stage",
                float(seed.stage),
                attributes={**labels, "stage": lifecycle.stage_name(seed.stage)},
            )
        )
        metrics.append(
            Metric(
                "tolaria.slot.isolation_violations", float(seed.isolation_violations), attributes={"slot": seed.slot_id}
            )
        )
        if seed.stage not in lifecycle.HAS_SEED:
            continue
        metrics.append(Metric("tolaria.seed.alpha", seed.alpha, attributes=labels))
        metrics.append(Metric("tolaria.seed.parameters", float(seed.parameter_count), attributes=labels))
        if seed.HasField("contribution"):
            metrics.append(Metric("tolaria.seed.contribution", seed.contribution, attributes=labels))
        if seed.HasField("contribution_stderr"):
            metrics.append(Metric("tolaria.seed.contribution_stderr", seed.contribution_stderr, attributes=labels))
    return metrics


def field_report_events(reports: Iterable[FieldReport]) -> list[Event]:
    """One ``field_report`` event per report (a Leyline ``FieldReport``) closed at this decision point."""
    events = []
    for report in reports:
        outcome = value_name(FieldReportOutcome, report.outcome, "FIELD_REPORT_OUTCOME_").lower()
        attributes = {
            "slot": report.slot_id,
            "blueprint": report.blueprint_id,
            "outcome": outcome,
            "report_id": report.report_id,
            "command_id": report.command_id,
        }
        delta = report.delta
        if delta.HasField("contribution"):
            attributes["contribution"] = f"{delta.contribution:.6g}"
        events.append(Event("field_report", f"{attributes['slot']}: {outcome}", attributes=attributes))
    return events
