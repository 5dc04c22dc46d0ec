"""Emergency drills on real runs: each level of the ladder is raised the way another process would raise it (an
EmergencySignal on the run's emergency stream) and gets its response, recorded with its cause. ELEVATED pauses the
seeds in flight and resumes them once calm; CONSERVATIVE removes every seed that is not fossilized; HALT stops the
run after its checkpoint, and the run resumes; repeated emergencies halt; a NaN seed's rollback raises ELEVATED."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esper_core.leyline import EmergencyLevel, EmergencySignal
from esper_core.plugins import Registry
from esper_core.tolaria.assembly import reopen_run, start_run
from esper_core.tolaria.emergency import RunHalted
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Trainer

from tolaria_runs import BASE, SaboteurPlugin, schedule

pytestmark = pytest.mark.slow

RUN = [*BASE, "run.epochs=8", "nissa.report.automatic=false", *schedule(1)]


def signal_at(trainer: Trainer, epochs: dict[int, EmergencyLevel.ValueType]) -> Callable[..., None]:
    """An ``on_epoch`` callback that publishes a signal for the run at the end of the given epochs, as Nissa's alerts
    or an operator would."""

    def publish(epoch: int, *_: Any) -> None:
        if epoch in epochs:
            signal = EmergencySignal(version=1, level=epochs[epoch], reason=f"drill at epoch {epoch}", origin="nissa",
                                     training_run_id=trainer.run.run_id)  # fmt: skip
            trainer.run.bus.publish(signal)

    return publish


def drill(tmp_path: Path, name: str, epochs: dict[int, EmergencyLevel.ValueType], *settings: str) -> Path:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*RUN, f"run.runs_dir={tmp_path}", f"run.name={name}", *settings])
    trainer = Trainer(start_run(registry, config))
    trainer.on_epoch = signal_at(trainer, epochs)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return tmp_path / name


def entries(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [entry for entry in read_record(run_dir) if entry["kind"] == kind]


def test_elevated_pauses_the_seeds_in_flight_and_resumes_them_when_calm(tmp_path: Path) -> None:
    run_dir = drill(tmp_path, "elevated", {2: EmergencyLevel.EMERGENCY_LEVEL_ELEVATED})
    [emergency] = entries(run_dir, "emergency")
    assert (emergency["epoch"], emergency["level"], emergency["origin"]) == (3, "ELEVATED", "nissa")
    assert emergency["reason"] == "drill at epoch 2" and emergency["response"].startswith("paused layers.0")
    [over] = entries(run_dir, "emergency_over")
    assert over["epoch"] == 5 and over["resumed"] == ["layers.0"], "two calm decision points later"
    decisions = {entry["epoch"]: entry for entry in entries(run_dir, "decision")}
    assert decisions[3]["operation"] == "noop" and "conservative mode" in decisions[3]["rationale"]


def test_conservative_removes_every_seed_not_fossilized(tmp_path: Path) -> None:
    run_dir = drill(tmp_path, "conservative", {2: EmergencyLevel.EMERGENCY_LEVEL_CONSERVATIVE})
    [emergency] = entries(run_dir, "emergency")
    assert emergency["response"].startswith("removed every seed not fossilized (culled: layers.0)")
    culls = [e for e in entries(run_dir, "transition") if e["target"] == "CULLED"]
    assert culls and culls[0]["epoch"] == 3 and culls[0]["reason"].startswith("emergency: drill at epoch 2")


def test_halt_stops_after_the_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    with pytest.raises(RunHalted, match="the run halted at epoch 3: emergency from nissa") as halted:
        drill(tmp_path, "halt", {2: EmergencyLevel.EMERGENCY_LEVEL_HALT})
    run_dir = tmp_path / "halt"
    assert f"esper run --resume {run_dir}" in str(halted.value)
    assert [e["epoch"] for e in entries(run_dir, "epoch")] == [1, 2, 3], "stopped after epoch 3's checkpoint"
    registry = Registry.create(env={})
    trainer = Trainer(reopen_run(registry, run_dir))
    try:
        assert trainer.restore_latest() is not None
        summary = trainer.fit()
    finally:
        trainer.close()
    assert summary.epochs == 8
    [emergency] = entries(run_dir, "emergency")
    assert emergency["level"] == "HALT" and emergency["epoch"] == 3, "the halt and its cause stay in the record"


def test_repeated_emergencies_halt_the_run(tmp_path: Path) -> None:
    elevated = EmergencyLevel.EMERGENCY_LEVEL_ELEVATED
    with pytest.raises(RunHalted, match=r"\(2 emergencies in a row\)"):
        drill(tmp_path, "repeated", {2: elevated, 3: elevated}, "tolaria.emergency.halt_after=2")
    levels = [(e["level"], e["escalated_to"]) for e in entries(tmp_path / "repeated", "emergency")]
    assert levels == [("ELEVATED", None), ("ELEVATED", "HALT")]


def test_a_nan_seed_rolled_back_raises_elevated_from_tolaria(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    registry.pm.register(SaboteurPlugin(), name="saboteur")
    registry.invalidate()
    settings = [*BASE, "run.epochs=6", "nissa.report.automatic=false", 'urza.catalogs=["saboteur"]',
                *schedule(1, blueprint="BP990"), f"run.runs_dir={tmp_path}", "run.name=nan"]  # fmt: skip
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=settings)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    [emergency] = entries(tmp_path / "nan", "emergency")
    assert (emergency["level"], emergency["origin"]) == ("ELEVATED", "tolaria")
    assert emergency["reason"].startswith("rollback: ") and "nan" in emergency["reason"].lower()
