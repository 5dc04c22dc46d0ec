"""Configuration of the Urza artifact library and of Tezzeret, its artifact builder.

Urza's keys live in ``[urza]`` next to core's selectors (``catalogs``, ``store``, ``allowed_tiers``, owned by
:mod:`esper_core.plugins.selectors`); Tezzeret's in ``[urza.tezzeret]``::

    [urza]
    root = "/var/esper/urza"      # default: <run directory>/urza
    cache_size = 128
    fetch_budget_ms = 10.0

    [urza.tezzeret]
    compile = false

    [urza.urabrask]
    rate_on_first_use = true
    first_use_budget_s = 30.0

``[urza.prefetch]`` configures the ``urza-prefetch`` store, which asks ``esper serve urza`` for artifacts.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from esper_core.config import section
from esper_core.config.validators import not_negative, positive


@attrs.frozen
class TezzeretOptions:
    """How Tezzeret checks a freshly built blueprint module before it becomes an artifact."""

    #: Batch size of the random probe input.
    probe_batch: int = attrs.field(default=2, validator=positive)
    #: Timed forward passes after one warm-up (fewer when a forward is slower than 20 ms).
    latency_repeats: int = attrs.field(default=5, validator=positive)
    #: Refuse modules whose median forward takes longer than this (milliseconds); unset: measure, never refuse.
    max_forward_ms: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    #: Refuse modules whose initial output RMS exceeds this fraction of the probe input's RMS (seeds must start
    #: near zero so that grafting never jolts the host).
    max_initial_output_ratio: float = attrs.field(default=1e-3, validator=not_negative)
    #: Compile the module with ``torch.compile`` (checked against eager; falls back to eager on failure).
    #: Off by default: on a CPU compiling costs seconds and gains little for modules this small.
    compile: bool = False
    #: The ``torch.compile`` backend ("inductor"; "eager" or "aot_eager" to test the path cheaply).
    compile_backend: str = "inductor"


@attrs.frozen
class UrabraskOptions:
    """Rating blueprints on first use (``[urza.urabrask]``): the safety data sheets Tamiyo's risk engine reads."""

    #: Measure a blueprint the first time the controller asks about it at a slot of this run, and keep the signed
    #: sheet under ``<urza.root>/sheets`` for later runs. Off: only sheets already stored are used.
    rate_on_first_use: bool = True
    #: Seconds of measuring one run may spend, all first uses together; past it, blueprints without a stored
    #: sheet are judged by their declared risk (so a run never stalls on a large catalog).
    first_use_budget_s: float = attrs.field(default=30.0, validator=not_negative)


@section("urza")
@attrs.frozen
class UrzaOptions:
    """The artifact library. Core's ``urza.catalogs`` / ``urza.store`` / ``urza.allowed_tiers`` sit beside these."""

    #: Library directory (SQLite catalog, journal, artifact files). Unset: ``<run directory>/urza``.
    root: Path | None = None
    #: Artifacts kept loaded in memory (least recently used evicted first).
    cache_size: int = attrs.field(default=128, validator=positive)
    #: Latency budget of a fetch served from memory or disk; slower fetches are reported (``timeout_urza``).
    fetch_budget_ms: float = attrs.field(default=10.0, validator=positive)
    #: Latency budget of a fetch that had to build the artifact (Tezzeret's probes and the durable save included).
    build_budget_ms: float = attrs.field(default=2000.0, validator=positive)
    #: Re-hash every artifact file when the library opens, dropping rows whose file is missing or altered.
    verify_on_open: bool = True
    tezzeret: TezzeretOptions = attrs.Factory(TezzeretOptions)
    urabrask: UrabraskOptions = attrs.Factory(UrabraskOptions)


@section("urza.prefetch")
@attrs.frozen
class PrefetchOptions:
    """The ``urza-prefetch`` store (``urza.store = "urza-prefetch"``); it shares ``urza.root`` with the service."""

    #: Seconds a fetch waits for ``esper serve urza`` to answer (a build on a miss included).
    timeout_s: float = attrs.field(default=30.0, validator=positive)
