"""The policy store: versions published once, one live, rollbacks asked for, watchers that reread only on change."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_core.leyline import PolicyUpdate
from esper_core.storage.policy_store import PolicyStore, PolicyStoreError, StoreWatcher


def update(name: str) -> PolicyUpdate:
    return PolicyUpdate(policy_name="learned", tamiyo_policy_version=name, payload=name.encode())


def test_publishing_makes_a_version_live_and_keeps_what_travels_with_it(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policies")
    assert store.live() is None and store.versions() == []
    first = store.publish("v1", update("v1"), {"evaluation": {"return": 0.1}})
    assert (first.version, first.generation, first.rolled_back) == ("v1", 1, False)
    store.publish("v2", update("v2"), {"evaluation": {"return": 0.2}})
    assert store.versions() == ["v1", "v2"]
    live = store.live()
    assert live is not None and live.version == "v2" and live.generation == 2
    assert store.read("v1").payload == b"v1" and store.metadata("v2")["evaluation"] == {"return": 0.2}
    with pytest.raises(PolicyStoreError, match=r"'v2' is already published.*rollback --to v2"):
        store.publish("v2", update("v2"), {})


def test_rollback_goes_to_the_previous_or_a_named_version_and_says_so(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    with pytest.raises(PolicyStoreError, match="no version before None"):
        store.rollback()
    for name in ("v1", "v2", "v3"):
        store.publish(name, update(name), {})
    back = store.rollback()
    assert (back.version, back.rolled_back) == ("v2", True)
    assert store.rollback(to="v1").version == "v1"
    with pytest.raises(PolicyStoreError, match="no version before 'v1'"):
        store.rollback()
    with pytest.raises(PolicyStoreError, match=r"cannot roll back to 'v9': not published here \(published: v1, v2"):
        store.rollback(to="v9")
    assert store.publish("v4", update("v4"), {}).rolled_back is False


def test_bad_names_and_damaged_files_are_refused_with_the_path(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    with pytest.raises(PolicyStoreError, match="cannot name a file"):
        store.publish("../escape", update("x"), {})
    with pytest.raises(PolicyStoreError, match=r"no version 'v1' \(published: none\)"):
        store.read("v1")
    (tmp_path / "store.json").write_text("{not json")
    with pytest.raises(PolicyStoreError, match=r"store\.json is not a policy store index"):
        store.live()
    (tmp_path / "store.json").unlink()
    store.publish("v1", update("v1"), {})
    store.update_path("v1").write_bytes(b"\xff\xff\xff")
    with pytest.raises(PolicyStoreError, match=r"v1\.update is not a PolicyUpdate"):
        store.read("v1")


def test_a_watcher_reports_each_change_once(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    watcher = StoreWatcher(store)
    assert watcher.changed() is None  # nothing published yet
    store.publish("v1", update("v1"), {})
    seen = watcher.changed()
    assert seen is not None and seen.version == "v1"
    assert watcher.changed() is None
    store.publish("v2", update("v2"), {})
    store.rollback()
    seen = watcher.changed()  # two changes since it last looked: it reports where the store is now
    assert seen is not None and (seen.version, seen.rolled_back) == ("v1", True)
