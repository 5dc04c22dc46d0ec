"""Collection on several machines through Oona: ``esper serve simic-worker`` trains ground runs that
``esper simic collect --distributed`` asks for, and sends their episodes back.

- The collector subscribes to the results stream (group ``simic-collector``), then publishes a ``GroundRunRequest``
  for each planned run whose episode the replay store does not have yet, and stores each ``GroundRunResult``'s episode
  as it arrives. It accepts a result for any run it still needs, whichever collection asked for it, so a collector
  that was killed and started again keeps what the workers finished in the meantime.
- Workers share one consumer group (``simic-worker``, Weatherlight's group for the service): each request is trained
  by one of them, in-process, exactly as ``esper simic collect`` trains a run locally; a worker that dies leaves its
  request pending, and another one claims it once it has been idle ``oona.claim_idle_ms``. A request is acknowledged
  only after its result is published.

Every message is signed with the shared secret (``ESPER_LEYLINE_SECRET``) like everything else on the bus.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from google.protobuf.timestamp_pb2 import Timestamp

from esper_core.config import section
from esper_core.errors import EsperError
from esper_core.leyline import GroundRunRequest, GroundRunResult
from esper_core.oona import Oona
from esper_simic.collect import CollectSummary, run_ground
from esper_simic.experience import RunDamaged, episode_from_run
from esper_simic.ground import GroundRun
from esper_simic.replay import Episode, ReplayStore
from esper_simic.rewards import RewardWeights

__all__ = ["CollectionWorker", "WorkerOptions", "collect_distributed"]

#: The collector's consumer group on the results stream.
COLLECTOR_GROUP = "simic-collector"


@section("simic.worker")
@attrs.frozen
class WorkerOptions:
    """``esper serve simic-worker``."""

    #: Where a worker trains its runs (each removed once its episode is sent).
    runs_dir: Path = Path("var/simic-worker/runs")


class CollectionWorker:
    """The ``simic-worker`` service (see the module)."""

    name = "simic-worker"

    def __init__(self, bus: Oona, options: WorkerOptions, weights: RewardWeights) -> None:
        self.bus, self.options, self.weights = bus, options, weights
        self.trained = 0
        self.bus.subscribe([self.bus.streams.simic_jobs])

    def run(self, stop: threading.Event) -> None:
        stream = self.bus.streams.simic_jobs
        while not stop.is_set():
            for message in self.bus.poll([stream], count=1, block_ms=200):
                if isinstance(message.payload, GroundRunRequest):
                    self.bus.publish(self.answer(message.payload))
                self.bus.ack(message)

    def answer(self, request: GroundRunRequest) -> GroundRunResult:
        """Train the requested run and return its episode (or the error)."""
        started = time.perf_counter()
        result = GroundRunResult(
            version=1, collection_id=request.collection_id, run_name=request.run_name, worker=self.bus.consumer
        )
        try:
            directory, _ = run_ground(request.run_name, list(request.overrides), str(self.options.runs_dir), None)
            experience = episode_from_run(directory, request.schema_digest, self.weights)
        except (EsperError, RunDamaged, ValueError, RuntimeError, OSError) as error:
            result.ok, result.error = False, "".join(traceback.format_exception_only(type(error), error)).strip()
        else:
            episode = attrs.evolve(experience.episode, episode_id=request.run_name)
            result.ok, result.episode = True, json.dumps(episode.as_record()).encode()
            shutil.rmtree(directory, ignore_errors=True)
            self.trained += 1
        result.seconds = time.perf_counter() - started
        return result


def collect_distributed(
    runs: Sequence[GroundRun],
    behaviour: Callable[[GroundRun], Sequence[str]],
    store: ReplayStore,
    bus: Oona,
    *,
    collection_id: str,
    timeout_s: float = 600.0,
    progress: Callable[[str, int, int], None] | None = None,
    settings: Sequence[str] = (),
) -> CollectSummary:
    """Ask workers for ``runs`` and store their episodes (see the module). Gives up on the runs still missing once no
    result has arrived for ``timeout_s`` seconds, and reports them as failed."""
    started = time.perf_counter()
    have = {episode.episode_id for episode in store.episodes()}
    todo = {run.name: run for run in runs if run.name not in have}
    skipped = [run.name for run in runs if run.name in have]
    collected: list[str] = []
    failed: list[tuple[str, str]] = []
    results = bus.streams.simic_results
    bus.subscribe([results])  # before asking: a group starts at the stream's end
    now = Timestamp()
    now.GetCurrentTime()
    for run in todo.values():
        bus.publish(
            GroundRunRequest(
                version=1,
                collection_id=collection_id,
                run_name=run.name,
                overrides=[*settings, *run.overrides, *behaviour(run)],
                schema_digest=store.schema_digest,
                issued_at=now,
            )
        )
    total = len(todo)
    last_heard = time.monotonic()
    while todo and time.monotonic() - last_heard < timeout_s:
        for message in bus.poll([results], count=16, block_ms=500):
            payload = message.payload
            if isinstance(payload, GroundRunResult) and payload.run_name in todo:
                last_heard = time.monotonic()
                run = todo.pop(payload.run_name)
                if payload.ok:
                    store.add(_episode(payload, run))
                    collected.append(run.name)
                else:
                    failed.append((run.name, f"{payload.error} (worker {payload.worker})"))
                if progress is not None:
                    progress(run.name, len(collected) + len(failed), total)
            bus.ack(message)
    failed += [(name, f"no worker answered within {timeout_s:.0f} s") for name in todo]
    return CollectSummary(collected, skipped, failed, time.perf_counter() - started)


def _episode(result: GroundRunResult, run: GroundRun) -> Episode:
    record: dict[str, Any] = json.loads(result.episode)
    episode = Episode.from_record(record)
    return attrs.evolve(episode, outcome={**episode.outcome, "ground": run.describe(), "worker": result.worker})
