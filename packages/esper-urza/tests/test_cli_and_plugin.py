"""``esper blueprints`` lists every installed catalog's blueprints; esper-urza's plugin module stays cheap."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from torch import nn

from esper_core import hookimpl
from esper_core.cli.blueprints import parse_slot
from esper_core.cli.main import build_parser, main
from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, SlotKind
from esper_core.plugins import BlueprintCatalogSpec, Registry
from esper_core.protocols import SlotShape


def listing(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict[str, Any]:
    assert main(["blueprints", "--json", *arguments]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_blueprints_lists_karn_with_tier_risk_bounds_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    result = listing(capsys, "--slot", "conv2d:16x14x14")
    assert result["slot"] == {"kind": "conv2d", "shape": [16, 14, 14]}
    rows = {row["blueprint_id"]: row for row in result["blueprints"] if row["catalog"] == "karn"}
    assert len(rows) >= 23
    residual = rows["BP009"]
    assert residual["name"] == "residual_block" and residual["tier"] == "SAFE" and residual["risk"] == 0.3
    assert residual["parameters"]["depth"] == {
        "min": 1.0,
        "max": 4.0,
        "default": 2.0,
        "integer": True,
        "description": "number of 3x3 convolutions",
    }
    assert residual["parameter_count"] == 4640
    assert rows["BP022"]["parameter_count"] is None  # sequence-only: no count at a conv2d slot
    assert rows["BP045"]["quarantine_only"] and rows["BP045"]["tier"] == "HIGH_RISK"


def test_blueprints_filters_by_tier_and_counts_at_other_slots(capsys: pytest.CaptureFixture[str]) -> None:
    rows = listing(capsys, "--slot", "sequence:16x64", "--tier", "experimental")["blueprints"]
    assert {row["tier"] for row in rows} == {"EXPERIMENTAL"}
    counts = {row["blueprint_id"]: row["parameter_count"] for row in rows}
    assert counts["BP039"] == 4 * 64 * 64 + 3 * 64 and counts["BP040"] is None


def test_blueprints_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blueprints", "--slot", "vector:128"]) == 0
    out = capsys.readouterr().out
    assert "residual_mlp" in out and "65,920" in out and "—" in out and "blueprints." in out


@pytest.mark.parametrize("text", ["conv2d:16x14", "vector:0", "matrix:3x3", "sequence:axb", "vector"])
def test_a_malformed_slot_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_slot(text)


def test_parse_slot() -> None:
    assert parse_slot("Sequence:16x64") == SlotShape(SlotKind.SLOT_KIND_SEQUENCE, (16, 64))


def test_blueprints_lists_the_width_blueprints_at_a_width_slot(capsys: pytest.CaptureFixture[str]) -> None:
    result = listing(capsys, "--slot", "conv2d:1x28x28->conv2d:2x14x14")
    assert result["slot"] == {"kind": "conv2d", "shape": [2, 14, 14], "read_kind": "conv2d", "read_shape": [1, 28, 28]}
    rows = {row["blueprint_id"]: row for row in result["blueprints"] if row["catalog"] == "karn"}
    grown = rows["BP057"]
    assert grown["growth_mode"] == "width" and grown["read_kinds"] == ["conv2d"] and grown["fits"]
    assert grown["parameter_count"] == (8 * 9 + 8) + (2 * 8 * 9 + 2)  # width 8: 3x3 from 1 channel, 3x3 into 2
    assert {blueprint_id for blueprint_id, row in rows.items() if row["fits"]} == {"BP057"}
    residual = rows["BP009"]
    assert residual["growth_mode"] == "residual" and residual["parameter_count"] is None and not residual["fits"]
    assert "BP009 is a residual blueprint" in residual["misfit"] and "is a width slot" in residual["misfit"]
    assert rows["BP058"]["parameter_count"] is None and "writes into vector" in rows["BP058"]["misfit"]
    at_a_residual_slot = listing(capsys, "--slot", "conv2d:2x14x14")["blueprints"]
    width_rows = [row for row in at_a_residual_slot if row["growth_mode"] == "width"]
    assert width_rows and all(row["parameter_count"] is None and not row["fits"] for row in width_rows)


def test_blueprints_prints_width_blueprints_with_what_they_read_and_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blueprints", "--slot", "conv2d:4x14x14->vector:10"]) == 0
    out = capsys.readouterr().out
    assert "conv2d:4x14x14->vector:10" in out and "conv→vec" in out and "head_channel_growth" in out
    assert f"{(8 * 4 * 9 + 8) + (8 * 7 * 7 * 10 + 10):,}" in out  # width 8, a 2x2 max-pool, into 10 features


@pytest.mark.parametrize(
    "text", ["conv2d:1x28x28->", "->vector:3", "conv2d:1x28->vector:3", "vector:3->vector:2->vector:1", "a->b"]
)
def test_a_malformed_width_slot_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_slot(text)


def test_parse_a_width_slot() -> None:
    assert parse_slot(" conv2d:1x28x28 -> Vector:10 ") == SlotShape(
        SlotKind.SLOT_KIND_VECTOR, (10,), read_kind=SlotKind.SLOT_KIND_CONV2D, read_shape=(1, 28, 28)
    )


class ThirdPartyCatalog:
    name = "acme"

    def descriptors(self) -> Sequence[BlueprintDescriptor]:
        bounds = BlueprintParameterBounds(min_value=1, max_value=4, default_value=2, integer=True, description="w")
        descriptor = BlueprintDescriptor(
            blueprint_id="ACME1",
            name="acme_adapter",
            tier=BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL,
            risk=0.7,
            slot_kinds=[SlotKind.SLOT_KIND_VECTOR],
        )
        descriptor.allowed_parameters["width"].CopyFrom(bounds)
        return [descriptor]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        raise NotImplementedError

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return 7 * slot.shape[0]


def test_blueprints_lists_every_installed_catalog(
    register_plugin: Any, esper_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    class Plugin:
        @hookimpl
        def esper_urza_blueprint_catalogs(self) -> list[BlueprintCatalogSpec]:
            return [BlueprintCatalogSpec(name="acme", factory=lambda context: ThirdPartyCatalog())]

    register_plugin(Plugin())
    args = build_parser(esper_registry).parse_args(["blueprints", "--json", "--slot", "vector:10"])
    args.registry = esper_registry
    assert args.handler(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["blueprints"]
    assert row["catalog"] == "acme" and row["blueprint_id"] == "ACME1" and row["tier"] == "EXPERIMENTAL"
    assert row["parameter_count"] == 70 and row["parameters"]["width"]["default"] == 2


def test_the_plugin_module_imports_no_torch() -> None:
    code = "import sys, esper_urza.plugin, esper_urza.karn; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_esper_plugins_lists_karn_and_urza(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"blueprint catalog:karn", "artifact store:urza"} <= set(rows["urza"]["provides"])
