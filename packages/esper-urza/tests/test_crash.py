"""A kill at any moment leaves the library consistent: writer processes are SIGKILLed while they save artifacts (or
while they open the library and replay its journal), again and again; after every kill the library reopens with
every row's file present and hashing right, no orphan file left, and fetches still working.

The kills are driven by what the writer says it is doing, never by a guess at how long it takes: the first writer
stops dead between writing an artifact's file and upserting its row and says so, and is killed there; each later
writer says when it starts opening the library, and when every request has a row and it is saving in a loop, and is
killed a random time after one of those signals (that randomness is what the test is about).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from esper_core.leyline import SlotKind
from esper_core.protocols import SlotShape
from esper_core.storage import read_records
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.records import encode_record
from esper_urza.tezzeret import Tezzeret

KILLS = 12
VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))
CONV_SLOT = SlotShape(SlotKind.SLOT_KIND_CONV2D, (4, 6, 6))

WRITER = textwrap.dedent(
    """
    import json, random, sys, threading
    from pathlib import Path

    from esper_urza.library import UrzaLibrary
    from esper_urza.library.index import ArtifactIndex
    from esper_urza.records import ArtifactRecord, BuiltArtifact

    assert "torch" not in sys.modules, "the library's write path must not need torch"
    root, work, seed, mode = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    artifacts = []
    for meta in sorted(work.glob("*.json")):
        entry = json.loads(meta.read_text())
        record = ArtifactRecord.from_json(entry["record"], sha256=entry["sha256"], size_bytes=entry["size"])
        artifacts.append(BuiltArtifact(meta.with_suffix(".pt").read_bytes(), record))
    if mode == "stall":
        def stall(self, record):  # the file is written and the row not yet: say so, and wait to be killed
            print("stalled", flush=True)
            threading.Event().wait()

        ArtifactIndex.upsert = stall
    order = random.Random(seed)
    print("opening", flush=True)
    library = UrzaLibrary(root)
    for artifact in artifacts[::2]:  # one version of each request: every request has its row
        library.save(artifact)
    print("saving", flush=True)
    while True:
        library.save(order.choice(artifacts))
    """
)
#: Each kill: the writer's mode, the line it prints when it reaches the moment, and the longest random delay after.
SCHEDULE = [("stall", "stalled", 0.0)] + [
    ("open", "opening", 0.1) if kill % 2 else ("save", "saving", 0.2) for kill in range(1, KILLS)
]
REQUESTS = 6


def prepare_artifacts(work: Path) -> None:
    """Genuine artifacts, two versions (two builds, two hashes) of each of six requests."""
    karn, tezzeret = KarnCatalog(), Tezzeret()
    requests = [("BP052", VECTOR_SLOT, {"hidden_multiple": m}) for m in (1, 2, 3, 4)]
    requests += [("BP009", CONV_SLOT, {"depth": d}) for d in (1, 2)]
    index = 0
    for blueprint_id, slot, parameters in requests:
        for _ in range(2):
            built = tezzeret.build(karn, blueprint_id, slot, parameters)
            (work / f"{index:02d}.pt").write_bytes(built.data)
            entry = {"record": json.loads(encode_record(built.record)), "sha256": built.record.sha256}
            entry["size"] = len(built.data)
            (work / f"{index:02d}.json").write_text(json.dumps(entry))
            index += 1


def assert_consistent(library: UrzaLibrary, *, just_opened: bool) -> int:
    rows = library.query()
    for record in rows:
        path = library.root / record.path
        assert path.is_file(), f"row {record.key[:12]} names a missing file {record.path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.sha256, f"{record.path} does not hash right"
    files = {p.relative_to(library.root).as_posix() for p in library.artifacts_dir.rglob("*") if p.is_file()}
    assert files == {record.path for record in rows}, f"orphan files: {sorted(files - {r.path for r in rows})}"
    journal = [json.loads(record) for record in read_records(library.journal_path)]
    if just_opened:
        assert journal == [], "the journal was not emptied after replay"
    intents = {entry["tx"] for entry in journal if entry["op"] == "intent"}
    assert intents == {entry["tx"] for entry in journal if entry["op"] == "commit"}, "a save was left open"
    return len(rows)


def wait_for(writer: subprocess.Popen[str], signal_line: str) -> None:
    """Read the writer's lines until it prints ``signal_line``; fail with its stderr if it ends first."""
    assert writer.stdout is not None and writer.stderr is not None
    for line in writer.stdout:
        if line.strip() == signal_line:
            return
    pytest.fail(f"the writer ended before saying {signal_line!r}: {writer.stderr.read()}")


@pytest.mark.slow
def test_sigkill_at_random_moments_during_saves_leaves_the_library_consistent(tmp_path: Path) -> None:
    work, root = tmp_path / "artifacts", tmp_path / "urza"
    work.mkdir()
    prepare_artifacts(work)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(20240611)
    karn = KarnCatalog()
    for kill, (mode, signal_line, longest_delay_s) in enumerate(SCHEDULE):
        writer = subprocess.Popen(
            [sys.executable, str(script), str(root), str(work), str(kill), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(writer, signal_line)
            if longest_delay_s:
                time.sleep(rng.uniform(0.0, longest_delay_s))  # a random moment after the signal: not a wait for it
            assert writer.poll() is None, f"the writer died on its own: {writer.stderr.read() if writer.stderr else ''}"
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
            for stream in (writer.stdout, writer.stderr):
                if stream is not None:
                    stream.close()
        with UrzaLibrary(root, [karn]) as library:
            report = library.recovery
            if mode == "stall":  # killed after the file, before the row: the save is rolled back, its file removed
                assert (report.rolled_back, report.rolled_forward, report.orphans_removed) == (1, 0, 0)
                assert library.query() == []
            rows = assert_consistent(library, just_opened=True)
            if mode == "save":  # the writer had saved every request before it was killed
                assert rows == REQUESTS
            fetched = library.fetch("BP052", VECTOR_SLOT, {"hidden_multiple": 2})
            assert fetched.source in ("disk", "built")
            assert tuple(fetched.module(torch.zeros(2, 12)).shape) == (2, 12)
            assert_consistent(library, just_opened=False)
