"""docs/blueprints.md documents the catalog as it is, and its third-party example keeps the contract."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from esper_core.leyline import GrowthMode
from esper_core.protocols import SlotShape
from esper_core.testing.conformance.catalog import check_blueprint
from esper_urza.karn import KarnCatalog
from esper_urza.parameters import kind_name, tier_name

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "blueprints.md"
ROW = re.compile(r"^\| (BP\d{3}) \| `(\w+)` \| (\w+) \| ([\d.]+) \| (\d) \| ([\w, ]+) \| (.*?) \| (.*) \|$")
#: A row of the width blueprints' table: id, name, tier, risk, stage, reads, writes, parameters, what it is.
WIDTH_ROW = re.compile(
    r"^\| (BP\d{3}) \| `(\w+)` \| (\w+) \| ([\d.]+) \| (\d) \| ([\w, ]+) \| ([\w, ]+) \| (.*?) \| (.*) \|$"
)


def test_the_catalog_table_matches_karn() -> None:
    lines = GUIDE.read_text().splitlines()
    rows = {match[1]: match.groups() for line in lines if (match := ROW.match(line)) and not WIDTH_ROW.match(line)}
    descriptors = {d.blueprint_id: d for d in KarnCatalog().descriptors() if not d.read_kinds}
    assert set(rows) == set(descriptors)
    for blueprint_id, (_, name, tier, risk, stage, kinds, parameters, what) in rows.items():
        d = descriptors[blueprint_id]
        assert (name, tier, float(risk), int(stage)) == (d.name, tier_name(d.tier), d.risk, d.stage), blueprint_id
        assert kinds == ", ".join(kind_name(kind) for kind in d.slot_kinds), blueprint_id
        assert re.findall(r"`(\w+)`", parameters) == sorted(d.allowed_parameters), blueprint_id
        assert what == d.description, blueprint_id


def test_the_width_table_matches_karn() -> None:
    rows = {match[1]: match.groups() for line in GUIDE.read_text().splitlines() if (match := WIDTH_ROW.match(line))}
    descriptors = {
        d.blueprint_id: d for d in KarnCatalog().descriptors() if d.growth_mode == GrowthMode.GROWTH_MODE_WIDTH
    }
    assert set(rows) == set(descriptors) and rows
    for blueprint_id, (_, name, tier, risk, stage, reads, writes, parameters, what) in rows.items():
        d = descriptors[blueprint_id]
        assert (name, tier, float(risk), int(stage)) == (d.name, tier_name(d.tier), d.risk, d.stage), blueprint_id
        assert reads == ", ".join(kind_name(kind) for kind in d.read_kinds), blueprint_id
        assert writes == ", ".join(kind_name(kind) for kind in d.slot_kinds), blueprint_id
        assert re.findall(r"`(\w+)`", parameters) == sorted(d.allowed_parameters), blueprint_id
        for parameter, default, low, high in re.findall(r"`(\w+)` (\d+) \[(\d+)–(\d+)\]", parameters):
            bound = d.allowed_parameters[parameter]
            assert (bound.default_value, bound.min_value, bound.max_value) == (int(default), int(low), int(high))
        assert what == d.description, blueprint_id


def test_the_width_seed_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    source = next(block for block in blocks if "WidthSeed" in block)
    exec(compile(source, "docs/blueprints.md", "exec"), {})


def test_the_third_party_example_keeps_the_contract() -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    source = next(block for block in blocks if "class AcmeCatalog" in block)
    module = types.ModuleType("acme_catalog_example")
    exec(compile(source, "docs/blueprints.md", "exec"), module.__dict__)
    catalog = module.AcmeCatalog()
    (descriptor,) = catalog.descriptors()
    for kind, shape in ((descriptor.slot_kinds[0], (24,)), (descriptor.slot_kinds[1], (5, 16))):
        check_blueprint(catalog, descriptor, SlotShape(kind, shape), {"width": 4.0})
    with pytest.raises(ValueError, match="width"):
        catalog.build("ACME001", SlotShape(descriptor.slot_kinds[0], (8,)), {"width": 100.0})
