"""Which components a run uses: the selector keys of the plugin points, owned by core so every subsystem reads
the same choice. A plugin may add keys of its own to these sections (sections with one path merge), but the
selectors themselves live here."""

from __future__ import annotations

from typing import Literal

import attrs

from esper_core.config import section

Tier = Literal["SAFE", "EXPERIMENTAL", "HIGH_RISK"]


@section("urza")
@attrs.frozen
class UrzaSelection:
    #: Blueprint catalogs offered to the controller and the seed executor (``esper plugins`` lists them).
    catalogs: list[str] = attrs.Factory(lambda: ["karn"])
    #: The artifact store seeds are fetched from.
    store: str = "urza"
    #: Blueprint tiers a run may germinate. HIGH_RISK blueprints exist to test the safety gates.
    allowed_tiers: list[Tier] = attrs.Factory(lambda: ["SAFE"])


@section("tamiyo")
@attrs.frozen
class TamiyoSelection:
    #: The decision policy the controller consults.
    policy: str = "heuristic"


@section("simic")
@attrs.frozen
class SimicSelection:
    #: The policy Simic trains: a plugin policy satisfying ``esper_core.protocols.TrainablePolicy``.
    policy: str = "learned"
    #: The training algorithm (``esper plugins`` lists them; ``ppo`` is built in, options in ``[simic.train]``).
    trainer: str = "ppo"


@section("nissa")
@attrs.frozen
class NissaSelection:
    #: Telemetry sinks; every one receives every packet.
    sinks: list[str] = attrs.Factory(lambda: ["jsonl"])
