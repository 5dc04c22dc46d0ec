"""Synthetic run records for Nissa's tests, written with core's own ``RunRecord`` the way Tolaria writes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esper_core.tolaria.record import RECORD_FILE, RunRecord

HOST = 10_000
SLOTS = [{"slotId": "s0", "stage": "SEED_STAGE_DORMANT"}, {"slotId": "s1"}, {"slotId": "s2"}]


def epoch_entry(
    epoch: int, parameters: int = HOST, seeds: dict[str, int] | None = None, **metrics: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "epoch": epoch,
        "global_step": 10 * epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5 + 0.05 * epoch,
        "val_loss": 1.2 / epoch,
        "val_accuracy": 0.45 + 0.05 * epoch,
        "parameters": parameters,
        "host_parameters": HOST,
        "seeds": seeds or {"DORMANT": 3},
        "epoch_seconds": 2.0,
        "decision_ms": 1.5,
        "evaluation_variants": 1,
        "training_flops": 3_000_000_000,
        "validation_flops": 100_000_000,
        "measurement_flops": 0,
        "total_flops": 3_100_000_000 * epoch,
    }
    fields.update(metrics)
    return fields


def decision(record: RunRecord, epoch: int, operation: str = "noop", slot: str = "", status: str = "NOOP") -> None:
    record.append(
        "decision", epoch=epoch, operation=operation, slot=slot, blueprint="", rationale="", risk_reason="",
        rules=[], status=status, detail="", gates=[], command_id=f"c{epoch}",
    )  # fmt: skip


def transition(record: RunRecord, epoch: int, slot: str, seed: str, blueprint: str, source: str, target: str,
               reason: str = "") -> None:  # fmt: skip
    record.append(
        "transition", epoch=epoch, slot=slot, seed=seed, blueprint=blueprint, source=source, target=target,
        reason=reason, gates=[],
    )  # fmt: skip


def write_growing_run(run_dir: Path, *, finished: bool = True) -> Path:
    """Six epochs: s0's seed germinates at 2 and fossilizes at 5; s1's germinates at 3 and is culled by a gate at 4
    (then embargoed and reset); s2's germinates at 5 and is culled by a rollback at 6 (back to 5)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir / RECORD_FILE)
    record.append("run_started", run_id="grow-1", task="synthetic", host_parameters=HOST, slots=SLOTS)

    record.append("epoch", **epoch_entry(1))
    decision(record, 1)

    record.append("epoch", **epoch_entry(2))
    decision(record, 2, "germinate", "s0", "APPLIED")
    transition(record, 2, "s0", "seed-a", "conv-residual", "DORMANT", "GERMINATED")

    record.append("epoch", **epoch_entry(3, HOST + 500))
    decision(record, 3, "germinate", "s1", "APPLIED")
    transition(record, 3, "s0", "seed-a", "conv-residual", "GERMINATED", "TRAINING")
    transition(record, 3, "s1", "seed-b", "mlp-adapter", "DORMANT", "GERMINATED")

    record.append("epoch", **epoch_entry(4, HOST + 800))
    decision(record, 4, "start_grafting", "s0", "APPLIED")
    transition(record, 4, "s0", "seed-a", "conv-residual", "TRAINING", "BLENDING")
    transition(record, 4, "s1", "seed-b", "mlp-adapter", "GERMINATED", "CULLED", "G1 gradient health failed")
    transition(record, 4, "s1", "seed-b", "mlp-adapter", "CULLED", "EMBARGOED")
    record.append("field_report", epoch=4, report="r1", slot="s1", blueprint="mlp-adapter", outcome="ABORTED",
                  contribution=None)  # fmt: skip

    record.append("epoch", **epoch_entry(5, HOST + 500))
    decision(record, 5, "fossilize", "s0", "APPLIED")
    transition(record, 5, "s0", "seed-a", "conv-residual", "BLENDING", "FOSSILIZED")
    transition(record, 5, "s1", "seed-b", "mlp-adapter", "EMBARGOED", "RESETTING")
    transition(record, 5, "s2", "seed-c", "attention-lite", "DORMANT", "GERMINATED")
    record.append("field_report", epoch=5, report="r2", slot="s0", blueprint="conv-residual", outcome="SUCCESS",
                  contribution=0.0425)  # fmt: skip

    record.append("rollback", epoch=6, to_epoch=5, reason="the training loss spiked", culled=["s2"], responsible="s2")
    # Tolaria records the rollback's cull as a transition too, after the rollback entry.
    transition(record, 6, "s2", "seed-c", "attention-lite", "GERMINATED", "CULLED", "commanded")
    transition(record, 6, "s2", "seed-c", "attention-lite", "CULLED", "EMBARGOED")
    record.append("failure", epoch=6, reason="the controller timed out", conservative=True)
    transition(record, 6, "s1", "seed-b", "mlp-adapter", "RESETTING", "DORMANT")
    record.append("epoch", **epoch_entry(6, HOST + 500, val_accuracy=0.925, train_loss=None))
    decision(record, 6)

    if finished:
        record.append(
            "run_finished", epochs=6, train_loss=0.1667, val_loss=0.2, val_accuracy=0.925, test_loss=0.21,
            test_accuracy=0.9175, host_parameters=HOST, parameters=HOST + 500, fossilized=1, culled=2, rollbacks=1,
            wall_seconds=14.25, train_seconds=12.0,
            decisions={"noop": 2, "germinate": 2, "start_grafting": 1, "fossilize": 1},
            training_flops=18_000_000_000, validation_flops=900_000_000, measurement_flops=350_000_000,
            total_flops=19_250_000_000,
        )  # fmt: skip
    record.close()
    return run_dir


def write_seedless_run(run_dir: Path, *, epochs: int = 4, finished: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir / RECORD_FILE)
    record.append("run_started", run_id="static-1", task="synthetic", host_parameters=HOST, slots=[])
    for epoch in range(1, epochs + 1):
        record.append("epoch", **epoch_entry(epoch, seeds={}))
        decision(record, epoch)
    if finished:
        record.append(
            "run_finished", epochs=epochs, train_loss=1.0 / epochs, val_loss=1.2 / epochs,
            val_accuracy=0.45 + 0.05 * epochs, test_loss=None, test_accuracy=None, host_parameters=HOST,
            parameters=HOST, fossilized=0, culled=0, rollbacks=0, wall_seconds=3.5, train_seconds=3.0,
            decisions={"noop": epochs},
        )  # fmt: skip
    record.close()
    return run_dir


@pytest.fixture
def growing_run(tmp_path: Path) -> Path:
    return write_growing_run(tmp_path / "grow-1")


@pytest.fixture
def killed_run(tmp_path: Path) -> Path:
    return write_growing_run(tmp_path / "killed", finished=False)


@pytest.fixture
def seedless_run(tmp_path: Path) -> Path:
    return write_seedless_run(tmp_path / "static-1")


@pytest.fixture
def make_seedless_run(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "run", **options: Any) -> Path:
        return write_seedless_run(tmp_path / name, **options)

    return make
