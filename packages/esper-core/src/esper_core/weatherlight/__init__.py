"""Weatherlight: runs Esper's long-lived services (``esper serve NAME ...``) in one supervised process.

- :mod:`~esper_core.weatherlight.preflight`: every dependency checked before anything starts, all problems at once.
- :mod:`~esper_core.weatherlight.supervisor`: worker threads, restart with exponential backoff and jitter, health
  telemetry (``system_mode`` = operational / degraded), bounded clean shutdown.
- :mod:`~esper_core.weatherlight.assembly`: one bus backend per process, one Oona client per service.
"""

from esper_core.oona.shared import SharedBackend
from esper_core.weatherlight.assembly import build_weatherlight
from esper_core.weatherlight.options import WeatherlightOptions
from esper_core.weatherlight.preflight import PreflightError, Prepared, preflight
from esper_core.weatherlight.supervisor import (
    DEGRADED,
    OPERATIONAL,
    HealthSummary,
    Weatherlight,
    WorkerStatus,
    backoff_delay,
)

__all__ = [
    "DEGRADED",
    "OPERATIONAL",
    "HealthSummary",
    "PreflightError",
    "Prepared",
    "SharedBackend",
    "Weatherlight",
    "WeatherlightOptions",
    "WorkerStatus",
    "backoff_delay",
    "build_weatherlight",
    "preflight",
]
