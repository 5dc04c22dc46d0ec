"""A crucible result as the Leyline ``BSDS`` message (a Blueprint Safety Data Sheet).

The sheet carries the verdict (risk score, hazard band, handling class, resource profile), a one-line
recommendation and one ``hazards`` entry per hazard class found, each a short text with its band, the measured value
and its limit: what a controller needs to gate on (band first, score second), small enough to travel beside an artifact.
The full measurements stay in the :class:`~esper_urza.urabrask.results.CrucibleResult`. No signing here: the sheet
is signed where it is stored.
"""

from __future__ import annotations

import time

from esper_core.leyline import BSDS, HandlingClass, HazardBand, Provenance, value_name
from esper_urza.urabrask.results import CrucibleResult, Hazard

#: The ``version`` of the sheets this module writes.
BSDS_VERSION = 1
#: Longest text of one ``hazards`` entry.
MAX_HAZARD_TEXT = 160


def recommendation(result: CrucibleResult) -> str:
    """One line: how to handle the blueprint, the hazards behind it, and where it was measured."""
    names = ", ".join(hazard.name for hazard in result.hazards)
    where = f"measured at {result.slot.describe()}"
    if result.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE:
        advice = f"quarantine: never germinate ({names})"
    elif result.handling_class == HandlingClass.HANDLING_CLASS_RESTRICTED:
        advice = f"restricted: germinate only with approval, watched closely ({names})"
    elif result.hazards:
        advice = f"standard handling; note {names}"
    else:
        advice = "standard handling; no hazard measured"
    return f"{advice}; {where}"


def safety_data_sheet(result: CrucibleResult, *, issued_at: float | None = None) -> BSDS:
    """The ``BSDS`` for ``result``, issued at ``issued_at`` (seconds since the epoch; now by default), with
    provenance URABRASK."""
    sheet = BSDS(
        version=BSDS_VERSION,
        blueprint_id=result.blueprint_id,
        risk_score=float(result.risk_score),
        hazard_band=result.hazard_band,
        handling_class=result.handling_class,
        resource_profile=result.resource_profile,
        recommendation=recommendation(result),
        provenance=Provenance.PROVENANCE_URABRASK,
    )
    sheet.issued_at.FromNanoseconds(int((time.time() if issued_at is None else issued_at) * 1e9))
    for hazard in result.hazards:
        sheet.hazards[hazard.name] = hazard_text(hazard)
    return sheet


def hazard_text(hazard: Hazard) -> str:
    """``"CRITICAL: non-finite loss, gradient or weights at step 1 (SGD lr 1)"``: the band, then the measurement."""
    return f"{value_name(HazardBand, hazard.band, 'HAZARD_BAND_')}: {hazard.detail}"[:MAX_HAZARD_TEXT]
