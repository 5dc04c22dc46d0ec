"""Simic's replay store: the episodes a learner trains on, kept crash-safe, bounded and of one feature schema.

An episode is what one run taught: its decision points (state, command, result, the field reports that judged it),
its outcome, and a priority for sampling. The store keeps them in one directory:

- ``store.json``: which feature schema the store holds (its digest) and the format version, written once,
  atomically. A store is opened for one schema; episodes encoded under another schema would silently train the
  policy on features that mean something else, so opening a store of another schema is refused with both digests
  and what to do.
- ``episodes.log``: the core append-only log (``esper_core.storage.appendlog``), one JSON record per episode and per
  priority update, fsynced per append. A SIGKILL mid-write loses at most the record being written; a damaged or
  truncated file is read up to what survives, and :attr:`ReplayStore.damage` says which file and from which
  offset on it recovered.

Bounded two ways: at most ``capacity`` episodes (the oldest go first) and none older than ``max_age_seconds``.
Evicted episodes leave the log when it is compacted (rewritten atomically with the live ones, once it holds twice
the capacity in records), so the file does not grow without bound.

Sampling is prioritised (Schaul et al., 2016): episode ``i`` is drawn with probability ``p_i^alpha / sum p^alpha``
and comes with the importance weight ``(N P(i))^-beta``, normalised by the largest, that corrects the learner's
updates for the skew.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import EsperError
from esper_core.storage.appendlog import AppendOnlyLog, encode_record, scan
from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "FORMAT",
    "Damage",
    "Episode",
    "ReplayStore",
    "Sampled",
    "SchemaMismatchError",
]

#: The store's on-disk format; a store of another format is refused.
FORMAT = 1
MANIFEST = "store.json"
LOG = "episodes.log"


class SchemaMismatchError(EsperError, ValueError):
    """Episodes of one feature schema offered to a store (or a store opened) for another."""


@attrs.frozen
class Episode:
    """One run's experience: its decision points in order, its outcome, and its sampling priority."""

    episode_id: str
    #: The feature-schema digest the steps were encoded under (the learned policy's ``schema_digest()``).
    schema_digest: str
    #: One entry per decision point (JSON-serialisable: the state packet, the command, its result, field reports).
    steps: tuple[Mapping[str, Any], ...]
    #: What the run achieved (JSON-serialisable: validation accuracy, parameters, compute, ...).
    outcome: Mapping[str, Any] = attrs.field(factory=dict)
    priority: float = 1.0
    #: When it was gathered (seconds since the epoch): what the age bound measures.
    created: float = attrs.field(factory=time.time)

    def __attrs_post_init__(self) -> None:
        if not self.episode_id:
            raise ValueError("an episode needs an episode_id")
        if not (self.priority > 0 and self.priority < float("inf")):
            raise ValueError(f"episode {self.episode_id!r}: priority must be a positive number, got {self.priority}")

    def as_record(self) -> dict[str, Any]:
        return {
            "kind": "episode",
            "episode_id": self.episode_id,
            "schema_digest": self.schema_digest,
            "steps": list(self.steps),
            "outcome": dict(self.outcome),
            "priority": self.priority,
            "created": self.created,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Episode:
        return cls(
            episode_id=str(record["episode_id"]),
            schema_digest=str(record["schema_digest"]),
            steps=tuple(record["steps"]),
            outcome=dict(record.get("outcome", {})),
            priority=float(record["priority"]),
            created=float(record["created"]),
        )


@attrs.frozen
class Damage:
    """What opening the store found unreadable in its log, and where it recovered."""

    path: Path
    #: The offset of the first unreadable byte: every record before it was read.
    recovered_to: int
    skipped_bytes: int

    def describe(self) -> str:
        return (
            f"{self.path}: damaged from byte {self.recovered_to} on ({self.skipped_bytes} unreadable bytes skipped); "
            "every intact episode before and after was kept"
        )


@attrs.frozen
class Sampled:
    episode: Episode
    #: The importance weight that corrects for prioritised sampling (1 for the least likely episode drawn).
    weight: float


class ReplayStore:
    """Episodes of one feature schema in ``directory``; see the module's notes."""

    def __init__(
        self,
        directory: str | Path,
        schema_digest: str,
        *,
        capacity: int = 10_000,
        max_age_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not schema_digest:
            raise ValueError("a replay store needs the feature-schema digest of the episodes it holds")
        if capacity < 1:
            raise ValueError(f"a replay store's capacity must be at least 1, got {capacity}")
        if max_age_seconds < 0:
            raise ValueError(f"max_age_seconds must not be negative (0: no age limit), got {max_age_seconds}")
        self.directory = Path(directory)
        self.schema_digest = schema_digest
        self.capacity = capacity
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_manifest()
        self.path = self.directory / LOG
        self.damage: Damage | None = None
        self._episodes: dict[str, Episode] = {}  # insertion order: oldest first
        self._records = 0
        self._load()
        self._log = AppendOnlyLog(self.path)

    # -- opening ------------------------------------------------------------------------------------------------
    def _check_manifest(self) -> None:
        manifest = self.directory / MANIFEST
        if not manifest.exists():
            text = json.dumps({"format": FORMAT, "schema_digest": self.schema_digest}, indent=2) + "\n"
            atomic_write_text(manifest, text)
            return
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{manifest} is not a replay store's manifest ({error})") from None
        if found.get("format") != FORMAT:
            raise ValueError(f"{manifest}: replay store format {found.get('format')!r}, this Simic reads {FORMAT}")
        if found.get("schema_digest") != self.schema_digest:
            raise SchemaMismatchError(
                f"the replay store {self.directory} holds episodes of feature schema {found.get('schema_digest')}, "
                f"not {self.schema_digest}: episodes are never mixed across schemas. Use another directory for "
                "this schema, or collect the episodes again under it"
            )

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        found = scan(data)
        if found.first_damage is not None:
            self.damage = Damage(self.path, found.first_damage, found.skipped_bytes)
        for payload in found.records:
            self._records += 1
            try:
                record = json.loads(payload)
                self._apply(record)
            except (ValueError, KeyError, TypeError):  # an intact record this format does not know: skip it
                continue
        self._evict()

    def _apply(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "episode":
            episode = Episode.from_record(record)
            self._episodes.pop(episode.episode_id, None)  # a re-added episode counts as new
            self._episodes[episode.episode_id] = episode
        elif kind == "priority":
            known = self._episodes.get(str(record["episode_id"]))
            if known is not None:
                self._episodes[known.episode_id] = attrs.evolve(known, priority=float(record["priority"]))

    # -- writing ------------------------------------------------------------------------------------------------
    def add(self, episode: Episode) -> None:
        """Keep ``episode`` (durable when this returns); the oldest episodes go beyond the capacity."""
        if episode.schema_digest != self.schema_digest:
            raise SchemaMismatchError(
                f"episode {episode.episode_id!r} was encoded under feature schema {episode.schema_digest}, this "
                f"store ({self.directory}) holds schema {self.schema_digest}"
            )
        record = episode.as_record()
        self._append(record)
        self._apply(record)
        self._evict()

    def add_all(self, episodes: Iterable[Episode]) -> None:
        for episode in episodes:
            self.add(episode)

    def update_priorities(self, priorities: Mapping[str, float]) -> None:
        """New sampling priorities (a learner's errors), durable when this returns; unknown ids are ignored."""
        for episode_id, priority in priorities.items():
            if episode_id not in self._episodes:
                continue
            if not (priority > 0 and priority < float("inf")):
                raise ValueError(f"episode {episode_id!r}: priority must be a positive number, got {priority}")
            record = {"kind": "priority", "episode_id": episode_id, "priority": float(priority)}
            self._append(record)
            self._apply(record)

    def _append(self, record: Mapping[str, Any]) -> None:
        self._log.append(json.dumps(record, sort_keys=True, allow_nan=False).encode("utf-8"))
        self._records += 1
        if self._records > 2 * self.capacity + 16:
            self.compact()

    def _evict(self) -> None:
        if self.max_age_seconds:
            oldest = self._clock() - self.max_age_seconds
            for episode_id in [e.episode_id for e in self._episodes.values() if e.created < oldest]:
                del self._episodes[episode_id]
        while len(self._episodes) > self.capacity:
            del self._episodes[next(iter(self._episodes))]

    def compact(self) -> None:
        """Rewrite the log with the live episodes only (atomically: a crash leaves the old log or the new one)."""
        self._evict()
        data = b"".join(
            encode_record(json.dumps(e.as_record(), sort_keys=True).encode("utf-8")) for e in self._episodes.values()
        )
        self._log.close()
        atomic_write_bytes(self.path, data)
        self._log = AppendOnlyLog(self.path)
        self._records = len(self._episodes)

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._evict()
        return len(self._episodes)

    def episodes(self) -> list[Episode]:
        """The live episodes, oldest first."""
        self._evict()
        return list(self._episodes.values())

    def sample(self, count: int, rng: random.Random, *, alpha: float = 0.6, beta: float = 0.4) -> list[Sampled]:
        """``count`` episodes drawn with replacement, with probability proportional to ``priority ** alpha``, each
        with its importance weight ``(N P(i)) ** -beta`` over the largest drawn (deterministic given ``rng``)."""
        live: Sequence[Episode] = self.episodes()
        if not live:
            raise ValueError(f"the replay store {self.directory} holds no episodes to sample")
        if count < 1:
            raise ValueError(f"sample at least one episode, not {count}")
        scores = [episode.priority**alpha for episode in live]
        total = sum(scores)
        drawn = rng.choices(range(len(live)), weights=scores, k=count)
        raw = [(len(live) * scores[index] / total) ** -beta for index in drawn]
        largest = max(raw)
        return [Sampled(live[index], weight / largest) for index, weight in zip(drawn, raw, strict=True)]
