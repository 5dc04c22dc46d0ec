"""The efficacy harness's own arithmetic (benchmarks/efficacy/run.py): the static-matched arm's size and the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from esper_core.tasks.hosts import ConvHost

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("efficacy_run", ROOT / "benchmarks" / "efficacy" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("widths", [(1, 2), (4, 8), (9, 2), (8, 16, 32), (32, 64, 128)])
def test_the_parameter_count_is_the_built_hosts(harness: ModuleType, widths: tuple[int, ...]) -> None:
    host = ConvHost(1, list(widths), 10, side=28, head="flatten")
    assert harness.conv_host_cost(widths)[0] == sum(p.numel() for p in host.parameters())


def test_static_matched_is_the_nearest_parameter_count(harness: ModuleType) -> None:
    narrow = harness.FAMILIES["narrow"]
    # 8 new channels in the first block: 1,246 parameters; a static host with 9 and 2 channels has 1,244.
    assert harness.matched_widths(narrow, 1246) == (9, 2)
    for target in (1500, 2500, 3000, 4266):
        found = harness.conv_host_cost(harness.matched_widths(narrow, target))[0]
        assert abs(found - target) <= 60, (target, found)


def row(arm: str, seed: int, accuracy: float, parameters: int, flops: float) -> dict[str, object]:
    return {"arm": arm, "seed": seed, "test_accuracy": accuracy, "parameters": parameters, "total_flops": flops,
            "wall_seconds": 10.0}  # fmt: skip


def test_the_table_reports_gap_closed_and_compute_relative_to_the_large_host(harness: ModuleType) -> None:
    results = [
        row("static-small", 0, 0.80, 1000, 1e9),
        row("static-large", 0, 0.90, 5000, 4e9),
        row("heuristic", 0, 0.85, 2000, 2e9),
        row("static-small", 1, 0.70, 1000, 1e9),
        row("static-large", 1, 0.70, 5000, 4e9),
    ]
    table = harness.table(results, [0])
    assert "| heuristic | 85.00 ± 0.00 % | 2,000 | 25% | 50% | 0.5 | 0.50 | 10 s |" in table
    assert "| static-large | 90.00 ± 0.00 % | 5,000 | 100% | 100% | 0.25 | 1.00 |" in table
