"""``esper serve simic``'s service: rounds of gather, train, evaluate, publish; where it stands survives a restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from esper_core.errors import ConfigError
from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.storage.policy_store import PolicyStore
from esper_simic.replay import ReplayStore
from esper_simic.service import SimicService

pytestmark = pytest.mark.slow

QUICK = [
    'simic.ground.families=["synthetic-mlp"]',
    "simic.ground.widths=[3, 4]",
    "simic.ground.blocks=[1]",
    "simic.ground.epochs=[10, 11]",
    "simic.ground.samples=512",
    "simic.service.episodes_per_round=4",
    "simic.train.clone_epochs=20",
    "simic.train.iterations=2",
    "simic.evaluate.runs=2",
    "simic.evaluate.tolerance=1.0",  # the loop's plumbing is tested here; whether learning pays, in docs/results.md
]


def service(workspace: Path, *extra: str) -> SimicService:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*QUICK, f"simic.workspace={workspace}", *extra])
    built = registry.build(registry.service("simic"), config=config)
    assert isinstance(built, SimicService)
    return built


def test_rounds_gather_train_evaluate_publish_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, "simic-service-test-secret-0123456789abcdef")
    workspace = tmp_path / "simic"
    service(workspace, "simic.service.rounds=1").run(threading.Event())
    state = json.loads((workspace / "service.json").read_text())
    assert state["round"] == 1 and state["published"] == ["service-0"]
    live = PolicyStore(workspace / "policies").live()
    assert live is not None and live.version == "service-0"
    # Restarted: it continues with round 1, which samples from round 0's candidate and trains from its weights.
    service(workspace, "simic.service.rounds=2").run(threading.Event())
    state = json.loads((workspace / "service.json").read_text())
    assert state["round"] == 2 and state["published"] == ["service-0", "service-1"]
    with open(workspace / "candidates" / "service-1" / "training.json") as handle:
        assert json.load(handle)["episodes"] == 8  # both rounds' episodes
    digest = json.loads((workspace / "replay" / "store.json").read_text())["schema_digest"]
    with ReplayStore(workspace / "replay", digest) as store:
        deciders = {e.episode_id.rsplit("-", 1)[0]: {s["policy"] for s in e.steps} for e in store.episodes()}
    assert deciders == {"service-0": {"heuristic"}, "service-1": {"learned"}}


def test_a_stop_between_steps_leaves_nothing_half_done(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    service(tmp_path / "simic", "simic.service.rounds=1").run(stop)
    assert not (tmp_path / "simic" / "service.json").exists()


@pytest.mark.parametrize(
    "settings",
    [
        ["simic.service.episodes_per_round=0"],
        ["simic.service.episodes_per_round=0", "simic.service.listen=true"],
    ],
)
def test_a_service_with_nothing_new_to_learn_from_is_refused_naming_the_keys(settings: list[str]) -> None:
    registry = Registry.create(env={})
    with pytest.raises(ConfigError) as raised:
        registry.load_config(env={}, overrides=settings)
    message = str(raised.value)
    assert "simic.service.episodes_per_round is 0" in message and "bus_episodes_per_round > 0" in message
