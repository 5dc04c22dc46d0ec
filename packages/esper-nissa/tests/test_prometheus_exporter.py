"""Telemetry packets into Prometheus series: names and units, running totals as counters, seed snapshots that replace
each other, bounded runs, and the text a scrape reads."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from esper_core.leyline import TelemetryPacket
from esper_core.telemetry import WARNING, Event, Metric, build_telemetry_packet
from esper_nissa.prometheus import FAMILIES, PrometheusExporter


def decision_point(
    run: str, step: int, *, seeds: list[Metric] | None = None, extra: list[Metric] | None = None, epoch: int = 1
) -> TelemetryPacket:
    metrics = [
        Metric("tolaria.training.loss", 0.5),
        Metric("tolaria.validation.accuracy", 0.8),
        Metric("tolaria.epoch.seconds", 2.0, "s"),
        Metric("tolaria.epoch_hook.latency_ms", 100.0, "ms"),
        *(seeds or []),
        *(extra or []),
    ]
    return build_telemetry_packet(source="tolaria", metrics=metrics, training_run_id=run, epoch=epoch, global_step=step)


def seed(
    slot: str, blueprint: str, stage: str, number: int, alpha: float = 0.0, violations: float = 0.0
) -> list[Metric]:
    labels = {"slot": slot, "blueprint": blueprint}
    metrics = [
        Metric("tolaria.seed.stage", float(number), attributes={**labels, "stage": stage}),
        Metric("tolaria.slot.isolation_violations", violations, attributes={"slot": slot}),
    ]
    if stage not in ("DORMANT", "EMBARGOED"):
        metrics.append(Metric("tolaria.seed.alpha", alpha, attributes=labels))
    return metrics


def scrape(exporter: PrometheusExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_family_names_follow_prometheus_conventions() -> None:
    for family in FAMILIES:
        assert family.name.startswith("esper_")
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name
        assert "_ms" not in family.name and "_gb" not in family.name, "base units only"
        assert not {"command", "seed_id", "packet"} & set(family.labels), "labels stay bounded"


def test_units_become_base_units_and_steps_give_step_time_and_throughput() -> None:
    exporter = PrometheusExporter()
    exporter.observe(decision_point("r", 100))
    exporter.observe(decision_point("r", 150, epoch=2))
    samples = scrape(exporter)
    run = (("run", "r"),)
    assert samples[("esper_validation_accuracy_ratio", run)] == 0.8
    assert samples[("esper_decision_hook_duration_seconds_sum", run)] == 0.2  # 2 x 100 ms
    assert samples[("esper_decision_overhead_ratio", run)] == 0.05  # 0.1 s of 2 s
    assert samples[("esper_epoch_duration_seconds_count", run)] == 2
    # The first decision point has no interval to divide; the second covers 50 steps in 2 s.
    assert samples[("esper_training_steps_total", run)] == 50
    assert samples[("esper_step_duration_seconds_sum", run)] == 0.04
    assert samples[("esper_global_step", run)] == 150


def test_running_totals_feed_counters_by_what_they_added() -> None:
    exporter = PrometheusExporter()
    for total in (0.0, 1.0, 1.0, 3.0):
        exporter.observe(decision_point("r", 10, extra=[Metric("tolaria.rollbacks", total)]))
    assert exporter.series.value("esper_rollbacks_total", run="r") == 3.0
    # A total that went down (a rolled-back count) adds nothing and counts on from there.
    exporter.observe(decision_point("r", 10, extra=[Metric("tolaria.rollbacks", 1.0)]))
    exporter.observe(decision_point("r", 10, extra=[Metric("tolaria.rollbacks", 2.0)]))
    assert exporter.series.value("esper_rollbacks_total", run="r") == 4.0


def test_a_culled_seeds_series_disappear_with_the_next_snapshot() -> None:
    exporter = PrometheusExporter()
    exporter.observe(decision_point("r", 10, seeds=seed("a", "BP1", "BLENDING", 3, alpha=0.4)))
    assert exporter.series.value("esper_seed_alpha", run="r", slot="a", blueprint="BP1") == 0.4
    exporter.observe(decision_point("r", 20, seeds=seed("a", "BP1", "EMBARGOED", 8, violations=1.0)))
    assert exporter.series.value("esper_seed_alpha", run="r", slot="a", blueprint="BP1") is None
    assert exporter.series.value("esper_seed_stage", run="r", slot="a", stage="EMBARGOED") == 1.0
    assert exporter.series.value("esper_seed_stage", run="r", slot="a", stage="BLENDING") == 0.0
    assert exporter.series.value("esper_seeds", run="r", stage="BLENDING") == 0.0
    assert exporter.series.value("esper_seed_isolation_violations_total", run="r", slot="a") == 1.0


def test_events_are_counted_by_bounded_labels() -> None:
    exporter = PrometheusExporter()
    events = [
        Event("decision", "grow", attributes={"operation": "germinate", "slot": "a", "risk_reason": "policy"}),
        Event("gradient_variance", "high", WARNING, {"action": "downgrade", "held": "false"}),
    ]
    exporter.observe(build_telemetry_packet(source="tamiyo", events=events, training_run_id="r"))
    transitions = [
        Event("seed_transition", "", attributes={"slot": "a", "blueprint": "BP1", "stage": "GERMINATED"}),
        Event(
            "seed_transition",
            "",
            attributes={"slot": "a", "blueprint": "BP1", "stage": "CULLED", "cause": "watchdog", "gate": "G3"},
        ),
    ]
    exporter.observe(build_telemetry_packet(source="kasmina", events=transitions, training_run_id="r"))
    series = exporter.series
    assert series.value("esper_decisions_total", run="r", operation="germinate", risk="policy") == 1
    assert series.value("esper_risk_rule_firings_total", run="r", rule="gradient_variance", action="downgrade") == 1
    assert series.value("esper_germinations_total", run="r", blueprint="BP1") == 1
    assert series.value("esper_culls_total", run="r", blueprint="BP1", cause="watchdog", gate="G3") == 1
    assert (
        series.value("esper_telemetry_events_total", run="r", source="kasmina", event="seed_transition", level="info")
        == 2
    )


def test_only_the_most_recent_runs_are_kept() -> None:
    exporter = PrometheusExporter(max_runs=2)
    for run in ("a", "b", "c"):
        exporter.observe(decision_point(run, 10))
    assert exporter.series.value("esper_train_loss", run="a") is None
    assert exporter.series.value("esper_train_loss", run="c") == 0.5
    assert exporter.series.value("esper_nissa_runs_tracked") == 2


def test_unknown_metric_names_are_tolerated() -> None:
    exporter = PrometheusExporter()
    exporter.observe(build_telemetry_packet(source="plugin", metrics=[Metric("plugin.anything", 1.0)]))
    assert exporter.series.value("esper_telemetry_packets_total", run="", source="plugin") == 1
