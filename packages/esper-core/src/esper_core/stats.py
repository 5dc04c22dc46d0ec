"""Summary statistics of measured samples (latencies, step times), computed the same way everywhere.

Percentiles are nearest-rank on the sorted samples: every reported value is one that was measured, which is what
a latency budget is checked against.
"""

from __future__ import annotations

from collections.abc import Iterable


def percentile(samples: Iterable[float], fraction: float) -> float:
    """The sample at ``fraction`` (0.5 for the median, 0.95 for p95) of the sorted samples; 0.0 when there are none."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a percentile's fraction lies between 0 and 1, got {fraction}")
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
