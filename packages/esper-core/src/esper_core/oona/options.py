"""The ``[oona]`` configuration section: backend, stream names, retries, routing and retention."""

from __future__ import annotations

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative


@attrs.frozen
class StreamNames:
    """One stream per message kind (``[oona.streams]``)."""

    normal: str = "oona.normal"
    emergency: str = "oona.emergency"
    telemetry: str = "oona.telemetry"
    policy: str = "oona.policy"
    kernel_requests: str = "oona.kernels.requests"
    kernel_ready: str = "oona.kernels.ready"
    kernel_errors: str = "oona.kernels.errors"
    dead_letter: str = "oona.deadletter"
    #: Remote decisions: training runs' state packets and command results to ``esper serve tamiyo``...
    decisions: str = "oona.tamiyo.decisions"
    #: ...and its signed commands and field reports back.
    commands: str = "oona.tamiyo.commands"
    #: Simic's ground runs for collection workers (``esper serve simic-worker``)...
    simic_jobs: str = "oona.simic.jobs"
    #: ...and their episodes back.
    simic_results: str = "oona.simic.results"
    #: Run records mirrored entry by entry (``tolaria.publish_record``), for learners elsewhere.
    record: str = "oona.tolaria.record"

    def all(self) -> list[str]:
        return [getattr(self, field.name) for field in attrs.fields(StreamNames)]

    @classmethod
    def prefixed(cls, prefix: str) -> StreamNames:
        """Every stream named ``<prefix>.<key>`` (``t1.normal``, ..., ``t1.commands``): streams of one's own on a
        shared server, for a test or a benchmark. Built from the class's fields, so a stream added later is
        prefixed too and can never leak onto the default names."""
        if not prefix or prefix != prefix.strip():
            raise ValueError(f"a stream prefix must be non-empty text without surrounding spaces, got {prefix!r}")
        return cls(**{field.name: f"{prefix}.{field.name}" for field in attrs.fields(cls)})

    def as_overrides(self) -> list[str]:
        """These names as configuration overrides (``oona.streams.<key>=<name>``, one per stream), for
        ``Registry.load_config(overrides=...)`` or ``--set`` on the command line of another process."""
        return [f"oona.streams.{field.name}={getattr(self, field.name)}" for field in attrs.fields(StreamNames)]


@section("oona")
@attrs.frozen
class OonaOptions:
    #: ``"memory"`` (in-process), or a URL whose scheme a backend plugin declares (``"redis://127.0.0.1:6379/0"``).
    backend: str = "memory"
    streams: StreamNames = StreamNames()
    #: Streams are trimmed to about this many entries on publish.
    max_stream_length: int = attrs.field(default=10_000, validator=at_least(1))
    #: A delivered entry not acknowledged for this long is redelivered to another consumer.
    claim_idle_ms: int = attrs.field(default=60_000, validator=at_least(1))
    #: Delivery attempts before a message goes to the dead-letter stream.
    max_attempts: int = attrs.field(default=5, validator=at_least(1))
    #: Entries older than this are trimmed by housekeeping (0 keeps them until max_stream_length).
    message_ttl_ms: int = attrs.field(default=900_000, validator=not_negative)
    #: HIGH and CRITICAL messages per minute allowed onto the emergency stream; the rest take their normal route.
    emergency_max_per_minute: int = attrs.field(default=120, validator=at_least(1))
    #: At this depth of its stream a normal-priority message is rerouted to the emergency stream (0 disables).
    reroute_depth: int = attrs.field(default=0, validator=not_negative)
    #: At this depth a low or normal priority message is dropped and counted (0 disables).
    drop_depth: int = attrs.field(default=0, validator=not_negative)
