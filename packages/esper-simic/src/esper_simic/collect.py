"""Collection: ground runs in parallel worker processes, each finished run turned into an episode in the replay store.

Each worker is a separate process (``spawn``: nothing of the parent's torch state is inherited) that imports Esper
once and then trains one ground run after another in-process, exactly as ``esper run`` would (the registry, the
configured controller, checkpoints, the run record). The parent turns each finished run directory into an episode
(:func:`esper_simic.experience.episode_from_run`) and appends it to the replay store, whose log is fsynced per
episode. A collection that is killed loses only the runs in flight: started again with the same plan, it skips the
runs whose episodes are already in the store and trains the others from the start (a half-finished run directory
is removed first).

Failed runs are reported with their name and error, never silently dropped; the collection goes on with the others.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from esper_simic.experience import RunDamaged, episode_from_run
from esper_simic.ground import GroundRun
from esper_simic.replay import ReplayStore
from esper_simic.rewards import RewardWeights

__all__ = ["CollectSummary", "collect", "run_ground"]

#: Overrides every ground run gets: one thread per worker, no telemetry sinks or report, quiet decisions.
COMMON = (
    "run.threads=1",
    "nissa.sinks=[]",
    "nissa.report.automatic=false",
    "tolaria.keep_checkpoints=1",
)


@attrs.frozen
class CollectSummary:
    collected: list[str]
    skipped: list[str]
    #: ``(run name, error)`` for each run that failed.
    failed: list[tuple[str, str]]
    seconds: float


def run_ground(name: str, overrides: Sequence[str], runs_dir: str, config: str | None) -> tuple[str, float]:
    """Train one ground run in this process (what a worker does); returns its directory and wall seconds."""
    from esper_core.plugins.registry import Registry
    from esper_core.tolaria.assembly import start_run
    from esper_core.tolaria.trainer import Trainer

    started = time.perf_counter()
    target = Path(runs_dir) / name
    if target.exists():
        shutil.rmtree(target)  # a run killed with its collection: it starts over
    registry = Registry.create()
    every = [*COMMON, *overrides, f"run.runs_dir={runs_dir}", f"run.name={name}"]
    loaded = registry.load_config(Path(config) if config else None, overrides=every)
    trainer = Trainer(start_run(registry, loaded))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return str(target), time.perf_counter() - started


def _run_safely(name: str, overrides: Sequence[str], runs_dir: str, config: str | None) -> tuple[str, float, str]:
    try:
        directory, seconds = run_ground(name, overrides, runs_dir, config)
    except BaseException as error:  # noqa: BLE001 - reported to the parent with the run's name
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return "", 0.0, detail
    return directory, seconds, ""


def collect(
    runs: Sequence[GroundRun],
    behaviour: Callable[[GroundRun], Sequence[str]],
    store: ReplayStore,
    runs_dir: Path,
    *,
    workers: int = 1,
    config: Path | None = None,
    weights: RewardWeights | None = None,
    keep_runs: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    settings: Sequence[str] = (),
) -> CollectSummary:
    """Train ``runs`` under ``behaviour(run)``'s overrides and add their episodes to ``store`` (see the module).
    ``settings`` come first in every run's overrides (the run's own and the behaviour's win over them): the learner's
    policy options (:meth:`esper_simic.workbench.Workbench.policy_settings`)."""
    started = time.perf_counter()
    have = {episode.episode_id for episode in store.episodes()}
    todo = [run for run in runs if run.name not in have]
    skipped = [run.name for run in runs if run.name in have]
    collected: list[str] = []
    failed: list[tuple[str, str]] = []
    runs_dir.mkdir(parents=True, exist_ok=True)
    total = len(todo)

    def finished(run: GroundRun, directory: str, error: str) -> None:
        if error:
            failed.append((run.name, error))
        else:
            try:
                experience = episode_from_run(directory, store.schema_digest, weights)
            except RunDamaged as damaged:
                failed.append((run.name, str(damaged)))
            else:
                outcome = {**experience.episode.outcome, "ground": run.describe()}
                store.add(attrs.evolve(experience.episode, episode_id=run.name, outcome=outcome))
                collected.append(run.name)
                if not keep_runs:
                    shutil.rmtree(directory, ignore_errors=True)
        if progress is not None:
            progress(run.name, len(collected) + len(failed), total)

    config_text = str(config) if config is not None else None
    if workers <= 1:
        for run in todo:
            overrides = [*settings, *run.overrides, *behaviour(run)]
            directory, _, error = _run_safely(run.name, overrides, str(runs_dir), config_text)
            finished(run, directory, error)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                pool.submit(
                    _run_safely, run.name, [*settings, *run.overrides, *behaviour(run)], str(runs_dir), config_text
                ): run
                for run in todo
            }
            for future in concurrent.futures.as_completed(futures):
                directory, _, error = future.result()
                finished(futures[future], directory, error)
    return CollectSummary(collected, skipped, failed, time.perf_counter() - started)
