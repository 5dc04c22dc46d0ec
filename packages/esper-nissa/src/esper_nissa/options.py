"""Nissa's configuration sections: ``[nissa.jsonl]`` (the JSON-lines sink) and ``[nissa.report]`` (the run report).

The selector ``nissa.sinks`` itself belongs to core (:class:`esper_core.plugins.selectors.NissaSelection`).
"""

from __future__ import annotations

from typing import Any

import attrs

from esper_core.config import section


def _not_blank(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError(f'{attribute.name} cannot be empty: give a file name, e.g. "telemetry.jsonl"')


@section("nissa.jsonl")
@attrs.frozen
class JsonlOptions:
    #: The file the ``jsonl`` sink appends to: relative to the run directory, or absolute.
    path: str = attrs.field(default="telemetry.jsonl", validator=_not_blank)
    #: fsync the file at every flush (Tolaria flushes the sinks at each decision point), so a power cut loses at
    #: most the packets of the last decision point. Off: the data still reaches the OS at once, only later the disk.
    fsync: bool = True


@section("nissa.report")
@attrs.frozen
class ReportOptions:
    #: Write the run report (plots and summary, ``<run dir>/report/``) when a run finishes.
    automatic: bool = True


def _address(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value and not _split_address(value):
        raise ValueError(
            f'{attribute.name} must be HOST:PORT (e.g. "127.0.0.1:9464"; port 0 picks a free one), or empty; '
            f"got {value!r}"
        )


def _split_address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


def split_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> ``("127.0.0.1", 9464)`` (validated by the options already)."""
    parts = _split_address(value)
    if parts is None:
        raise ValueError(f"not HOST:PORT: {value!r}")
    return parts


@section("nissa.prometheus")
@attrs.frozen
class PrometheusOptions:
    #: Where ``esper run`` serves ``/metrics``, ``/healthz`` and ``/metrics/summary`` while it trains (HOST:PORT,
    #: loopback by default; port 0 picks a free port, printed at start). Empty: no endpoint (the series are still kept
    #: for the alerts, and a Prometheus can scrape ``esper serve nissa`` instead).
    address: str = attrs.field(default="", validator=_address)
    #: Runs whose series are kept; the run heard from least recently is forgotten first.
    max_runs: int = attrs.field(default=50, validator=attrs.validators.ge(1))


_ROUTES = ("log", "webhook")


def _routes(_instance: object, attribute: attrs.Attribute[Any], value: list[str]) -> None:
    unknown = [route for route in value if route not in _ROUTES]
    if unknown:
        raise ValueError(f"unknown alert route {unknown[0]!r}; {attribute.name} may hold {', '.join(_ROUTES)}")


_LEVELS = ("", "NOTICE", "ELEVATED", "CONSERVATIVE", "HALT")


def _levels(_instance: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for rule, level in value.items():
        if level not in _LEVELS:
            raise ValueError(
                f"{attribute.name}.{rule} = {level!r} is not an emergency level; use one of "
                f"{', '.join(repr(name) for name in _LEVELS)}"
            )


@section("nissa.alerts")
@attrs.frozen
class AlertOptions:
    #: Evaluate the alert rules (docs/nissa.md, "Alerts") in the prometheus sink and in ``esper serve nissa``.
    enabled: bool = True
    #: Where alert transitions go besides the bus: "log" (one line each), "webhook" (a JSON POST to ``webhook_url``).
    routes: list[str] = attrs.field(factory=lambda: ["log"], validator=_routes)
    webhook_url: str = ""
    #: Raise a rule's emergency level (EsperSeedIsolationViolation: NOTICE) on the bus's emergency stream when it
    #: fires; Tolaria's emergency ladder answers it (docs/safety.md).
    raise_emergencies: bool = True
    #: Rules to leave out, by name.
    disabled: list[str] = attrs.Factory(list)
    #: Thresholds to change, by rule name, e.g. {EsperOonaQueueDepthHigh = 10000}.
    thresholds: dict[str, float] = attrs.Factory(dict)
    #: Emergency levels to raise when a rule fires, by rule name (NOTICE, ELEVATED, CONSERVATIVE, HALT; "" for none),
    #: e.g. {EsperDecisionOverBudget = "NOTICE"}. By default only EsperServiceDown raises one (NOTICE, to every run):
    #: Kasmina already raises ELEVATED for an isolation violation inside the run.
    emergencies: dict[str, str] = attrs.field(factory=dict, validator=_levels)


@section("nissa.slo")
@attrs.frozen
class SloOptions:
    #: Decision latency SLO: a decision within this many milliseconds is good.
    decision_latency_ms: float = attrs.field(default=85.0, validator=attrs.validators.gt(0))
    decision_latency_target: float = attrs.field(
        default=0.99, validator=[attrs.validators.gt(0), attrs.validators.lt(1)]
    )
    #: Step overhead SLO: a decision point whose hook took at most this share of the epoch's training is good.
    step_overhead_ratio: float = attrs.field(default=0.25, validator=attrs.validators.gt(0))
    step_overhead_target: float = attrs.field(default=0.95, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    #: Service availability SLO: a Weatherlight report that finds a service running is good.
    availability_target: float = attrs.field(default=0.999, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    #: The window error budgets are counted over.
    window_days: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
