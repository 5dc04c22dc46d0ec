"""Simic learns from runs it did not start, through a real Redis (127.0.0.1): two ordinary runs mirror their records
on the bus (``tolaria.publish_record``), ``esper serve simic`` with ``listen`` rebuilds them, takes them into its
replay store as exactly the episodes their run directories give, and trains its round on them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import RedisServer
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.trainer import Trainer
from esper_simic.experience import episode_from_run
from esper_simic.replay import ReplayStore
from esper_simic.service import SimicService

from remote_runs import SECRET, bus_settings
from tolaria_runs import BASE

pytestmark = pytest.mark.slow

#: The service learns from the bus only: no ground runs of its own, a round waits for two finished runs.
SERVICE = [
    'simic.ground.families=["synthetic-mlp"]',
    "simic.ground.widths=[3, 4]",
    "simic.ground.blocks=[1]",
    "simic.ground.epochs=[10, 11]",
    "simic.ground.samples=512",
    "simic.service.episodes_per_round=0",
    "simic.service.listen=true",
    "simic.service.bus_episodes_per_round=2",
    "simic.service.rounds=1",
    "simic.train.clone_epochs=20",
    "simic.train.iterations=2",
    "simic.evaluate.runs=2",
    "simic.evaluate.tolerance=1.0",
]


def user_run(runs: Path, name: str, bus: list[str], seed: int) -> Path:
    registry = Registry.create(env={})
    settings = [*BASE, *bus, "run.epochs=8", "nissa.report.automatic=false", "tolaria.publish_record=true",
                "tamiyo.policy=heuristic", f"run.seed={seed}", f"run.runs_dir={runs}", f"run.name={name}"]  # fmt: skip
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=settings)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return runs / name


def test_the_service_learns_from_runs_that_mirror_their_record_on_the_bus(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    bus = bus_settings(redis_server.url)
    workspace = tmp_path / "simic"
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*SERVICE, *bus, f"simic.workspace={workspace}"])
    service = registry.build(registry.service("simic"), config=config)
    assert isinstance(service, SimicService)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        runs = [
            user_run(tmp_path / "runs", "users-first", bus, seed=1),
            user_run(tmp_path / "runs", "users-second", bus, seed=2),
        ]
        thread.join(timeout=300)
        assert not thread.is_alive(), "the service's round finished"
    finally:
        stop.set()
        thread.join(timeout=30)
    state = json.loads((workspace / "service.json").read_text())
    assert state["round"] == 1
    with open(workspace / "candidates" / "service-0" / "training.json") as handle:
        assert json.load(handle)["episodes"] == 2
    digest = json.loads((workspace / "replay" / "store.json").read_text())["schema_digest"]
    with ReplayStore(workspace / "replay", digest) as store:
        stored = {episode.episode_id: episode for episode in store.episodes()}
    assert sorted(stored) == ["users-first", "users-second"]
    for run in runs:
        from_directory = episode_from_run(run, digest).episode
        heard = stored[run.name]
        assert heard.steps == from_directory.steps, "the bus gave exactly the episode the run directory gives"
        assert {**heard.outcome, "source": None} == {**from_directory.outcome, "source": None}
        assert heard.outcome["source"] == "bus"
    assert "germinate" in {s["operation"] for s in stored["users-first"].steps}, "the run grew: something to learn"
    assert list((workspace / "incoming" / "finished").iterdir()) == [], "taken runs leave the incoming directory"
