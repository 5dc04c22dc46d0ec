"""Percentiles are measured samples, nearest rank."""

from __future__ import annotations

import pytest

from esper_core.stats import percentile


def test_percentiles_are_samples_by_nearest_rank() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(samples, 0.5) == 3.0
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 5.0
    assert percentile(range(1, 101), 0.95) == 95
    assert percentile(iter([7.0]), 0.95) == 7.0


def test_no_samples_and_bad_fractions() -> None:
    assert percentile([], 0.95) == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], 95)
