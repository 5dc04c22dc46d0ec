"""Every Prometheus metric family Nissa exports: name, type, help text and labels, in one table.

This table is the metrics reference (docs/nissa.md lists the same families, and a test keeps the two in step). Names
follow Prometheus conventions: the ``esper_`` prefix, base units in the name (``_seconds``, ``_bytes``, ``_ratio``),
``_total`` on counters, histograms for latencies. Labels are bounded: a run id, a slot, a blueprint, a stage, a
rule; never a command, seed or packet id.

How each family is fed from telemetry packets is :mod:`esper_nissa.prometheus.exporter`'s job.
"""

from __future__ import annotations

from typing import Literal

import attrs

Kind = Literal["gauge", "counter", "histogram"]

#: Decision and hook latencies: 0.1 ms to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: Epoch durations: 0.1 s to an hour.
EPOCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Mean training step durations: 0.1 ms to 10 s.
STEP_BUCKETS = LATENCY_BUCKETS


@attrs.frozen
class Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    #: The reference's section (docs/nissa.md groups the families by it).
    group: str = ""


def _families(group: str, *families: Family) -> list[Family]:
    return [attrs.evolve(family, group=group) for family in families]


RUN = ("run",)

FAMILIES: tuple[Family, ...] = (
    *_families(
        "training",
        Family("esper_train_loss", "gauge", "Mean task loss over the last epoch's training samples.", RUN),
        Family("esper_train_accuracy_ratio", "gauge", "Fraction of the last epoch's training samples correct.", RUN),
        Family("esper_validation_loss", "gauge", "Task loss on the validation split at the last decision point.", RUN),
        Family("esper_validation_accuracy_ratio", "gauge", "Fraction of the validation split correct.", RUN),
        Family("esper_epoch", "gauge", "The epoch of the run's latest decision point.", RUN),
        Family("esper_global_step", "gauge", "Optimizer steps since the run started.", RUN),
        Family("esper_parameters", "gauge", "Parameters of the model (host and seeds).", RUN),
        Family("esper_counted_flops", "gauge", "Counted training and measurement FLOPs of the run so far.", RUN),
        Family("esper_epoch_duration_seconds", "histogram", "Wall time of each epoch's training.", RUN, EPOCH_BUCKETS),
        Family(
            "esper_step_duration_seconds",
            "histogram",
            "Mean wall time of a training step, one observation per decision point (epoch time over its steps).",
            RUN,
            STEP_BUCKETS,
        ),
        Family("esper_training_steps_total", "counter", "Training steps (rate() gives throughput in steps/s).", RUN),
        Family("esper_training_seconds_total", "counter", "Wall time spent in training steps.", RUN),
        Family(
            "esper_decision_hook_duration_seconds",
            "histogram",
            "Wall time of Tolaria's decision-point hook (measure, decide, apply): the run's overhead on training.",
            RUN,
            LATENCY_BUCKETS,
        ),
        Family(
            "esper_decision_overhead_ratio",
            "gauge",
            "The last decision-point hook's time over the epoch's training time.",
            RUN,
        ),
        Family("esper_rollbacks_total", "counter", "Rollbacks to the last good state.", RUN),
        Family(
            "esper_conservative_mode",
            "gauge",
            "1 while the subsystem is in conservative mode.",
            ("run", "subsystem"),
        ),
        Family(
            "esper_last_packet_timestamp_seconds",
            "gauge",
            "When the last packet of a source was built.",
            ("run", "source"),
        ),
        Family("esper_telemetry_packets_total", "counter", "Telemetry packets received.", ("run", "source")),
        Family(
            "esper_telemetry_events_total",
            "counter",
            "Telemetry events received, by name and level.",
            ("run", "source", "event", "level"),
        ),
    ),
    *_families(
        "hardware",
        Family(
            "esper_cpu_utilization_ratio", "gauge", "The machine's CPU busy share since the last decision point.", RUN
        ),
        Family("esper_memory_available_bytes", "gauge", "Memory available on the training device.", ("run", "device")),
        Family("esper_memory_total_bytes", "gauge", "Memory of the training device.", ("run", "device")),
        Family("esper_process_resident_bytes", "gauge", "Resident memory of the training process.", RUN),
        Family("esper_gpu_present", "gauge", "1 when the run trains on a GPU that NVML can read.", ("run", "device")),
        Family("esper_gpu_utilization_ratio", "gauge", "GPU utilisation (NVML).", ("run", "device")),
        Family("esper_gpu_temperature_celsius", "gauge", "GPU temperature (NVML).", ("run", "device")),
    ),
    *_families(
        "seeds",
        Family(
            "esper_seed_stage",
            "gauge",
            "1 for the slot's current lifecycle stage, 0 for the stages it has been in before.",
            ("run", "slot", "stage"),
        ),
        Family("esper_seeds", "gauge", "Slots in each lifecycle stage.", ("run", "stage")),
        Family("esper_seed_alpha", "gauge", "The seed's blending alpha (0 to 1).", ("run", "slot", "blueprint")),
        Family("esper_seed_parameters", "gauge", "Parameters of the seed.", ("run", "slot", "blueprint")),
        Family(
            "esper_seed_contribution",
            "gauge",
            "Counterfactual contribution: validation loss without the seed minus with it (positive helps).",
            ("run", "slot", "blueprint"),
        ),
        Family(
            "esper_seed_contribution_stderr",
            "gauge",
            "Standard error of the contribution.",
            ("run", "slot", "blueprint"),
        ),
        Family(
            "esper_seed_isolation_violations_total",
            "counter",
            "Failed gradient-isolation checks on the slot.",
            ("run", "slot"),
        ),
        Family("esper_seed_transitions_total", "counter", "Lifecycle transitions, by target stage.", ("run", "stage")),
        Family("esper_germinations_total", "counter", "Seeds germinated.", ("run", "blueprint")),
        Family("esper_fossilizations_total", "counter", "Seeds fossilized (made permanent).", ("run", "blueprint")),
        Family(
            "esper_culls_total",
            "counter",
            "Seeds culled, by cause (gate, watchdog, commanded, emergency) and the gate that failed (none when none).",
            ("run", "blueprint", "cause", "gate"),
        ),
        Family("esper_gate_failures_total", "counter", "Failed gate checks.", ("run", "gate", "check")),
        Family("esper_field_reports_total", "counter", "Field reports closed, by outcome.", ("run", "outcome")),
    ),
    *_families(
        "decisions",
        Family(
            "esper_decisions_total",
            "counter",
            "Decisions, by operation and the risk rule that shaped them (none when none did).",
            ("run", "operation", "risk"),
        ),
        Family(
            "esper_decision_latency_seconds",
            "histogram",
            "Time the controller took to decide, one observation per decision point.",
            RUN,
            LATENCY_BUCKETS,
        ),
        Family("esper_decisions_over_budget_total", "counter", "Decisions over the controller's budget.", RUN),
        Family(
            "esper_risk_rule_firings_total",
            "counter",
            "Risk-engine rules that fired, by rule and action.",
            ("run", "rule", "action"),
        ),
        Family(
            "esper_conservative_mode_entries_total",
            "counter",
            "Times a subsystem entered conservative mode.",
            ("run", "subsystem"),
        ),
        Family("esper_policy_errors_total", "counter", "Decisions where the policy raised.", RUN),
        Family("esper_field_reports_open", "gauge", "Commands still waiting for their field report.", RUN),
    ),
    *_families(
        "bus",
        Family("esper_oona_published_total", "counter", "Messages published on Oona.", ("run", "source")),
        Family("esper_oona_consumed_total", "counter", "Messages delivered to a consumer.", ("run", "source")),
        Family("esper_oona_retries_total", "counter", "Messages handed back for another attempt.", ("run", "source")),
        Family(
            "esper_oona_dead_letters_total", "counter", "Messages moved to the dead-letter stream.", ("run", "source")
        ),
        Family(
            "esper_oona_backpressure_drops_total",
            "counter",
            "Messages dropped because their stream was over its backpressure limit.",
            ("run", "source"),
        ),
        Family(
            "esper_oona_rejected_total",
            "counter",
            "Entries dropped on reading: a bad signature or a malformed envelope.",
            ("run", "source", "reason"),
        ),
        Family("esper_oona_stream_length", "gauge", "Entries in each Oona stream.", ("run", "source", "stream")),
    ),
    *_families(
        "urza",
        Family(
            "esper_urza_fetch_latency_seconds",
            "histogram",
            "Blueprint fetch latency, by where the module came from (memory, disk, built).",
            ("run", "source"),
            LATENCY_BUCKETS,
        ),
        Family("esper_urza_fetches_total", "counter", "Blueprint fetches, by source.", ("run", "source")),
        Family("esper_urza_fetches_over_budget_total", "counter", "Fetches over their latency budget.", RUN),
        Family("esper_urza_cache_entries", "gauge", "Modules in Urza's memory cache.", RUN),
        Family("esper_urza_cache_evictions_total", "counter", "Modules evicted from the memory cache.", RUN),
        Family("esper_urza_build_failures_total", "counter", "Blueprint builds that raised.", RUN),
        Family("esper_urza_integrity_failures_total", "counter", "Artifacts that failed their checksum.", RUN),
    ),
    *_families(
        "services",
        Family("esper_service_up", "gauge", "1 while a Weatherlight worker runs.", ("service",)),
        Family("esper_service_restarts_total", "counter", "Restarts of a Weatherlight worker.", ("service",)),
        Family("esper_service_backing_off", "gauge", "1 while a worker waits to be restarted.", ("service",)),
        Family("esper_weatherlight_operational", "gauge", "1 while every Weatherlight worker is running.", ()),
        Family("esper_weatherlight_uptime_seconds", "gauge", "Seconds since Weatherlight started.", ()),
    ),
    *_families(
        "alerts",
        Family("esper_alerts_firing", "gauge", "1 while the alert fires.", ("alert", "severity", "run", "slot")),
        Family("esper_alert_transitions_total", "counter", "Alerts fired and resolved.", ("alert", "state")),
        Family(
            "esper_slo_error_budget_remaining_ratio",
            "gauge",
            "Share of the SLO's error budget left in its window.",
            ("slo",),
        ),
        Family(
            "esper_slo_burn_rate",
            "gauge",
            "How fast the SLO's error budget burns (1: exactly on budget).",
            ("slo", "window"),
        ),
        Family("esper_slo_events_total", "counter", "Events the SLO counted, good or bad.", ("slo", "result")),
    ),
    *_families(
        "nissa",
        Family("esper_nissa_ingested_total", "counter", "Messages Nissa ingested, by kind.", ("kind",)),
        Family("esper_nissa_runs_tracked", "gauge", "Runs whose series Nissa keeps.", ()),
    ),
)

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}
