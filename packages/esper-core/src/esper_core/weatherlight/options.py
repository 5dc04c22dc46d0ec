"""The ``[weatherlight]`` configuration section: which services to run, restart backoff, health and shutdown."""

from __future__ import annotations

import attrs

from esper_core.config import section
from esper_core.config.validators import fraction, positive


@section("weatherlight")
@attrs.frozen
class WeatherlightOptions:
    #: Services ``esper serve`` runs when none are named on its command line (``esper plugins`` lists them).
    services: list[str] = attrs.Factory(list)
    #: The first restart of a crashed service waits this long; each further consecutive crash doubles the wait...
    backoff_initial_s: float = attrs.field(default=1.0, validator=positive)
    #: ... up to this cap ...
    backoff_max_s: float = attrs.field(default=30.0, validator=positive)
    #: ... plus a random jitter of up to this fraction of the wait (0.25: up to 25 % longer).
    backoff_jitter: float = attrs.field(default=0.25, validator=fraction)
    #: A service that ran this long before crashing starts its backoff again from ``backoff_initial_s``.
    backoff_reset_after_s: float = attrs.field(default=60.0, validator=positive)
    #: Seconds between health telemetry packets (``weatherlight.*`` metrics, ``system_mode`` indicator).
    health_interval_s: float = attrs.field(default=10.0, validator=positive)
    #: Seconds between bus housekeeping passes (trimming entries older than ``oona.message_ttl_ms``).
    housekeeping_interval_s: float = attrs.field(default=60.0, validator=positive)
    #: On SIGINT/SIGTERM, seconds to wait for the services to return before giving up on them.
    shutdown_timeout_s: float = attrs.field(default=15.0, validator=positive)
    #: Consumer group of Weatherlight's own bus client (services get a group named after themselves).
    group: str = "weatherlight"
