"""Registers Nissa with Esper: the ``jsonl`` telemetry sink (``[nissa.jsonl]``), the ``esper report`` command, and
the run report written when a run finishes (``[nissa.report]``).

Imported whenever Esper starts, so it imports nothing heavy: matplotlib and protobuf's JSON mapping load only when a
report is made or a sink is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from esper_core import hookimpl
from esper_core.errors import ConfigError
from esper_core.plugins import BuildContext, CliCommandSpec, RunInfo, ServiceSpec, TelemetrySinkSpec
from esper_nissa.alerts.cli import HELP as NISSA_HELP
from esper_nissa.alerts.cli import configure_nissa, run_nissa
from esper_nissa.cli import configure_report, run_report
from esper_nissa.elastic.options import ElasticsearchOptions
from esper_nissa.options import AlertOptions, JsonlOptions, PrometheusOptions, ReportOptions, SloOptions

logger = logging.getLogger(__name__)


def build_jsonl_sink(context: BuildContext) -> Any:
    """The ``jsonl`` sink for one run: ``nissa.jsonl.path`` inside the run directory, or that absolute path."""
    from esper_nissa.sinks.jsonl import JsonlSink

    options: JsonlOptions = context.options if context.options is not None else JsonlOptions()
    path = Path(options.path).expanduser()
    if not path.is_absolute():
        if context.run_dir is None:
            raise ConfigError(
                f"the jsonl telemetry sink writes {options.path!r} inside the run directory, and there is no run "
                "directory here: set nissa.jsonl.path to an absolute path, or build the sink with run_dir=..."
            )
        path = Path(context.run_dir) / path
    return JsonlSink(path, fsync=options.fsync)


@hookimpl
def esper_nissa_telemetry_sinks() -> Iterator[TelemetrySinkSpec]:
    yield TelemetrySinkSpec(
        name="jsonl",
        factory=build_jsonl_sink,
        options=JsonlOptions,
        description="Every telemetry packet as one JSON line in the run directory (telemetry.jsonl).",
    )
    yield TelemetrySinkSpec(
        name="prometheus",
        factory=_build_prometheus_sink,
        options=PrometheusOptions,
        description="Prometheus series, alerts and SLOs from the telemetry; /metrics at nissa.prometheus.address.",
    )
    yield TelemetrySinkSpec(
        name="elasticsearch",
        factory=_build_elasticsearch_sink,
        options=ElasticsearchOptions,
        description="Every telemetry packet as documents in daily Elasticsearch indices (bulk, at least once).",
    )


def _build_elasticsearch_sink(context: BuildContext) -> Any:
    from esper_nissa.elastic import build_elasticsearch_sink

    return build_elasticsearch_sink(context)


def _build_prometheus_sink(context: BuildContext) -> Any:
    from esper_nissa.prometheus.sink import build_prometheus_sink

    return build_prometheus_sink(context)


def build_nissa_service(context: BuildContext) -> Any:
    from esper_nissa.ingest import Nissa
    from esper_nissa.service import NissaService, NissaServiceOptions

    if context.config is None or context.bus is None:
        raise ConfigError("the nissa service needs the configuration and the bus it was started with")
    options = context.options if isinstance(context.options, NissaServiceOptions) else NissaServiceOptions()
    config, bus = context.config, context.bus
    nissa = Nissa(
        prometheus=config.get(PrometheusOptions),
        alerts=config.get(AlertOptions),
        slo=config.get(SloOptions),
        publish=lambda message, priority: bus.publish(message, priority=priority),
    )
    return NissaService(bus, nissa, options)


@hookimpl
def esper_weatherlight_services() -> Iterator[ServiceSpec]:
    from esper_nissa.service import NissaServiceOptions

    yield ServiceSpec(
        name="nissa",
        factory=build_nissa_service,
        options=NissaServiceOptions,
        description="Telemetry of every trainer and service on the bus into Prometheus series, alerts and SLOs; "
        "/metrics, /healthz and /metrics/summary on nissa.service.address (docs/nissa.md).",
    )


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    yield ReportOptions
    yield AlertOptions
    yield SloOptions


@hookimpl
def esper_core_cli_commands() -> Iterator[CliCommandSpec]:
    yield CliCommandSpec(
        name="report",
        help="write a run's report (plots and summary) into RUN_DIR/report",
        configure=configure_report,
        run=run_report,
    )
    yield CliCommandSpec(name="nissa", help=NISSA_HELP, configure=configure_nissa, run=run_nissa)


def _automatic(run: RunInfo) -> bool:
    try:
        return run.config.get(ReportOptions).automatic
    except (KeyError, AttributeError):  # a configuration loaded without Nissa's sections: the default
        return ReportOptions().automatic


@hookimpl
def esper_tolaria_run_finished(run: RunInfo, summary: Mapping[str, float]) -> None:
    """Write the run's report into ``<run_dir>/report``. A report that fails is a warning, never a failed run."""
    if not _automatic(run):
        return
    try:
        from esper_nissa.report import write_report

        write_report(run.run_dir)
    except Exception as error:  # noqa: BLE001 - the run's results are safe already; a report is never worth a crash
        logger.warning(
            "esper-nissa: no report for run %s in %s: %s: %s (make it later with `esper report %s`)",
            run.run_id,
            run.run_dir,
            type(error).__name__,
            error,
            run.run_dir,
        )
