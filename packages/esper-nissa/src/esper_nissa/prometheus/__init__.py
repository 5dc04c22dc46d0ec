"""Nissa's Prometheus side: the metric families (:mod:`.families`), the store behind them (:mod:`.series`), the
mapping from telemetry packets (:mod:`.exporter`) and the HTTP endpoint (:mod:`.http`)."""

from esper_nissa.prometheus.exporter import PrometheusExporter
from esper_nissa.prometheus.families import FAMILIES, Family
from esper_nissa.prometheus.series import SeriesStore

__all__ = ["FAMILIES", "Family", "PrometheusExporter", "SeriesStore"]
