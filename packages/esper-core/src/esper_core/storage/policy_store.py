"""The policy store: published policy versions in one directory, which one is live, and the way back.

Simic publishes a validated ``PolicyUpdate`` here (and on Oona's policy stream); controllers that watch the store
adopt the live version between two decisions, and ``esper simic rollback`` points it back at an earlier one. The
store is plain files, each written atomically, so a reader never sees half a version and a crash mid-publish leaves
the previous live version in place:

- ``<version>.update``: the update's deterministic serialization (the format of ``tamiyo.learned.initial_update``);
- ``<version>.json``: what travels with it: the evaluation that allowed its publication, when, by whom;
- ``store.json``: ``{"live": version, "history": [versions in publication order], "generation": n,
  "rolled_back": bool}``. ``generation`` grows with every change, so a watcher rereads only when it moved.

It lives in ``esper_core`` because both ends use it: Simic writes it, Tamiyo reads it, and neither imports the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from google.protobuf.message import DecodeError

from esper_core.errors import EsperError
from esper_core.leyline import PolicyUpdate
from esper_core.storage.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["LiveVersion", "PolicyStore", "PolicyStoreError", "StoreWatcher"]

INDEX = "store.json"
#: A version names files: letters, digits, ``.``, ``_`` and ``-`` (not starting with a dot).
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class PolicyStoreError(EsperError, ValueError):
    """A store operation that cannot be done; the message names the store, the version and what to do."""


@attrs.frozen
class LiveVersion:
    """The live version of a store, as read at one moment."""

    version: str
    generation: int
    #: True when the live version was set by a rollback (a reader must accept going back in issue time).
    rolled_back: bool
    path: Path


class PolicyStore:
    """A directory of published policy versions (see the module)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    # -- reading ----------------------------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        """``store.json`` (an empty store has no live version and no history)."""
        path = self.directory / INDEX
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {"live": None, "history": [], "generation": 0, "rolled_back": False}
        except ValueError as error:
            raise PolicyStoreError(f"{path} is not a policy store index ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("history"), list):
            raise PolicyStoreError(f"{path} is not a policy store index (no history list)")
        return data

    def versions(self) -> list[str]:
        """Every published version, oldest first."""
        return [str(version) for version in self.index()["history"]]

    def live(self) -> LiveVersion | None:
        """The live version, or None when nothing was published."""
        index = self.index()
        if not index.get("live"):
            return None
        version = str(index["live"])
        return LiveVersion(version, int(index["generation"]), bool(index.get("rolled_back")), self.update_path(version))

    def update_path(self, version: str) -> Path:
        return self.directory / f"{_checked(version)}.update"

    def read(self, version: str) -> PolicyUpdate:
        """The update published as ``version``."""
        path = self.update_path(version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            known = ", ".join(self.versions()) or "none"
            raise PolicyStoreError(f"{self.directory}: no version {version!r} (published: {known})") from None
        update = PolicyUpdate()
        try:
            update.ParseFromString(data)
        except DecodeError:
            raise PolicyStoreError(f"{path} is not a PolicyUpdate (damaged?)") from None
        return update

    def metadata(self, version: str) -> dict[str, Any]:
        """What was published with ``version`` (its evaluation, when, by whom)."""
        path = self.directory / f"{_checked(version)}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        return data

    # -- writing ----------------------------------------------------------------------------------------------
    def publish(self, version: str, update: PolicyUpdate, metadata: Mapping[str, Any]) -> LiveVersion:
        """Store ``update`` as ``version`` with ``metadata`` and make it live. A version is published once."""
        index = self.index()
        if version in index["history"]:
            raise PolicyStoreError(
                f"{self.directory}: version {version!r} is already published; publish under a new version, or roll "
                f"back to it with `esper simic rollback --to {version}`"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.update_path(version), update.SerializeToString(deterministic=True))
        atomic_write_text(self.directory / f"{version}.json", json.dumps(dict(metadata), indent=2, sort_keys=True))
        index["history"].append(version)
        return self._set_live(index, version, rolled_back=False)

    def rollback(self, to: str | None = None) -> LiveVersion:
        """Make ``to`` (default: the version published before the live one) live again."""
        index = self.index()
        history = [str(version) for version in index["history"]]
        live = index.get("live")
        if to is None:
            if live not in history or history.index(live) == 0:
                raise PolicyStoreError(
                    f"{self.directory}: there is no version before {live!r} to roll back to "
                    f"(published: {', '.join(history) or 'none'})"
                )
            to = history[history.index(live) - 1]
        if to not in history:
            raise PolicyStoreError(
                f"{self.directory}: cannot roll back to {to!r}: not published here "
                f"(published: {', '.join(history) or 'none'})"
            )
        return self._set_live(index, to, rolled_back=True)

    def _set_live(self, index: dict[str, Any], version: str, *, rolled_back: bool) -> LiveVersion:
        index.update(live=version, generation=int(index.get("generation", 0)) + 1, rolled_back=rolled_back)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.directory / INDEX, json.dumps(index, indent=2, sort_keys=True))
        return LiveVersion(version, int(index["generation"]), rolled_back, self.update_path(version))


class StoreWatcher:
    """Tells a controller, between two decisions, whether the store's live version changed since it last looked.

    It stats ``store.json`` and rereads it only when its modification time or size changed, so looking costs one
    ``stat`` per decision point.
    """

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self._seen_stat: tuple[int, int] | None = None
        self._seen_generation = 0

    def changed(self) -> LiveVersion | None:
        """The live version if it changed since the last call that returned one (the first call: any live one)."""
        try:
            stat = (self.store.directory / INDEX).stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._seen_stat:
            return None
        self._seen_stat = key
        live = self.store.live()
        if live is None or live.generation == self._seen_generation:
            return None
        self._seen_generation = live.generation
        return live


def _checked(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise PolicyStoreError(
            f"policy version {version!r} cannot name a file: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    return version
