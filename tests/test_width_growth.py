"""Width growth end to end: ``esper run`` on real components (Kasmina, Tamiyo's fixed schedule, Karn and Urza) grows
each of Karn's width blueprints in a width slot of the built-in hosts, from germination to FOSSILIZED, and the run
ends with exactly the seed's parameters added to the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_core.leyline import SlotKind
from esper_core.plugins import Registry
from esper_core.protocols import SlotShape
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Trainer
from esper_urza.karn import KarnCatalog

from tolaria_runs import BASE

pytestmark = pytest.mark.slow

CONV = SlotKind.SLOT_KIND_CONV2D
VECTOR = SlotKind.SLOT_KIND_VECTOR
#: The synthetic task's hosts (16 features: a 4x4 image for the CNN, whose last block has no pool before its gap head)
#: and a width slot of each, with the width blueprint for it, the slot it is, and the parameters the schedule sets.
CASES = {
    "mlp-neurons": (
        ["run.synthetic.host=mlp"],
        "layers.0:input->layers.1.0",
        "BP059",
        SlotShape(VECTOR, (32,), read_kind=VECTOR, read_shape=(16,)),
        {},
    ),
    "cnn-channels": (
        ["run.synthetic.host=cnn", "run.synthetic.widths=[4, 8]"],
        "blocks.0:input->blocks.1.0",
        "BP057",
        SlotShape(CONV, (8, 2, 2), read_kind=CONV, read_shape=(1, 4, 4)),
        {"width": 3},  # the schedule sizes it: 3 new channels, not the default 8
    ),
    "cnn-head-channels": (
        ["run.synthetic.host=cnn", "run.synthetic.widths=[4, 8]"],
        "blocks.1:input->head",
        "BP058",
        SlotShape(VECTOR, (4,), read_kind=CONV, read_shape=(4, 2, 2)),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_width_blueprint_grows_through_the_whole_lifecycle(tmp_path: Path, case: str) -> None:
    host, slot_id, blueprint_id, slot, parameters = CASES[case]
    sizes = ", ".join(f"{name} = {value}" for name, value in parameters.items())
    germination = f'{{epoch = 1, blueprint = "{blueprint_id}", slot = "{slot_id}", parameters = {{{sizes}}}}}'
    overrides = [
        *BASE,
        *host,
        f"run.runs_dir={tmp_path}",
        f"run.name={case}",
        "run.epochs=9",
        "tamiyo.policy=fixed-schedule",
        f"tamiyo.fixed-schedule.germinations=[{germination}]",
        "kasmina.max_regression=1e9",  # the schedule fossilizes whatever the seed's contribution: so may G4
    ]
    registry = Registry.create(env={})
    run = start_run(registry, registry.load_config(env={}, overrides=overrides))
    trainer = Trainer(run)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    record = read_record(run.run_dir)
    story = "\n".join(
        f"{e['epoch']} {e['operation']} {e['status']}: {e['rationale']} {e.get('gates', '')}"
        for e in record
        if e["kind"] == "decision"
    )
    transitions = [e for e in record if e["kind"] == "transition" and e["slot"] == slot_id]
    assert [e["blueprint"] for e in transitions] == [blueprint_id] * len(transitions), story
    assert [e["target"] for e in transitions] == [
        "GERMINATED",
        "TRAINING",
        "BLENDING",
        "SHADOWING",
        "PROBATIONARY",
        "FOSSILIZED",
    ], story
    added = KarnCatalog().parameter_count(blueprint_id, slot, parameters)
    assert summary.fossilized == 1 and summary.parameters == summary.host_parameters + added, story
