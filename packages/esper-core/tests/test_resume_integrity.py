"""Resuming from damaged files: checkpoints are checked against their digest, the run record against the position
each checkpoint remembers; damage is a clear error or a fall-back to a consistent state, never a silent divergence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esper_core.cli.main import main
from esper_core.plugins import Registry
from esper_core.storage.appendlog import scan
from esper_core.tolaria.assembly import reopen_run, start_run
from esper_core.tolaria.checkpoint import DIRECTORY, LATEST, DamagedCheckpoint, load_checkpoint
from esper_core.tolaria.record import RECORD_FILE, RecordDamaged, read_record
from esper_core.tolaria.trainer import Trainer

TINY = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=512",
    "run.synthetic.widths=[8]",
    "run.batch_size=64",
    "run.epochs=3",
    "run.name=tiny",
    "nissa.sinks=[]",
    "tolaria.keep_checkpoints=10",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-epoch run with a checkpoint per epoch (copied by each test before it damages anything)."""
    root = tmp_path_factory.mktemp("finished")
    registry = Registry.create()
    config = registry.load_config(env={}, overrides=[*TINY, f"run.runs_dir={root}"])
    trainer = Trainer(start_run(registry, config))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return root / "tiny"


@pytest.fixture
def run_dir(finished: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture
def resumed(run_dir: Path) -> Iterator[Trainer]:
    trainer = Trainer(reopen_run(Registry.create(), run_dir))
    yield trainer
    trainer.close()


def checkpoint(run_dir: Path, epoch: int) -> Path:
    return run_dir / DIRECTORY / f"epoch-{epoch:04d}.pt"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def epochs_in(run_dir: Path) -> list[int]:
    return [entry["epoch"] for entry in read_record(run_dir) if entry["kind"] == "epoch"]


def test_one_flipped_byte_inside_a_tensor_is_refused_not_loaded(run_dir: Path) -> None:
    path = checkpoint(run_dir, 3)
    flip(path, len(path.read_bytes()) * 2 // 3)  # deep inside the payload: tensor bytes torch never checks
    with pytest.raises(DamagedCheckpoint, match="does not match its SHA-256"):
        load_checkpoint(path)


def test_a_damaged_latest_falls_back_to_the_newest_intact_one_and_the_record_is_cut_to_match(
    run_dir: Path, finished: Path
) -> None:
    flip(checkpoint(run_dir, 3), len(checkpoint(run_dir, 3).read_bytes()) // 2)
    trainer = Trainer(reopen_run(Registry.create(), run_dir))
    try:
        loaded = trainer.restore_latest()
        assert loaded is not None and loaded.path.name == "epoch-0002.pt"
        assert [skipped.path.name for skipped in loaded.skipped] == ["epoch-0003.pt"]
        assert "SHA-256" in loaded.skipped[0].reason
        assert trainer.history.epoch == 2 and epochs_in(run_dir) == [1, 2]
        trainer.fit()  # and it finishes the run again from there
    finally:
        trainer.close()
    assert epochs_in(run_dir) == [1, 2, 3] == epochs_in(finished)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "garbage"])
def test_other_damage_to_the_latest_falls_back_too(run_dir: Path, damage: str) -> None:
    path = checkpoint(run_dir, 3)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "emptied": b"", "garbage": b"\x00not a checkpoint"}[damage])
    trainer = Trainer(reopen_run(Registry.create(), run_dir))
    try:
        loaded = trainer.restore_latest()
        assert loaded is not None and loaded.path.name == "epoch-0002.pt" and len(loaded.skipped) == 1
    finally:
        trainer.close()


def test_latest_naming_a_missing_file_is_not_mistaken_for_a_run_without_checkpoints(resumed: Trainer) -> None:
    run_dir = resumed.run.run_dir
    checkpoint(run_dir, 3).unlink()
    loaded = resumed.restore_latest()
    assert loaded is not None and loaded.path.name == "epoch-0002.pt"
    assert "does not exist" in loaded.skipped[0].reason
    for epoch in (1, 2):
        checkpoint(run_dir, epoch).unlink()
    with pytest.raises(DamagedCheckpoint, match="no usable checkpoint"):
        resumed.restore_latest()


def test_no_usable_checkpoint_is_one_clear_error_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for epoch in (1, 2, 3):
        flip(checkpoint(run_dir, epoch), 200)
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esper: error:") and err.count("\n") == 1 and "no usable checkpoint" in err


def test_a_record_cut_short_resumes_from_the_newest_checkpoint_it_still_agrees_with(resumed: Trainer) -> None:
    run_dir = resumed.run.run_dir
    at_epoch_1 = load_checkpoint(checkpoint(run_dir, 1))["record_bytes"]
    at_epoch_2 = load_checkpoint(checkpoint(run_dir, 2))["record_bytes"]
    record = run_dir / RECORD_FILE
    record.write_bytes(record.read_bytes()[: (at_epoch_1 + at_epoch_2) // 2])  # mid-way through epoch 2's entries
    resumed.run.record.close()
    resumed = Trainer(reopen_run(Registry.create(), run_dir))
    try:
        loaded = resumed.restore_latest()
        assert loaded is not None and loaded.path.name == "epoch-0001.pt"
        assert [skipped.path.name for skipped in loaded.skipped] == ["epoch-0003.pt", "epoch-0002.pt"]
        assert "intact only up to byte" in loaded.skipped[0].reason
        assert epochs_in(run_dir) == [1]
    finally:
        resumed.close()


def test_a_damaged_entry_in_the_middle_of_the_record_is_an_error_naming_its_offset(run_dir: Path) -> None:
    record = run_dir / RECORD_FILE
    data = record.read_bytes()
    offset = len(data) // 3
    flip(record, offset)
    damaged_at = scan(record.read_bytes()).first_damage
    assert damaged_at is not None and damaged_at <= offset
    trainer = Trainer(reopen_run(Registry.create(), run_dir))
    try:
        with pytest.raises(RecordDamaged, match=f"damaged at byte {damaged_at}"):
            trainer.restore_latest()
    finally:
        trainer.close()


def test_positions_are_byte_offsets_so_the_record_after_a_checkpoint_is_cut_exactly(run_dir: Path) -> None:
    """A checkpoint remembers where the record ended; entries written after it go, whatever their count."""
    state = load_checkpoint(checkpoint(run_dir, 2))
    assert "record_bytes" in state and "record_length" not in state
    trainer = Trainer(reopen_run(Registry.create(), run_dir))
    try:
        trainer.restore(state)
        assert (run_dir / RECORD_FILE).stat().st_size == state["record_bytes"]
    finally:
        trainer.close()


def test_temporary_files_a_kill_left_behind_are_removed_on_resume(run_dir: Path) -> None:
    left = [run_dir / DIRECTORY / ".epoch-0004.pt.k3j2.tmp", run_dir / f".{RECORD_FILE}.x9a1.tmp"]
    for path in left:
        path.write_bytes(b"half written")
    unrelated = run_dir / "notes.tmp"
    unrelated.write_text("mine")
    reopen_run(Registry.create(), run_dir).record.close()
    assert not any(path.exists() for path in left)
    assert unrelated.exists(), "only the atomic write's own temporaries are removed"
    assert (run_dir / DIRECTORY / LATEST).exists()
