"""Nissa's alert rules: what each watches, when it fires, how serious it is, and the same rule in PromQL.

A rule reads one exported family (:mod:`esper_nissa.prometheus.families`), series by series. Nissa evaluates it at
each *heartbeat*: a run's rules at each of its decision points (Tolaria's decision-point packet), the services' rules
at each Weatherlight report. A ``delta`` rule compares what a counter added since the previous heartbeat; the others
compare the value. A rule fires once its condition has held for ``for_samples`` heartbeats in a row (and
``for_seconds``, when set), and resolves at the first heartbeat where it no longer holds.

Each rule also carries its PromQL (``expr``, ``prometheus_for``), so that the rules file :func:`prometheus_rules`
writes says the same to a Prometheus server (``promtool check rules`` accepts it; a test runs it).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from esper_nissa.prometheus.families import BY_NAME

Severity = Literal["info", "warning", "critical"]
Comparison = Literal[">", ">=", "<", "<=", "=="]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


def _known_family(_instance: object, _attribute: object, family: str) -> None:
    if family not in BY_NAME:
        raise ValueError(f"alert rules watch an exported family; {family!r} is not one (see docs/nissa.md)")


@attrs.frozen
class AlertRule:
    #: Unique, CamelCase as Prometheus alert names are.
    name: str
    family: str = attrs.field(validator=_known_family)
    comparison: Comparison
    threshold: float
    summary: str
    severity: Severity = "warning"
    #: Compare what the counter added since the previous heartbeat (a counter family) instead of its value.
    delta: bool = False
    for_samples: int = 1
    for_seconds: float = 0.0
    #: The same condition in PromQL, and how long it must hold there.
    expr: str = ""
    prometheus_for: str = "0m"
    #: Only the series whose labels have these values (e.g. one risk rule's firings).
    match: Mapping[str, str] = attrs.field(factory=dict)
    #: The emergency level (``NOTICE``, ``ELEVATED``, ``CONSERVATIVE``, ``HALT``) an alert of this rule raises on the
    #: bus's emergency stream when it fires; empty: none.
    emergency: str = ""

    def holds(self, value: float) -> bool:
        return COMPARE[self.comparison](value, self.threshold)

    @property
    def scope(self) -> str:
        """``run`` for rules on a run's series (evaluated at its decision points), ``service`` otherwise."""
        return "run" if "run" in BY_NAME[self.family].labels else "service"


#: The default rules: the prototype's (training latency, isolation violations, Kasmina or Tamiyo over budget, Oona
#: queue depth and dead letters, service restarts) with Esper's metric names, and a few the emergency protocol needs.
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        name="EsperSeedIsolationViolation",
        family="esper_seed_isolation_violations_total",
        comparison=">",
        threshold=0,
        delta=True,
        severity="critical",
        summary="a seed broke gradient isolation in slot {slot} of run {run}; Kasmina culled it",
        expr="increase(esper_seed_isolation_violations_total[10m]) > 0",
    ),
    AlertRule(
        name="EsperDecisionOverheadHigh",
        family="esper_decision_overhead_ratio",
        comparison=">",
        threshold=0.5,
        for_samples=3,
        summary="run {run}: the decision-point hook took {value:.0%} of the epoch's training time",
        expr="esper_decision_overhead_ratio > 0.5",
        prometheus_for="15m",
    ),
    AlertRule(
        name="EsperDecisionOverBudget",
        family="esper_decisions_over_budget_total",
        comparison=">",
        threshold=0,
        delta=True,
        for_samples=3,
        summary="run {run}: the controller ran over its decision budget at 3 decision points in a row",
        expr="increase(esper_decisions_over_budget_total[15m]) >= 3",
    ),
    AlertRule(
        name="EsperKasminaOverBudget",
        family="esper_risk_rule_firings_total",
        match={"rule": "kasmina_apply_slow"},
        comparison=">",
        threshold=0,
        delta=True,
        for_samples=2,
        summary="run {run}: Kasmina took longer than its budget to apply commands at 2 decision points in a row",
        expr='increase(esper_risk_rule_firings_total{rule="kasmina_apply_slow"}[15m]) >= 2',
    ),
    AlertRule(
        name="EsperTrainingStepSlow",
        family="esper_risk_rule_firings_total",
        match={"rule": "step_latency_high"},
        comparison=">",
        threshold=0,
        delta=True,
        for_samples=3,
        summary="run {run}: the training step ran over its latency budget at 3 decision points in a row",
        expr='increase(esper_risk_rule_firings_total{rule="step_latency_high"}[15m]) >= 3',
    ),
    AlertRule(
        name="EsperConservativeMode",
        family="esper_conservative_mode",
        comparison=">",
        threshold=0,
        for_samples=3,
        summary="run {run}: {subsystem} has been in conservative mode for 3 decision points",
        expr="esper_conservative_mode > 0",
        prometheus_for="10m",
    ),
    AlertRule(
        name="EsperRollback",
        family="esper_rollbacks_total",
        comparison=">",
        threshold=0,
        delta=True,
        summary="run {run} rolled back to its last good state",
        expr="increase(esper_rollbacks_total[10m]) > 0",
    ),
    AlertRule(
        name="EsperUrzaFetchOverBudget",
        family="esper_urza_fetches_over_budget_total",
        comparison=">",
        threshold=0,
        delta=True,
        for_samples=2,
        summary="run {run}: blueprint fetches over their latency budget",
        expr="increase(esper_urza_fetches_over_budget_total[10m]) > 1",
    ),
    AlertRule(
        name="EsperOonaQueueDepthHigh",
        family="esper_oona_stream_length",
        comparison=">",
        threshold=4000,
        for_samples=2,
        summary="Oona stream {stream} holds {value:.0f} entries (seen by {source})",
        expr="esper_oona_stream_length > 4000",
        prometheus_for="2m",
    ),
    AlertRule(
        name="EsperOonaDeadLetters",
        family="esper_oona_dead_letters_total",
        comparison=">",
        threshold=0,
        delta=True,
        summary="Oona dead-lettered messages (seen by {source})",
        expr="increase(esper_oona_dead_letters_total[10m]) > 0",
    ),
    AlertRule(
        name="EsperServiceRestarted",
        family="esper_service_restarts_total",
        comparison=">",
        threshold=0,
        delta=True,
        summary="Weatherlight restarted the {service} service",
        expr="increase(esper_service_restarts_total[10m]) > 0",
    ),
    AlertRule(
        name="EsperServiceDown",
        family="esper_service_up",
        comparison="<",
        threshold=1,
        for_samples=2,
        severity="critical",
        summary="the {service} service is not running",
        expr="esper_service_up < 1",
        prometheus_for="2m",
        emergency="NOTICE",
    ),
)


def check_rules(rules: tuple[AlertRule, ...]) -> None:
    """Refuse two rules of one name, and a ``delta`` rule on a family that is not a counter."""
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"two alert rules are named {rule.name!r}; give each its own name")
        seen.add(rule.name)
        if rule.delta and BY_NAME[rule.family].kind != "counter":
            raise ValueError(f"alert rule {rule.name}: delta = true needs a counter family, {rule.family} is not one")
