"""What the counterfactual measurements fused into validation cost, as a share of an epoch's compute, in counted FLOPs.

The run is examples/fashion-mnist.toml (the narrow CNN of the efficacy experiment, all 54 000 training and 6 000
validation images), assembled exactly as ``esper run`` does it, with the seeds of its growth: ``--growth width``
(the example as it is: BP057 with 8 new channels in the first block, BP058 with one new channel in the second) or
``--growth residual`` (the first edition's BP056 wide residuals inside ``blocks.0`` and ``blocks.1``). For each
configuration of seeds, an epoch's compute is what Tolaria records for it: the training steps (the trainer's counted
cost of a step per sample, times the training images), the decision point's validation pass, and what that pass's
counterfactual variants add (Kasmina's fused evaluation over the whole validation set). The measurement's share is
the last over the sum of the three. Seeds are germinated through Kasmina and then put into their stages directly:
FLOPs depend on which seeds are in the forward pass and how, not on their weights. Counted, not timed: the numbers
are the same on any machine, however busy.

Configurations: the host alone; each seed alone in each measured stage (the first slot ``A``, where the prefix that
runs only once is shortest, and the second ``B``); one beside the other fossilized; two seeds in flight at once.
``--max-measurement-passes`` sets ``kasmina.max_measurement_passes`` (0: the variants run on every validation
batch, however many there are).

Usage: python benchmarks/counterfactual_cost.py [--growth width|residual] [--max-measurement-passes 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from esper_core.leyline import (
    AdaptationCommand,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    SeedOperation,
    lifecycle,
)
from esper_core.leyline.lifecycle import Stage
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
TARGET = 0.15
T, B, S, P, F = (lifecycle.TRAINING, lifecycle.BLENDING, lifecycle.SHADOWING, lifecycle.PROBATIONARY,
                 lifecycle.FOSSILIZED)  # fmt: skip
#: Per growth: the overrides that allow its slots, and (slot, blueprint, parameters) of the first and second seed.
GROWTH: dict[str, tuple[list[str], list[tuple[str, str, dict[str, float]]]]] = {
    "width": (
        [],
        [("blocks.0:input->blocks.1.0", "BP057", {"width": 8}), ("blocks.1:input->head", "BP058", {"width": 1})],
    ),
    "residual": (["run.fashion-mnist.slots=[]"], [("blocks.0", "BP056", {}), ("blocks.1", "BP056", {})]),
}
#: (name, {seed: stage}) for every configuration measured; seed "A" is the first slot's, "B" the second's.
CONFIGURATIONS: list[tuple[str, dict[str, Stage]]] = [
    ("host alone", {}),
    *((f"B {lifecycle.stage_name(stage)}", {"B": stage}) for stage in (T, B, S, P)),
    *((f"A {lifecycle.stage_name(stage)}", {"A": stage}) for stage in (T, B, S, P)),
    ("B FOSSILIZED, A TRAINING", {"B": F, "A": T}),
    ("B FOSSILIZED, A BLENDING", {"B": F, "A": B}),
    ("A TRAINING, B BLENDING", {"A": T, "B": B}),
    ("A BLENDING, B BLENDING", {"A": B, "B": B}),
]


def measure(workdir: Path, cap: float | None, growth: str = "width") -> dict[str, Any]:
    registry = Registry.create(env={})
    allow, seeds = GROWTH[growth]
    overrides = [f"run.runs_dir={workdir}", "run.name=counterfactual-cost", "nissa.report.automatic=false", *allow]
    if cap is not None:
        overrides.append(f"kasmina.max_measurement_passes={cap}")
    run = start_run(registry, registry.load_config(CONFIG, env={}, overrides=overrides))
    trainer = Trainer(run)
    executor: Any = run.executor  # Kasmina: its slots are set into stages directly
    try:
        for slot_id, blueprint_id, parameters in seeds:
            operation = CommandSeedOperation(operation=SeedOperation.SEED_OP_GERMINATE, blueprint_id=blueprint_id)
            operation.parameters.update(parameters)
            command = AdaptationCommand(
                command_type=CommandType.COMMAND_SEED, target_slot_id=slot_id, seed_operation=operation
            )
            result = executor.apply(trainer.signer.sign(command))
            if result.status != CommandStatus.COMMAND_STATUS_APPLIED:
                raise SystemExit(f"{blueprint_id} did not germinate in {slot_id}: {result.detail}")
        named = {"A": seeds[0][0], "B": seeds[1][0]}
        train_samples, val_samples = len(run.data.train[0]), len(run.data.val[0])
        rows = []
        for name, stages in CONFIGURATIONS:
            staged = {named[seed]: stage for seed, stage in stages.items()}
            for slot in executor.slots:
                if slot.slot_id in named.values():
                    slot.record.stage = staged.get(slot.slot_id, lifecycle.GERMINATED)  # GERMINATED: not in forward
                    slot.alpha_steps.fill_(slot.record.alpha_total // 2)  # mid-ramp while BLENDING
                    slot.sync_hook()
            trainer.refresh_step_cost()
            training = round(trainer.training_flops_per_sample() * train_samples)
            batches = trainer.batches(*run.data.val, max(run.options.batch_size, 256))
            evaluation = executor.evaluate(batches, run.task.loss, run.task.correct)
            epoch = training + evaluation.flops
            rows.append({
                "configuration": name,
                "variants": evaluation.variants,
                "fused": evaluation.fused,
                "training_flops": training,
                "validation_flops": evaluation.validation_flops,
                "measurement_flops": evaluation.measurement_flops,
                "measured_samples": evaluation.measured_samples,
                "share": evaluation.measurement_flops / epoch,
                "measurement_over_validation": evaluation.measurement_flops / evaluation.validation_flops,
            })  # fmt: skip
    finally:
        trainer.close()
    return {"train_samples": train_samples, "validation_samples": val_samples, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-measurement-passes", type=float, help="kasmina.max_measurement_passes (default: 3)")
    parser.add_argument("--growth", choices=sorted(GROWTH), default="width")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esper-counterfactual-cost-") as workdir:
        measured = measure(Path(workdir), args.max_measurement_passes, args.growth)
    rows = measured["rows"]
    grown = GROWTH[args.growth][1]
    seeds = ", ".join(f"{name} = {bp} in {slot}" for name, (slot, bp, _) in zip("AB", grown, strict=True))
    print(f"examples/fashion-mnist.toml: {measured['train_samples']} training, {measured['validation_samples']} "
          f"validation images; {seeds}; GFLOP per epoch, counted")  # fmt: skip
    print(f"{'configuration':40s} {'V':>2s} {'training':>9s} {'validation':>10s} {'measurement':>11s} "
          f"{'measured on':>11s} {'share':>7s}")  # fmt: skip
    for row in rows:
        print(f"{row['configuration']:40s} {row['variants']:2d} {row['training_flops'] / 1e9:9.2f} "
              f"{row['validation_flops'] / 1e9:10.3f} {row['measurement_flops'] / 1e9:11.3f} "
              f"{row['measured_samples']:11d} {row['share'] * 100:6.2f}%")  # fmt: skip
    worst = max(rows, key=lambda row: row["share"])
    print(f"worst: {worst['configuration']}, {worst['share'] * 100:.2f}% of the epoch (target <= {TARGET * 100:.0f}%)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(measured, handle, indent=2)


if __name__ == "__main__":
    main()
