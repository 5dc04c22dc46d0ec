"""The training ground: a plan that is a pure function of (seed, index), runs that are real ``esper run``s, bad
options named, and collection that resumes after a kill without training a run twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_core.plugins import Registry
from esper_simic.collect import collect
from esper_simic.ground import GroundOptions, heuristic_exploration, plan, slot_points
from esper_simic.replay import ReplayStore

QUICK = GroundOptions(families=["synthetic-mlp"], widths=[3, 4], blocks=[1, 2], epochs=[4, 5], samples=512)


def test_the_plan_is_a_function_of_seed_and_index() -> None:
    first = plan(GroundOptions(), seed=3, count=6)
    assert plan(GroundOptions(), seed=3, count=6) == first
    assert plan(GroundOptions(), seed=3, count=2, start=4) == first[4:]  # a resumed plan draws the same runs
    assert plan(GroundOptions(), seed=4, count=6) != first
    assert len({run.name for run in first}) == 6
    for run in first:
        assert run.family in GroundOptions().families and 10 <= run.epochs <= 16 and 0.5 <= run.budget <= 3.0
        assert f"tamiyo.heuristic.max_added_parameter_fraction={run.budget}" in run.overrides
        assert f"tamiyo.learned.max_added_parameter_fraction={run.budget}" in run.overrides  # the same budget


def test_slot_sets_name_the_built_in_hosts_points() -> None:
    assert slot_points("synthetic-mlp", 2, "all") == [
        "layers.0", "layers.1", "layers.0:input->layers.1.0", "layers.1:input->head",
    ]  # fmt: skip
    assert slot_points("fashion-mnist-cnn", 1, "width") == ["blocks.0:input->head"]
    assert slot_points("synthetic-cnn", 2, "residual") == ["blocks.0", "blocks.1"]


def test_every_drawn_configuration_loads() -> None:
    registry = Registry.create(env={})
    options = GroundOptions(families=["synthetic-mlp", "synthetic-cnn", "fashion-mnist-cnn"])
    for run in plan(options, seed=0, count=24):
        registry.load_config(env={}, overrides=[*run.overrides, *heuristic_exploration(run)])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"families": ["imagenet"]}, "unknown imagenet; choose among synthetic-mlp"),
        ({"epochs": [9, 3]}, r"epochs = \[9, 3\]: give \[lowest, highest\]"),
        ({"slot_sets": ["some"]}, "slot_sets: unknown some"),
        ({"widths": []}, "widths is empty"),
    ],
)
def test_bad_options_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroundOptions(**changes)  # type: ignore[arg-type]


@pytest.mark.slow
def test_collection_resumes_without_training_a_run_twice(tmp_path: Path) -> None:
    runs = plan(QUICK, seed=0, count=3)
    with ReplayStore(tmp_path / "replay", "digest") as store:
        first = collect(runs[:2], heuristic_exploration, store, tmp_path / "runs")
        assert sorted(first.collected) == [r.name for r in runs[:2]] and not first.failed
        (tmp_path / "runs" / runs[2].name).mkdir(parents=True)  # what a killed collection leaves behind
        (tmp_path / "runs" / runs[2].name / "record.log").write_bytes(b"half")
        again = collect(runs, heuristic_exploration, store, tmp_path / "runs")
        assert again.skipped == [r.name for r in runs[:2]] and again.collected == [runs[2].name]
        episodes = {episode.episode_id: episode for episode in store.episodes()}
    assert sorted(episodes) == [r.name for r in runs]
    outcome = episodes[runs[0].name].outcome
    assert outcome["ground"]["family"] == "synthetic-mlp" and outcome["budget"]["max_added_parameter_fraction"] == (
        runs[0].budget
    )
    assert not (tmp_path / "runs" / runs[0].name).exists()  # run directories go once their episode is stored


@pytest.mark.slow
def test_a_failing_run_is_reported_by_name_and_the_others_are_kept(tmp_path: Path) -> None:
    runs = plan(QUICK, seed=1, count=2)
    with ReplayStore(tmp_path / "replay", "digest") as store:
        summary = collect(
            runs,
            lambda run: ["tamiyo.policy=no-such-policy"] if run is runs[0] else [],
            store,
            tmp_path / "runs",
            workers=2,
        )
    assert summary.collected == [runs[1].name]
    ((name, error),) = summary.failed
    assert name == runs[0].name and "no-such-policy" in error
