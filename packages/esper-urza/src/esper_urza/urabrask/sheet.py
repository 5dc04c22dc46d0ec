"""A crucible result as the Leyline ``BSDS`` message (a Blueprint Safety Data Sheet).

The sheet carries the verdict (risk score, hazard band, handling class, resource profile), a one-line
recommendation and one ``hazards`` entry per hazard class found, each a short text with its band, the measured value
and its limit: what a controller needs to gate on (band first, score second), small enough to travel beside an artifact.
Beside them: what was measured (catalog and its version, Urza's artifact key, parameters, slot), the measurements
themselves as numbers (every numeric field of every probe's record, ``timing.forward_p95_ms`` ...), and what the
catalog declared. :func:`sign_sheet` and :func:`sheet_verifies` sign and check it with the shared secret, through
``esper_core.signing`` (the one implementation of signing).
"""

from __future__ import annotations

import time

import attrs

from esper_core.leyline import BSDS, HandlingClass, HazardBand, Provenance, value_name
from esper_core.signing import SigningKey, sign_signature_field, verify_signature_field
from esper_urza.parameters import artifact_key
from esper_urza.urabrask.results import CrucibleResult, Hazard

#: The probe records of a result whose numbers go into a sheet's ``measurements``.
PROBES = ("start", "timing", "cost", "parameter_count", "gradients", "inputs", "determinism", "learning")

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


def safety_data_sheet(result: CrucibleResult, *, issued_at: float | None = None, catalog_version: str = "") -> BSDS:
    """The ``BSDS`` for ``result``, issued at ``issued_at`` (seconds since the epoch; now by default), with
    provenance URABRASK; unsigned (:func:`sign_sheet`)."""
    sheet = BSDS(
        version=BSDS_VERSION,
        blueprint_id=result.blueprint_id,
        risk_score=float(result.risk_score),
        hazard_band=result.hazard_band,
        handling_class=result.handling_class,
        resource_profile=result.resource_profile,
        recommendation=recommendation(result),
        provenance=Provenance.PROVENANCE_URABRASK,
        catalog=result.catalog,
        catalog_version=catalog_version,
        artifact_key=artifact_key(result.catalog, result.blueprint_id, result.parameters, result.slot),
        slot=result.slot.describe(),
        declared_tier=result.declared_tier,
        declared_risk=result.declared_risk,
    )
    sheet.issued_at.FromNanoseconds(int((time.time() if issued_at is None else issued_at) * 1e9))
    for hazard in result.hazards:
        sheet.hazards[hazard.name] = hazard_text(hazard)
    sheet.parameters.update({name: float(value) for name, value in result.parameters.items()})
    sheet.measurements.update(measurements(result))
    return sheet


def measurements(result: CrucibleResult) -> dict[str, float]:
    """Every number the probes measured, named ``probe.field`` (booleans as 0 or 1; sequences left out)."""
    found = {"elapsed_s": float(result.elapsed_s)}
    for probe in PROBES:
        record = getattr(result, probe)
        if record is None:
            continue
        for field in attrs.fields(type(record)):
            value = getattr(record, field.name)
            if isinstance(value, (bool, int, float)):
                found[f"{probe}.{field.name}"] = float(value)
    return found


def sign_sheet(sheet: BSDS, key: SigningKey) -> BSDS:
    """``sheet`` with its ``signature`` set (HMAC-SHA256 with ``key`` over the sheet without it); returned."""
    sign_signature_field(key, sheet)
    return sheet


def sheet_verifies(sheet: BSDS, key: SigningKey) -> bool:
    """Whether ``sheet`` carries a valid signature under ``key``."""
    return verify_signature_field(key, sheet)


def hazard_text(hazard: Hazard) -> str:
    """``"CRITICAL: non-finite loss, gradient or weights at step 1 (SGD lr 1)"``: the band, then the measurement."""
    return f"{value_name(HazardBand, hazard.band, 'HAZARD_BAND_')}: {hazard.detail}"[:MAX_HAZARD_TEXT]
