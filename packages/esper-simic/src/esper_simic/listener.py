"""Experience from runs Simic did not start: run records mirrored on the bus, rebuilt on disk, turned into episodes.

A run with ``tolaria.publish_record`` publishes each entry of its ``record.log`` as a ``RunRecordEntry`` on Oona's
``record`` stream (with its resolved configuration on the first one). :class:`RecordMirrors` writes the entries of
each run back into a directory of its own, byte for byte as the run wrote them, so that everything that reads a run
directory reads the mirror the same way: :func:`esper_simic.experience.episode_from_run` makes it an episode, and
``esper simic collect --from`` accepts it.

- ``<root>/open/<run id>/``: runs still going (``record.log``, ``config.toml``).
- ``<root>/finished/<run id>/``: runs whose ``run_finished`` entry arrived, moved there whole (one rename), waiting
  for the service's next round to take them into the replay store.

Each entry says where it starts in the run's record. The mirror appends an entry that starts at its end; ignores one
it already holds (a message delivered twice); cuts itself back to an entry that starts earlier with other bytes (the
run resumed from a checkpoint, or rolled back, and rewrote its record from there); and gives the run up when an
entry starts beyond its end (entries it never received: the service started after the run did, or the stream was
trimmed), with one warning naming the run. The mirror's state is its files, so a listener that restarts continues
where its files stand; an entry is acknowledged only once it is written and durable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import attrs

from esper_core.leyline import RunRecordEntry
from esper_core.oona import Oona
from esper_core.storage.appendlog import AppendOnlyLog, encode_record
from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text
from esper_core.tolaria.record import RECORD_FILE
from esper_simic.experience import RunDamaged, episode_from_run
from esper_simic.replay import ReplayStore
from esper_simic.rewards import RewardWeights

__all__ = ["RecordListener", "RecordMirrors", "Taken", "take_finished"]

log = logging.getLogger("esper.simic.listener")

#: The consumer group the listener reads the record stream in: one group, so each entry is mirrored once.
LISTENER_GROUP = "simic-listener"
CONFIG_FILE = "config.toml"


class RecordMirrors:
    """The runs' records rebuilt from their bus entries, under ``root`` (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open_dir, self.finished_dir = root / "open", root / "finished"
        self.open_dir.mkdir(parents=True, exist_ok=True)
        self.finished_dir.mkdir(parents=True, exist_ok=True)
        self._logs: dict[str, AppendOnlyLog] = {}
        #: Runs given up for a gap in their entries (warned about once each).
        self.incomplete: set[str] = set()

    def receive(self, message: RunRecordEntry) -> str | None:
        """Mirror one entry; the run's id when this entry finished the run (its mirror is then in ``finished/``)."""
        run = message.training_run_id
        if not _safe_name(run):
            log.warning("a record entry for a run named %r was ignored: not a usable directory name", run)
            return None
        directory = self.open_dir / run
        if message.offset == 0:
            self.incomplete.discard(run)  # a run starting (again) under this name
            directory.mkdir(exist_ok=True)
            if message.config_toml:
                atomic_write_text(directory / CONFIG_FILE, message.config_toml)
        elif run in self.incomplete:
            return None
        record = self._log(run) if directory.is_dir() else None
        end = record.end_offset if record is not None else 0
        entry = bytes(message.entry)
        if record is None or message.offset > end:
            self._give_up(run, f"its entries from byte {end} to {message.offset} never arrived")
            return None
        if message.offset < end:
            framed = encode_record(entry)
            with open(record.path, "rb") as held:
                held.seek(message.offset)
                if held.read(len(framed)) == framed:
                    return None  # delivered twice
            self._cut(run, message.offset)
            record = self._log(run)
        record.append(entry)
        if _kind(entry) == "run_finished":
            self._finish(run)
            return run
        return None

    def finished(self) -> list[Path]:
        """The mirrors of finished runs, oldest first, each a run directory."""
        return sorted(self.finished_dir.iterdir(), key=lambda path: path.stat().st_mtime)

    def close(self) -> None:
        for record in self._logs.values():
            record.close()
        self._logs.clear()

    def _log(self, run: str) -> AppendOnlyLog:
        if run not in self._logs:
            self._logs[run] = AppendOnlyLog(self.open_dir / run / RECORD_FILE)
        return self._logs[run]

    def _cut(self, run: str, offset: int) -> None:
        record = self._logs.pop(run)
        record.close()
        atomic_write_bytes(record.path, record.path.read_bytes()[:offset])

    def _finish(self, run: str) -> None:
        self._logs.pop(run).close()
        target = self.finished_dir / run
        if target.exists():  # the same run finished before and was never taken: the newer one wins
            shutil.rmtree(target)
        os.replace(self.open_dir / run, target)

    def _give_up(self, run: str, why: str) -> None:
        self.incomplete.add(run)
        record = self._logs.pop(run, None)
        if record is not None:
            record.close()
        shutil.rmtree(self.open_dir / run, ignore_errors=True)
        log.warning("run %s is not learned from: %s (was it started before this listener?)", run, why)


class RecordListener:
    """Mirrors the ``record`` stream into :class:`RecordMirrors` on a thread of its own until stopped."""

    def __init__(self, bus: Oona, mirrors: RecordMirrors) -> None:
        self.bus, self.mirrors = bus, mirrors
        self.finished_runs = 0
        # From the stream's start the first time the group is made: entries published before the service came up
        # are still learned from (a group that exists keeps its own position).
        bus.subscribe([bus.streams.record], from_start=True)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self, stop: threading.Event) -> None:
        """Listen on a thread of its own until ``stop`` is set or :meth:`close` is called."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="esper-simic-listener", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        try:
            while not (stop.is_set() or self._closing.is_set()):
                self.drain(block_ms=200)
        finally:
            self.mirrors.close()

    def drain(self, *, block_ms: int = 0) -> int:
        """Mirror what the stream holds now (waiting up to ``block_ms`` for something); the entries handled."""
        messages = self.bus.poll([self.bus.streams.record], count=256, block_ms=block_ms)
        for message in messages:
            if isinstance(message.payload, RunRecordEntry) and self.mirrors.receive(message.payload) is not None:
                self.finished_runs += 1
        if messages:
            self.bus.ack_many(messages)
        return len(messages)


@attrs.frozen
class Taken:
    """What :func:`take_finished` did: episodes stored, and the runs refused with why."""

    taken: int
    refused: list[tuple[str, str]]


def take_finished(mirrors: RecordMirrors, store: ReplayStore, weights: RewardWeights) -> Taken:
    """Every finished run's mirror into ``store`` as an episode (as ``esper simic collect --from`` reads a run
    directory), then off the disk. A run whose record gives no episode is refused with a warning naming it."""
    taken, refused = 0, []
    for directory in mirrors.finished():
        try:
            experience = episode_from_run(directory, store.schema_digest, weights)
        except RunDamaged as error:
            refused.append((directory.name, str(error)))
            log.warning("run %s from the bus gives no episode: %s", directory.name, error)
        else:
            episode = experience.episode
            store.add(attrs.evolve(episode, outcome={**episode.outcome, "source": "bus"}))
            taken += 1
        shutil.rmtree(directory)
    return Taken(taken, refused)


def _kind(entry: bytes) -> str:
    """The record entry's ``kind`` (empty for bytes that are not an entry: they are mirrored as they came)."""
    try:
        return str(json.loads(entry).get("kind", ""))
    except (ValueError, AttributeError):
        return ""


def _safe_name(name: str) -> bool:
    return bool(name) and name not in {".", ".."} and all(c.isalnum() or c in "._-" for c in name)
