"""Nissa: telemetry sinks, alerts and run reports."""

__version__ = "0.1.0"
