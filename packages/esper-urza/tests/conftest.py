"""Shared settings of esper-urza's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tensors here are tiny: one intra-op thread is fastest, and immune to a busy neighbouring core (OpenMP
    threads spin-waiting on an oversubscribed CPU can slow a small convolution a hundredfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
