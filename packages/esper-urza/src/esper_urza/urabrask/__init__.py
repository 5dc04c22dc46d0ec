"""Urabrask: Blueprint Safety Data Sheets from measurement, not from what a catalog declares.

A catalog's author declares a tier and a risk; a third-party catalog can call anything SAFE. The crucible builds a
blueprint's module exactly as a seed gets it, runs it on CPU at a slot (latency against a plain layer, counted FLOPs,
a training step's memory, the parameter estimate, gradients under a high learning rate, extreme and non-finite
inputs, determinism, learning from its zero start), derives hazard classes from explicit thresholds, and turns that
into the Leyline ``BSDS``::

    from esper_urza.karn import KarnCatalog
    from esper_urza.urabrask import measure_blueprint, safety_data_sheet, standard_slots

    catalog = KarnCatalog()
    slot = standard_slots(catalog.descriptor("BP043"))[0]
    result = measure_blueprint(catalog, "BP043", slot)
    result.quarantine                  # True: exploding_gradients, measured
    sheet = safety_data_sheet(result)  # the BSDS message

- :mod:`.crucible`: :func:`measure_blueprint`, the standard slots;
- :mod:`.probes`: the measurements (torch);
- :mod:`.hazards`: hazard classes, their bands, the risk score, handling class and resource profile;
- :mod:`.options`: :class:`CrucibleOptions`, repetition counts, budgets and thresholds;
- :mod:`.results`: the frozen records of a result;
- :mod:`.sheet`: the ``BSDS`` message.

Importing this package imports no torch; measuring does.
"""

from esper_urza.urabrask.crucible import STANDARD_READ_SHAPES, STANDARD_SHAPES, measure_blueprint, standard_slots
from esper_urza.urabrask.options import CrucibleOptions
from esper_urza.urabrask.results import (
    Cost,
    CrucibleResult,
    Determinism,
    GradientHealth,
    Hazard,
    InputRobustness,
    Learning,
    ParameterCount,
    StartCheck,
    Timing,
)
from esper_urza.urabrask.sheet import BSDS_VERSION, safety_data_sheet

__all__ = [
    "BSDS_VERSION",
    "STANDARD_READ_SHAPES",
    "STANDARD_SHAPES",
    "Cost",
    "CrucibleOptions",
    "CrucibleResult",
    "Determinism",
    "GradientHealth",
    "Hazard",
    "InputRobustness",
    "Learning",
    "ParameterCount",
    "StartCheck",
    "Timing",
    "measure_blueprint",
    "safety_data_sheet",
    "standard_slots",
]
