"""Every run Simic starts builds the policy it trains: the learner's non-default policy options (here two rounds of
message passing, a network an update trained with them needs) reach each ground run, and the run's own drawn budget
still wins over the learner's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from esper_core.plugins import Registry
from esper_simic.ground import GroundOptions, plan
from esper_simic.rounds import behaviour_of, gather
from esper_simic.workbench import workbench_of

from simic_runs import GROUND

pytestmark = pytest.mark.slow


def test_the_learners_policy_options_reach_every_ground_run_and_the_runs_budget_wins(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    settings = [*GROUND, "simic.workers=1", f"simic.workspace={tmp_path}", "tamiyo.learned.message_rounds=2",
                "tamiyo.learned.max_added_parameter_fraction=0.25"]  # fmt: skip
    workbench = workbench_of(registry, registry.load_config(env={}, overrides=settings))
    assert workbench.policy_settings() == [
        "tamiyo.learned.message_rounds=2",
        "tamiyo.learned.max_added_parameter_fraction=0.25",
    ]
    [run] = plan(workbench.config.get(GroundOptions), 0, 1)
    with workbench.replay() as store:
        summary = gather(workbench, store, [run], behaviour_of(workbench, "heuristic"), keep_runs=True)
    assert summary.failed == []
    config = tomllib.loads((tmp_path / "runs" / run.name / "config.toml").read_text())
    assert config["tamiyo"]["learned"]["message_rounds"] == 2
    assert config["tamiyo"]["learned"]["max_added_parameter_fraction"] == pytest.approx(run.budget)


def test_a_learner_on_defaults_passes_nothing(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[f"simic.workspace={tmp_path}"])
    assert workbench_of(registry, config).policy_settings() == []
