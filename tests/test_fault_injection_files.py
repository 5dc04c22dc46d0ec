"""Fault injection for the durable files a run writes: each is truncated, and has bytes flipped at sampled offsets
(fixed seeds), and then used. The outcome must be a clear error, or a recovery to a consistent state; never a silent
divergence (a resumed run on weights or a record that differ from what was saved).

Urza's index and artifacts have their own suite (packages/esper-urza/tests/test_fault_injection.py); the bus's
consumers theirs (tests/test_bus_fuzz.py).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from esper_core.errors import EsperError
from esper_core.plugins import Registry
from esper_core.storage import AppendOnlyLog, read_records
from esper_core.tolaria.assembly import reopen_run, start_run
from esper_core.tolaria.checkpoint import DIRECTORY, load_checkpoint
from esper_core.tolaria.record import RECORD_FILE, read_record
from esper_core.tolaria.trainer import Trainer

TINY = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=256",
    "run.synthetic.widths=[8]",
    "run.batch_size=64",
    "run.epochs=3",
    "run.name=tiny",
    "nissa.sinks=[]",
    "tolaria.keep_checkpoints=3",
]
#: Offsets sampled per file, and truncation points (fractions of the file's length).
FLIPS = 10
CUTS = (0.0, 0.1, 0.5, 0.9, 0.999)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    registry = Registry.create()
    config = registry.load_config(env={}, overrides=[*TINY, f"run.runs_dir={root}"])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return root / "tiny"


def damages(length: int, seed: int) -> list[tuple[str, Callable[[bytes], bytes]]]:
    """Named ways to damage a file of ``length`` bytes: truncations, and single flipped bytes."""
    rng = random.Random(seed)
    cases: list[tuple[str, Callable[[bytes], bytes]]] = [
        (f"cut at {fraction:.0%}", lambda data, f=fraction: data[: int(len(data) * f)]) for fraction in CUTS
    ]
    for offset in sorted(rng.sample(range(length), min(FLIPS, length))):

        def flip(data: bytes, at: int = offset) -> bytes:
            damaged = bytearray(data)
            damaged[at] ^= 1 << rng.randrange(8)
            return bytes(damaged)

        cases.append((f"flip at byte {offset}", flip))
    return cases


def weights(state: dict[str, object]) -> dict[str, torch.Tensor]:
    model = state["model"]
    assert isinstance(model, dict)
    return {key: value.detach().clone() for key, value in model.items() if isinstance(value, torch.Tensor)}


def resume(run_dir: Path) -> tuple[int, dict[str, torch.Tensor]] | EsperError:
    """Resume the run in ``run_dir``: the epoch and weights it continues from, or the error it stopped with."""
    try:
        trainer = Trainer(reopen_run(Registry.create(), run_dir))
    except EsperError as error:
        return error
    try:
        loaded = trainer.restore_latest()
        assert loaded is not None
        return trainer.history.epoch, weights({"model": trainer.run.model.state_dict()})
    except EsperError as error:
        return error
    finally:
        trainer.close()


def test_a_damaged_checkpoint_never_resumes_a_run_on_other_weights(finished: Path, tmp_path: Path) -> None:
    saved = {epoch: weights(load_checkpoint(finished / DIRECTORY / f"epoch-{epoch:04d}.pt")) for epoch in (1, 2, 3)}
    latest = finished / DIRECTORY / "epoch-0003.pt"
    outcomes = []
    for index, (name, damage) in enumerate(damages(latest.stat().st_size, seed=11)):
        run_dir = tmp_path / f"case-{index}"
        shutil.copytree(finished, run_dir)
        target = run_dir / DIRECTORY / "epoch-0003.pt"
        target.write_bytes(damage(target.read_bytes()))
        outcome = resume(run_dir)
        if isinstance(outcome, EsperError):
            outcomes.append((name, "error"))
            continue
        epoch, resumed = outcome
        expected = saved[epoch]
        for key, value in expected.items():
            assert torch.equal(resumed[key], value), f"{name}: resumed at epoch {epoch} with other weights ({key})"
        assert epoch == 2, f"{name}: a damaged epoch-3 checkpoint must fall back to epoch 2, resumed at {epoch}"
        outcomes.append((name, f"epoch {epoch}"))
    assert outcomes and all(outcome == "epoch 2" for _, outcome in outcomes), outcomes


def test_a_damaged_record_resumes_consistently_or_stops_with_an_error(finished: Path, tmp_path: Path) -> None:
    record = finished / RECORD_FILE
    outcomes = []
    for index, (name, damage) in enumerate(damages(record.stat().st_size, seed=23)):
        run_dir = tmp_path / f"case-{index}"
        shutil.copytree(finished, run_dir)
        (run_dir / RECORD_FILE).write_bytes(damage(record.read_bytes()))
        outcome = resume(run_dir)
        if isinstance(outcome, EsperError):
            outcomes.append((name, f"error: {str(outcome)[:60]}"))
            continue
        epoch, _ = outcome
        epochs = [entry["epoch"] for entry in read_record(run_dir) if entry["kind"] == "epoch"]
        assert epochs == list(range(1, epoch + 1)), f"{name}: resumed at epoch {epoch} with a record of {epochs}"
        outcomes.append((name, f"epoch {epoch}"))
    assert any(outcome.startswith("error") for _, outcome in outcomes), "some damage must be refused"
    assert any(outcome.startswith("epoch") for _, outcome in outcomes), "a lost tail must be recovered from"


def test_a_damaged_append_only_log_loses_only_damaged_records_never_returns_altered_ones(tmp_path: Path) -> None:
    """The field-report log (and every log on the core primitive): what it returns is exactly what was written."""
    path = tmp_path / "reports.log"
    written = [f"report {index}: contribution {index * 0.001:.4f}".encode() * (1 + index % 3) for index in range(40)]
    with AppendOnlyLog(path) as log:
        for payload in written:
            log.append(payload)
    original = path.read_bytes()
    for name, damage in damages(len(original), seed=37):
        path.write_bytes(damage(original))
        recovered = read_records(path)
        assert all(payload in written for payload in recovered), f"{name}: an altered record came back"
        positions = [written.index(payload) for payload in recovered]
        assert positions == sorted(positions), f"{name}: records came back out of order"
        if name.startswith("flip"):
            assert len(recovered) >= len(written) - 2, f"{name}: one flipped byte lost {len(written) - len(recovered)}"
        with AppendOnlyLog(path) as reopened:  # appending after damage keeps every intact record readable
            reopened.append(b"after the damage")
        assert read_records(path)[-1] == b"after the damage"
