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
