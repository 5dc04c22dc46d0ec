"""Repository-wide test setup: one torch thread.

The hosts in Esper's tests are tiny; on a 2-core machine two OpenMP threads contend with everything else running
and can slow a small convolution a hundredfold. One thread keeps the suite fast and its timings steady.
"""

from __future__ import annotations


def pytest_configure() -> None:
    try:
        import torch
    except ImportError:  # esper-core alone does not need torch
        return
    torch.set_num_threads(1)
