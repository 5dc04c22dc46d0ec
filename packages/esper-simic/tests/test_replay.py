"""Simic's replay store: durable through a SIGKILL and a damaged file, bounded by capacity and age, one feature
schema per store, and prioritised sampling with its importance weights."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from esper_simic.replay import Episode, ReplayStore, SchemaMismatchError

SCHEMA = "schema-a"


def episode(name: str, *, priority: float = 1.0, created: float = 1000.0, schema: str = SCHEMA) -> Episode:
    steps = ({"epoch": 1, "command": "germinate", "reward": 0.5}, {"epoch": 2, "command": "noop", "reward": 0.0})
    return Episode(name, schema, steps, {"val_accuracy": 0.8}, priority=priority, created=created)


def test_episodes_survive_reopening_in_order_with_their_updated_priorities(tmp_path: Path) -> None:
    with ReplayStore(tmp_path, SCHEMA) as store:
        store.add_all([episode("a"), episode("b"), episode("c")])
        store.update_priorities({"b": 5.0, "unknown": 2.0})
    reopened = ReplayStore(tmp_path, SCHEMA)
    assert [e.episode_id for e in reopened.episodes()] == ["a", "b", "c"]
    assert reopened.episodes()[1].priority == 5.0
    assert reopened.episodes()[0].steps[0]["command"] == "germinate"
    assert reopened.damage is None


def test_a_store_of_another_schema_is_refused_and_never_mixed(tmp_path: Path) -> None:
    ReplayStore(tmp_path, SCHEMA).close()
    with pytest.raises(SchemaMismatchError, match="holds episodes of feature schema schema-a, not schema-b"):
        ReplayStore(tmp_path, "schema-b")
    with ReplayStore(tmp_path, SCHEMA) as store, pytest.raises(SchemaMismatchError, match="encoded under feature"):
        store.add(episode("x", schema="schema-b"))


def test_capacity_drops_the_oldest_and_age_drops_the_stale(tmp_path: Path) -> None:
    now = [5000.0]
    with ReplayStore(tmp_path, SCHEMA, capacity=3, max_age_seconds=100, clock=lambda: now[0]) as store:
        for index in range(5):
            store.add(episode(f"e{index}", created=4950.0 + index))
        assert [e.episode_id for e in store.episodes()] == ["e2", "e3", "e4"]
        now[0] = 5052.5  # e2 (created 4952) is now older than 100 s
        assert [e.episode_id for e in store.episodes()] == ["e3", "e4"]


def test_the_log_is_compacted_so_it_does_not_grow_without_bound(tmp_path: Path) -> None:
    with ReplayStore(tmp_path / "one", SCHEMA) as single:
        single.add(episode("e0"))
        one_record = single.path.stat().st_size
    with ReplayStore(tmp_path, SCHEMA, capacity=4) as store:
        for index in range(200):
            store.add(episode(f"e{index}"))
            assert store.path.stat().st_size <= (2 * 4 + 16 + 1) * (one_record + 4)  # never 200 records' worth
        assert len(store) == 4
    reopened = ReplayStore(tmp_path, SCHEMA, capacity=4)
    assert [e.episode_id for e in reopened.episodes()] == ["e196", "e197", "e198", "e199"]


def test_a_damaged_file_is_read_around_the_damage_and_says_where(tmp_path: Path) -> None:
    with ReplayStore(tmp_path, SCHEMA) as store:
        store.add_all([episode("a"), episode("b"), episode("c")])
        path = store.path
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # a flipped byte inside "b"
    path.write_bytes(bytes(data[:-7]))  # and a torn tail inside "c"
    store = ReplayStore(tmp_path, SCHEMA)
    assert [e.episode_id for e in store.episodes()] == ["a"]
    assert store.damage is not None and 0 < store.damage.recovered_to <= middle
    assert str(path) in store.damage.describe() and f"byte {store.damage.recovered_to}" in store.damage.describe()
    store.add(episode("d"))  # appending after the damage works, and what was intact stays
    store.close()
    assert [e.episode_id for e in ReplayStore(tmp_path, SCHEMA).episodes()] == ["a", "d"]


WRITER = textwrap.dedent(
    """
    import sys
    from esper_simic.replay import Episode, ReplayStore
    store = ReplayStore(sys.argv[1], "schema-a")
    index = 0
    while True:
        steps = tuple({"epoch": step, "payload": "x" * 2000} for step in range(20))
        store.add(Episode(f"e{index}", "schema-a", steps, created=1000.0))
        print(index, flush=True)  # durable: add returned
        index += 1
    """
)


@pytest.mark.slow
def test_a_sigkill_mid_write_loses_at_most_the_episode_being_written(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert writer.stdout is not None
    acknowledged = -1
    for line in writer.stdout:
        acknowledged = int(line)
        if acknowledged >= 30:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    kept = [e.episode_id for e in ReplayStore(tmp_path, SCHEMA).episodes()]
    assert kept[: acknowledged + 1] == [f"e{index}" for index in range(acknowledged + 1)]  # every acknowledged one
    assert len(kept) <= acknowledged + 2  # and at most the one in flight besides


def test_sampling_follows_priorities_and_weights_correct_for_it(tmp_path: Path) -> None:
    with ReplayStore(tmp_path, SCHEMA) as store:
        store.add_all([episode("rare", priority=1.0), episode("common", priority=16.0)])
        draws = store.sample(4000, random.Random(0), alpha=0.5, beta=1.0)
        share = sum(d.episode.episode_id == "common" for d in draws) / len(draws)
        assert share == pytest.approx(4 / 5, abs=0.03)  # 16 ** 0.5 = 4 against 1
        weights = {d.episode.episode_id: d.weight for d in draws}
        assert weights["rare"] == 1.0 and weights["common"] == pytest.approx(0.25)  # (N P)^-1, over the largest
        assert [d.episode.episode_id for d in store.sample(5, random.Random(7))] == [
            d.episode.episode_id for d in store.sample(5, random.Random(7))
        ]


def test_bad_input_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        ReplayStore(tmp_path, SCHEMA, capacity=0)
    with pytest.raises(ValueError, match="priority must be a positive number"):
        episode("x", priority=float("nan"))
    with ReplayStore(tmp_path, SCHEMA) as store, pytest.raises(ValueError, match="holds no episodes"):
        store.sample(1, random.Random(0))


def test_the_documented_example_runs(tmp_path: Path) -> None:
    guide = Path(__file__).resolve().parents[3] / "docs" / "simic.md"
    block = guide.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(block.replace('"var/simic/replay"', repr(str(tmp_path))), namespace)  # the guide's own example
    batch = namespace["batch"]
    assert isinstance(batch, list) and len(batch) == 32 and batch[0].episode.episode_id == "run-42"
