"""``esper serve simic``: Simic's loop as a long-lived service — gather experience, train, validate, publish — round
after round, under the Weatherlight supervisor.

Each round:

1. gathers ``episodes_per_round`` new ground runs (the plan drawn from the round's number, so every round brings new
   configurations), decided by the previous round's candidate sampling from its distribution (on-policy experience),
   or by the heuristic in the first round; locally in worker processes, or through ``esper serve simic-worker``s on
   the bus with ``distributed = true``. With ``listen = true`` it also takes every run that finished since the last
   round among the runs that mirror their record on the bus (``tolaria.publish_record``: the user's own runs,
   decided by whatever policy they run), waiting for ``bus_episodes_per_round`` of them first; a listener thread
   rebuilds those records under ``WORKSPACE/incoming`` meanwhile (:mod:`esper_simic.listener`);
2. trains a candidate (``service-N``) on the whole replay store, starting from the previous candidate's weights;
3. evaluates it on the held-out plan against the live version and the heuristic (``[simic.evaluate]``);
4. publishes it (policy store, and the policy stream when the bus is shared) if it passed.

Where it stands (the next round's number, the last candidate) is written atomically to ``WORKSPACE/service.json``
after every round, so a service that was stopped or crashed continues with the round it was in: collection skips
the runs already stored, and training resumes from its checkpoint. ``stop`` is checked between steps: a step in
progress finishes first.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import attrs

from esper_core.config import section
from esper_core.config.validators import not_negative, positive
from esper_core.storage.atomic import atomic_write_text
from esper_simic.evaluation import evaluate
from esper_simic.ground import GroundOptions, plan
from esper_simic.listener import LISTENER_GROUP, RecordListener, RecordMirrors, take_finished
from esper_simic.publication import CANDIDATE_UPDATE, EVALUATION, publish
from esper_simic.rounds import behaviour_of, gather, train_candidate
from esper_simic.workbench import Workbench

__all__ = ["SimicService", "SimicServiceOptions"]

log = logging.getLogger("esper.simic.service")
STATE_FILE = "service.json"
#: Under the workspace: the records of runs heard on the bus (:class:`esper_simic.listener.RecordMirrors`).
INCOMING = "incoming"


@section("simic.service")
@attrs.frozen
class SimicServiceOptions:
    """``esper serve simic`` (docs/simic.md)."""

    #: New ground runs gathered in each round (0: none, learn from the bus only, with ``listen``).
    episodes_per_round: int = attrs.field(default=64, validator=not_negative)
    #: Rounds to run before the service stops on its own (0: until it is stopped).
    rounds: int = attrs.field(default=0, validator=not_negative)
    #: Gather through ``esper serve simic-worker``s on the bus instead of local worker processes.
    distributed: bool = False
    #: With ``distributed``: give up on runs still missing after this many seconds without a result.
    timeout_s: float = attrs.field(default=600.0, validator=positive)
    #: Also learn from runs that mirror their record on the shared bus (``tolaria.publish_record = true``).
    listen: bool = False
    #: With ``listen``: a round waits until at least this many of those runs have finished (0: takes what came).
    bus_episodes_per_round: int = attrs.field(default=0, validator=not_negative)

    def __attrs_post_init__(self) -> None:
        if self.episodes_per_round == 0 and not (self.listen and self.bus_episodes_per_round > 0):
            raise ValueError(
                f"episodes_per_round is 0 and listen is {str(self.listen).lower()} with bus_episodes_per_round "
                f"{self.bus_episodes_per_round}: every round would train on nothing new. Gather ground runs "
                "(episodes_per_round > 0), or listen to the bus and wait for some runs (listen = true, "
                "bus_episodes_per_round > 0)"
            )


class SimicService:
    """The ``simic`` service (see the module)."""

    name = "simic"

    def __init__(self, workbench: Workbench, options: SimicServiceOptions) -> None:
        self.workbench, self.options = workbench, options
        self.state_path = workbench.workspace / STATE_FILE
        self.state: dict[str, Any] = {"round": 0, "candidate": None, "published": []}
        if self.state_path.exists():
            self.state.update(json.loads(self.state_path.read_text()))

        self.mirrors = RecordMirrors(workbench.workspace / INCOMING) if options.listen else None
        self.listener: RecordListener | None = None

    def run(self, stop: threading.Event) -> None:
        if self.mirrors is not None:
            bus = self.workbench.shared_bus("simic.service.listen", LISTENER_GROUP)
            self.listener = RecordListener(bus, self.mirrors)
            self.listener.start(stop)
        try:
            while not stop.is_set() and (self.options.rounds == 0 or self.state["round"] < self.options.rounds):
                self.round(stop)
        finally:
            if self.listener is not None:
                self.listener.close()  # with the service, whatever ended the rounds

    def round(self, stop: threading.Event) -> None:
        """One round (see the module); returns early, with nothing half-done, when ``stop`` is set between steps."""
        workbench, number = self.workbench, int(self.state["round"])
        previous = Path(self.state["candidate"]) if self.state["candidate"] else None
        behaviour = behaviour_of(workbench, "learned", previous) if previous else behaviour_of(workbench, "heuristic")
        if self.mirrors is not None and not self._wait_for_bus_runs(stop):
            return
        runs = plan(workbench.config.get(GroundOptions), number, self.options.episodes_per_round, prefix="service")
        with workbench.replay() as store:
            if runs:
                gathered = gather(
                    workbench,
                    store,
                    runs,
                    behaviour,
                    distributed=self.options.distributed,
                    timeout_s=self.options.timeout_s,
                )
                log.info(
                    "round %d: gathered %d ground runs (%d failed)", number, len(gathered.collected),
                    len(gathered.failed),
                )  # fmt: skip
            if self.mirrors is not None:
                taken = take_finished(self.mirrors, store, workbench.reward_weights())
                log.info("round %d: took %d runs from the bus (%d refused)", number, taken.taken, len(taken.refused))
        if stop.is_set():
            return
        version = f"service-{number}"
        trained = train_candidate(workbench, version, initial=previous)
        candidate = Path(trained["directory"])
        log.info("round %d: trained %s on %d episodes", number, version, trained["episodes"])
        if stop.is_set():
            return
        verdict = evaluate(workbench, (candidate / CANDIDATE_UPDATE).resolve(), candidate / "evaluation")
        atomic_write_text(candidate / EVALUATION, json.dumps(verdict, indent=2))
        if verdict["passed"]:
            live, sent = publish(workbench, candidate)
            self.state["published"].append(live.version)
            log.info("round %d: published %s%s", number, live.version, " on the bus" if sent else "")
        else:
            log.info("round %d: %s not published: %s", number, version, "; ".join(verdict["reasons"]))
        self.state.update(round=number + 1, candidate=str(candidate))
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2))

    def _wait_for_bus_runs(self, stop: threading.Event) -> bool:
        """Wait until ``bus_episodes_per_round`` finished runs are mirrored; False when ``stop`` came first."""
        assert self.mirrors is not None
        wanted = self.options.bus_episodes_per_round
        while len(self.mirrors.finished()) < wanted:
            if stop.wait(0.5):
                return False
        return True
