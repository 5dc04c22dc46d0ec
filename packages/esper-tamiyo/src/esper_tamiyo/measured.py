"""What Tamiyo's policies see of Urabrask's measurements: each slot's ``SeedState.measured_blueprints``.

The packet Tolaria builds leaves ``measured_blueprints`` empty. Before its policy decides, the controller fills a copy
of it (:meth:`MeasuredSheets.fill`): for every slot, one :class:`~esper_core.leyline.MeasuredBlueprint` per offered
blueprint that fits the slot and has a known safety data sheet at the slot's shape (risk score, hazard band,
handling, latency over a plain layer's, counted FLOPs), sorted by id. Nothing is ever measured for this: a blueprint
without a sheet is simply left out, and is rated only where it always was, when the risk engine judges a proposal of
it (``urza.urabrask.rate_on_first_use``).

Which sheets are known, per (blueprint, slot shape), and so what a policy can see:

- the first time the pair is asked about in a run, the sheet the store already holds, if any
  (:class:`esper_core.safety.StoredSheetSource`: read, never measured);
- from then on, that answer, until the risk engine obtains a sheet of the pair (rated on first use or read, through
  :meth:`MeasuredSheets.safety_sheet`, which wraps the risk engine's source); the next decision point shows it.

So the policy's view depends only on what was stored when the run first asked and on the run's own decisions: a
sheet that another process stores meanwhile changes nothing, and a resumed run sees what the uninterrupted run saw
(the pairs known to have no sheet are in the controller's checkpointed state; a sheet the interrupted run rated after
its checkpoint appears again only when the risk engine asks for it again). Sheets are immutable per artifact key, so
each is read once and kept in memory as its summary.

The summaries reach the record through the command: the controller writes what it filled into the signed command's
``tamiyo.measured_blueprints`` annotation, and :func:`esper_core.leyline.annotations.as_decided` turns a recorded
packet and command back into the packet the policy saw (Simic re-encodes that one).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from esper_core.leyline import (
    BSDS,
    BlueprintDescriptor,
    MeasuredBlueprint,
    SlotKind,
    SystemStatePacket,
    growth,
)
from esper_core.leyline.annotations import measured_blueprints_text
from esper_core.protocols import SlotShape
from esper_core.safety import SafetySheetSource, StoredSheetSource

__all__ = ["FLOPS_PER_SAMPLE", "LATENCY_RATIO", "MeasuredSheets", "log_ratio", "summary"]

log = logging.getLogger(__name__)

#: The sheet's measurements a summary copies (esper_urza.urabrask.sheet.measurements names them ``probe.field``).
LATENCY_RATIO = "timing.slowdown"
FLOPS_PER_SAMPLE = "cost.flops_per_sample"

_Key = tuple[str, SlotShape]


def summary(sheet: BSDS) -> MeasuredBlueprint:
    """What a policy sees of ``sheet`` (see :class:`~esper_core.leyline.MeasuredBlueprint`)."""
    measured = MeasuredBlueprint(
        blueprint_id=sheet.blueprint_id,
        risk_score=sheet.risk_score,
        hazard_band=sheet.hazard_band,
        handling_class=sheet.handling_class,
    )
    measurements = sheet.measurements
    if LATENCY_RATIO in measurements:
        measured.latency_ratio = measurements[LATENCY_RATIO]
    if FLOPS_PER_SAMPLE in measurements:
        measured.flops_per_sample = measurements[FLOPS_PER_SAMPLE]
    return measured


def _key_json(key: _Key) -> list[Any]:
    blueprint_id, slot = key
    return [blueprint_id, int(slot.kind), list(slot.shape), int(slot.read_kind), list(slot.read_shape)]


def _key_of(value: Sequence[Any]) -> _Key:
    blueprint_id, kind, shape, read_kind, read_shape = value
    slot = SlotShape(
        SlotKind.ValueType(int(kind)),
        tuple(int(size) for size in shape),
        read_kind=SlotKind.ValueType(int(read_kind)),
        read_shape=tuple(int(size) for size in read_shape),
    )
    return str(blueprint_id), slot


class MeasuredSheets:
    """The sheets a run's policy may see (see the module), over the risk engine's ``source`` (None: none)."""

    def __init__(self, source: SafetySheetSource | None) -> None:
        self.source = source
        #: The same source, when it can answer without measuring (else nothing is read from a store).
        readable: object = source
        self._stored = readable if isinstance(readable, StoredSheetSource) else None
        #: Summary of each (blueprint, slot shape) asked about; None: no sheet known.
        self._known: dict[_Key, MeasuredBlueprint | None] = {}
        #: Counts the changes to what is known of a pair already asked about (a sheet the risk engine obtained):
        #: the lists below, and the annotation, are valid for one version.
        self._version = 0
        #: The list of each slot shape and offer (blueprint ids), with the version it was made at.
        self._lists: dict[tuple[SlotShape, tuple[str, ...]], tuple[int, list[MeasuredBlueprint]]] = {}
        self._annotation: tuple[Any, str] = (None, "")
        #: The ``tamiyo.measured_blueprints`` annotation of the last :meth:`fill` ("" when it filled nothing).
        self.last_annotation = ""
        #: Milliseconds the last :meth:`fill` spent reading the store (pairs asked about for the first time): a
        #: one-time cost of the run, like rating, that the controller keeps out of the decision's budget.
        self.last_reading_ms = 0.0
        self._warned = False

    # -- the risk engine's source -----------------------------------------------------------------------------
    def safety_sheet(self, blueprint_id: str, slot: SlotShape) -> BSDS | None:
        """The source's answer (rated on first use, or read), remembered: the next decision point shows it."""
        sheet = self.source.safety_sheet(blueprint_id, slot) if self.source is not None else None
        if sheet is not None:
            found = summary(sheet)
            if self._known.get((blueprint_id, slot)) != found:
                self._known[(blueprint_id, slot)] = found
                self._version += 1
        return sheet

    # -- what the policy sees ---------------------------------------------------------------------------------
    def known(self, blueprint_id: str, slot: SlotShape) -> MeasuredBlueprint | None:
        """The summary of the sheet of ``blueprint_id`` at ``slot``, if one is known; never measures."""
        key = (blueprint_id, slot)
        if key in self._known:
            return self._known[key]
        found = None
        if self._stored is not None:
            started = time.perf_counter()
            try:
                sheet = self._stored.stored_sheet(blueprint_id, slot)
            except Exception as error:  # noqa: BLE001 - a store that fails costs the policy a feature, not a decision
                sheet = None
                if not self._warned:
                    self._warned = True
                    log.warning("tamiyo: cannot read stored safety data sheets (%s: %s)", type(error).__name__, error)
            self.last_reading_ms += (time.perf_counter() - started) * 1000.0
            found = summary(sheet) if sheet is not None else None
        self._known[key] = found
        return found

    def fill(self, state: SystemStatePacket, offered: Sequence[BlueprintDescriptor]) -> SystemStatePacket:
        """``state`` as the policy sees it: a copy with each slot's ``measured_blueprints`` filled for ``offered``
        (replacing whatever the packet held), or ``state`` itself when there is nothing to fill or clear.
        :attr:`last_annotation` says what was filled."""
        self.last_reading_ms = 0.0
        self.last_annotation = ""
        if self.source is None:
            return _cleared(state)
        ids = tuple(descriptor.blueprint_id for descriptor in offered)
        filled: list[tuple[int, SlotShape, list[MeasuredBlueprint]]] = []
        for index, seed in enumerate(state.seeds):
            if not seed.slot_shape:
                continue
            shape = SlotShape.of(seed)
            found = self._listed(shape, ids, offered)
            if found:
                filled.append((index, shape, found))
        if not filled:
            return _cleared(state)
        packet = SystemStatePacket()
        packet.CopyFrom(state)
        for seed in packet.seeds:
            del seed.measured_blueprints[:]
        for index, _, found in filled:
            packet.seeds[index].measured_blueprints.extend(found)
        # The annotation changes only with what is known, the offer and the slots: made again only then.
        signature = (
            self._version,
            ids,
            tuple((index, packet.seeds[index].slot_id, shape) for index, shape, _ in filled),
        )
        if self._annotation[0] != signature:
            self._annotation = (signature, measured_blueprints_text(packet))
        self.last_annotation = self._annotation[1]
        return packet

    def _listed(
        self, shape: SlotShape, ids: tuple[str, ...], offered: Sequence[BlueprintDescriptor]
    ) -> list[MeasuredBlueprint]:
        """The summaries of the offered blueprints that fit ``shape`` and have a known sheet there, by id."""
        cached = self._lists.get((shape, ids))
        if cached is not None and cached[0] == self._version:
            return cached[1]
        found: list[MeasuredBlueprint] = []
        listed: set[str] = set()
        for descriptor in sorted(offered, key=lambda descriptor: descriptor.blueprint_id):
            blueprint_id = descriptor.blueprint_id
            if blueprint_id in listed or not growth.fits(descriptor, shape):
                continue
            listed.add(blueprint_id)
            measured = self.known(blueprint_id, shape)
            if measured is not None:
                found.append(measured)
        self._lists[(shape, ids)] = (self._version, found)
        return found

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pairs known to have no sheet: a resumed run must not show one that appeared after the checkpoint
        before the risk engine asks for it (the known sheets are read again, as they are stored)."""
        unmeasured = sorted((_key_json(key) for key, found in self._known.items() if found is None), key=repr)
        return {"unmeasured": unmeasured}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._known = {_key_of(value): None for value in state.get("unmeasured", ())}
        self._version += 1


def _cleared(state: SystemStatePacket) -> SystemStatePacket:
    """``state``, or a copy without ``measured_blueprints`` if it came with some (only Tamiyo fills them)."""
    if not any(seed.measured_blueprints for seed in state.seeds):
        return state
    packet = SystemStatePacket()
    packet.CopyFrom(state)
    for seed in packet.seeds:
        del seed.measured_blueprints[:]
    return packet


def log_ratio(measured: MeasuredBlueprint) -> float | None:
    """``ln(latency_ratio)``, the ratio clipped to [1e-3, 1e3]; None when it is absent or not a number."""
    if not measured.HasField("latency_ratio") or math.isnan(measured.latency_ratio):
        return None
    return math.log(min(max(measured.latency_ratio, 1e-3), 1e3))
