"""Tamiyo's configuration: the controller's keys in ``[tamiyo]`` (beside core's ``tamiyo.policy`` selector), the
risk engine's ``[tamiyo.risk]``, and one section per first-party policy. Every threshold the controller uses is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import not_negative, positive


@section("tamiyo")
@attrs.frozen
class TamiyoOptions:
    """The controller (the core selector ``tamiyo.policy`` names the policy it consults)."""

    #: A decision should take at most this long; a slower one is reported and counts towards conservative mode.
    decision_budget_ms: float = attrs.field(default=50.0, validator=positive)
    #: Decision points after a seed-affecting command before its field report is judged (sooner if the seed is
    #: fossilized or culled).
    observation_window: int = attrs.field(default=3, validator=positive)
    #: A seed counts as a SUCCESS when its counterfactual contribution is at least this (validation loss units).
    success_contribution: float = 0.001
    #: Relative change of validation loss over the window that counts as improvement / regression.
    success_margin: float = attrs.field(default=0.002, validator=not_negative)
    regression_margin: float = attrs.field(default=0.01, validator=not_negative)
    #: Where field reports are appended, relative to the run directory.
    field_report_log: str = "tamiyo/field_reports.log"
    #: A policy store directory to follow (``esper simic publish`` writes one): its live version is loaded into the
    #: policy between two decisions, a rollback included. Empty: none (updates still arrive on Oona's policy stream).
    policy_store: str = ""


def _percent(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """More than 0 and at most 100."""
    if not 0.0 < value <= 100.0:
        raise ValueError(f"{attribute.name} must be more than 0 and at most 100 (100 turns the rule off), got {value}")


@section("tamiyo.risk")
@attrs.frozen
class RiskOptions:
    """The risk engine, applied to every policy's proposal (PROTOTYPE-REFERENCE.md section 6.6, on typed metrics).

    "Pause" turns a growth command into a no-op and enters conservative mode; "downgrade" turns it into a no-op
    only. Culls are never blocked: removing a seed is always allowed.
    """

    #: The policy's own risk estimate (DecisionMetadata.risk_score) at which to pause / downgrade.
    policy_risk_pause: float = 0.98
    policy_risk_downgrade: float = 0.85
    #: Blueprint risk at which to pause (as quarantine) / downgrade; quarantine-only blueprints always pause.
    blueprint_risk_pause: float = 0.8
    blueprint_risk_downgrade: float = 0.6
    #: Loss spike: validation loss rose by more than this fraction of its previous value (pause / downgrade).
    loss_spike_pause: float = attrs.field(default=0.25, validator=not_negative)
    loss_spike_downgrade: float = attrs.field(default=0.1, validator=not_negative)
    #: Latency budgets (ms) of Tolaria's decision hook and training step, and of Kasmina's command application.
    hook_budget_ms: float = 1_000.0
    step_budget_ms: float = 10_000.0
    apply_budget_ms: float = 250.0
    #: Training instability: loss volatility and gradient variance above these downgrade growth.
    max_loss_volatility: float = 0.5
    max_gradient_variance: float = 1e6
    max_gradient_conflict_rate: float = 0.5
    #: Device pressure: less free device memory than this (GB) pauses growth.
    min_free_memory_gb: float = 0.25
    #: Device pressure: a GPU temperature (HardwareContext.temperature_celsius, from NVML) at or above this pauses
    #: growth. 90 °C is about where GPUs start to slow their clocks to cool down (NVML's slowdown threshold lies
    #: near it on data-centre boards), well above what a healthy, cooled GPU reaches under full load: a hotter GPU
    #: is throttled or badly cooled, and a larger model only makes that worse. A value above any real temperature
    #: (1000) turns the rule off.
    max_device_temperature_celsius: float = attrs.field(default=90.0, validator=positive)
    #: CPU pressure: host CPU use (HardwareContext.cpu_utilization_percent) at or above this downgrades growth. 100
    #: (the default) turns the rule off, since training keeps a small machine's CPUs fully busy by design; a
    #: value above 100 is refused.
    max_cpu_percent: float = attrs.field(default=100.0, validator=_percent)
    #: Calm decision points (no rule fired, no over-budget decision) before conservative mode is left.
    conservative_exit_after: int = attrs.field(default=2, validator=positive)


@section("tamiyo.heuristic")
@attrs.frozen
class HeuristicOptions:
    """The ``heuristic`` policy. Epoch counts are decision points (one per epoch by default)."""

    #: No germination before this many decision points.
    warmup_epochs: int = attrs.field(default=2, validator=not_negative)
    #: No germination when fewer decision points than this remain (when the run's length is known): a seed needs
    #: about five to reach FOSSILIZED, and a few more to pay for itself.
    min_remaining_epochs: int = attrs.field(default=6, validator=not_negative)
    #: Validation loss has plateaued when its best value over the last ``plateau_window`` decision points improved
    #: on the best before them by less than ``plateau_threshold`` (relative).
    plateau_window: int = attrs.field(default=2, validator=positive)
    plateau_threshold: float = attrs.field(default=0.01, validator=not_negative)
    #: An underfitting host grows without waiting for a plateau: its training loss (the epoch's mean) was at least
    #: ``underfit_ratio`` times its validation loss at each of the last ``plateau_window`` epoch ends (no
    #: generalization gap: capacity, not data, limits it; 0.95 allows for noise). 0 turns the rule off.
    underfit_ratio: float = attrs.field(default=0.95, validator=not_negative)
    #: Seeds in flight (GERMINATED to PROBATIONARY) at once.
    max_concurrent_seeds: int = attrs.field(default=2, validator=positive)
    #: All seeds together may add at most this fraction of the host's parameters.
    max_added_parameter_fraction: float = attrs.field(default=0.5, validator=not_negative)
    #: TRAINING: blend in once, after at least ``min_training_epochs``, the seed would not hurt at full strength (its
    #: contribution is above ``graft_threshold``, within the tolerance); cull after ``training_patience`` without that.
    #: Straight-through training only warms a seed up; its worth shows once it blends in with real feedback.
    min_training_epochs: int = attrs.field(default=1, validator=positive)
    training_patience: int = attrs.field(default=3, validator=positive)
    graft_threshold: float = 0.0
    #: Blending schedule for germinated seeds.
    blend_schedule: Literal["linear", "cosine", "tanh"] = "tanh"
    #: SHADOWING: move to probation when the contribution is at least ``shadow_threshold``.
    shadow_threshold: float = 0.0
    #: PROBATIONARY: fossilize after ``probation_epochs`` when the contribution is at least ``fossilize_threshold``;
    #: cull after ``probation_epochs + probation_patience`` without that.
    probation_epochs: int = attrs.field(default=1, validator=positive)
    probation_patience: int = attrs.field(default=2, validator=not_negative)
    fossilize_threshold: float = 0.0
    #: Cull a seed in the forward pass whose contribution falls below ``-hurt_threshold``: the tolerance every
    #: threshold above is compared with.
    hurt_threshold: float = attrs.field(default=0.002, validator=not_negative)
    #: ...or this many of the contribution's standard errors (``SeedState.contribution_stderr``), when larger: a seed
    #: is culled, or held back, only when it is clearly below a threshold.
    noise_z: float = attrs.field(default=2.0, validator=not_negative)
    #: Blueprint choice: ids in order of preference (earlier is better), weights of cost (log-distance from a fair
    #: share of the remaining parameter budget) and of risk, and of each blueprint's fossilized minus culled seeds.
    preferred_blueprints: list[str] = attrs.Factory(list)
    cost_weight: float = attrs.field(default=1.0, validator=not_negative)
    risk_weight: float = attrs.field(default=0.5, validator=not_negative)
    history_weight: float = attrs.field(default=0.5, validator=not_negative)
    #: The weight of ln(measured latency ratio): the blueprint's training step over a plain layer's at the slot, from
    #: its safety data sheet (``SeedState.measured_blueprints``; no term without one, as if it cost a plain layer).
    #: Karn's SAFE blueprints measure from 0.6x to 18x (ln -0.5 to 2.9), so at 0.1 the whole span is worth at most
    #: 0.35: it orders close candidates, but never outweighs a step of ``preferred_blueprints`` nor the saliency
    #: (docs/tamiyo.md).
    measured_cost_weight: float = attrs.field(default=0.1, validator=not_negative)
    #: Slot choice: the weight of a slot's saliency (relative to the most salient free slot) against the score of
    #: the best blueprint it can take.
    saliency_weight: float = attrs.field(default=1.0, validator=not_negative)
    #: Blueprints with a ``width`` parameter get the largest width whose parameters fit a fair share of the budget
    #: left (``budget / max_concurrent_seeds``) instead of their default: "share". "default": their default width.
    sizing: Literal["share", "default"] = "share"
    #: One seed may add at most this fraction of the host's parameters: sizing stays under it, and larger blueprints
    #: are not proposed (Kasmina's G0 refuses them: keep it at most ``kasmina.max_seed_parameter_fraction``).
    max_seed_parameter_fraction: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class ScheduledGermination:
    epoch: int
    blueprint: str = ""
    slot: str = ""
    #: Blueprint parameters that replace their defaults, e.g. ``{width = 12}`` (a name the blueprint does not declare
    #: is refused by Kasmina's G0 with the names it knows).
    parameters: dict[str, float] = attrs.Factory(dict)


@section("tamiyo.fixed-schedule")
@attrs.frozen
class FixedScheduleOptions:
    """The ``fixed-schedule`` baseline: germinate at fixed epochs, advance as soon as allowed, fossilize after
    ``probation_epochs`` whatever the seed's contribution. A blank blueprint is the first offered one that fits the
    slot; a blank slot is the shallowest DORMANT slot."""

    germinations: list[ScheduledGermination] = attrs.Factory(lambda: [ScheduledGermination(epoch=3)])
    probation_epochs: int = attrs.field(default=1, validator=positive)
    blend_schedule: Literal["linear", "cosine", "tanh"] = "tanh"


@section("tamiyo.service")
@attrs.frozen
class TamiyoServiceOptions:
    #: Where each run's field-report log goes (``<data_dir>/<training run id>/``).
    data_dir: Path = Path("var/tamiyo")
    #: Runs served at once; the controller of the run seen longest ago is closed beyond this.
    max_runs: int = 64
    #: Decisions remembered per service, to answer a redelivered state packet with the same command.
    remembered_decisions: int = 1024
    #: Seconds between telemetry packets about the service (decisions served, runs).
    telemetry_interval_s: float = 10.0
