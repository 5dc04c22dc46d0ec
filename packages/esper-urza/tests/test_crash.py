"""A kill at any moment leaves the library consistent: writer processes are SIGKILLed at random moments while they
save artifacts (or while they open the library and replay its journal), again and again; after every kill the
library reopens with every row's file present and hashing right, no orphan file left, and fetches still working."""

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
    import json, random, sys
    from pathlib import Path

    from esper_urza.library import UrzaLibrary
    from esper_urza.records import ArtifactRecord, BuiltArtifact

    assert "torch" not in sys.modules, "the library's write path must not need torch"
    work = Path(sys.argv[2])
    artifacts = []
    for meta in sorted(work.glob("*.json")):
        entry = json.loads(meta.read_text())
        record = ArtifactRecord.from_json(entry["record"], sha256=entry["sha256"], size_bytes=entry["size"])
        artifacts.append(BuiltArtifact(meta.with_suffix(".pt").read_bytes(), record))
    order = random.Random(int(sys.argv[3]))
    print("ready", flush=True)
    library = UrzaLibrary(sys.argv[1])
    while True:
        library.save(order.choice(artifacts))
    """
)


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


@pytest.mark.slow
def test_sigkill_at_random_moments_during_saves_leaves_the_library_consistent(tmp_path: Path) -> None:
    work, root = tmp_path / "artifacts", tmp_path / "urza"
    work.mkdir()
    prepare_artifacts(work)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(20240611)
    karn = KarnCatalog()
    repaired = rows = 0
    for kill in range(KILLS):
        writer = subprocess.Popen(
            [sys.executable, str(script), str(root), str(work), str(kill)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            ready = writer.stdout.readline()
            assert ready.strip() == "ready", (
                f"writer failed to start: {ready}{writer.stderr.read() if writer.stderr else ''}"
            )
            time.sleep(rng.uniform(0.02, 0.35))
            assert writer.poll() is None, f"the writer died on its own: {writer.stderr.read() if writer.stderr else ''}"
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
            for stream in (writer.stdout, writer.stderr):
                if stream is not None:
                    stream.close()
        with UrzaLibrary(root, [karn]) as library:
            report = library.recovery
            repaired += report.rolled_back + report.rolled_forward + report.orphans_removed + len(report.rows_dropped)
            rows = assert_consistent(library, just_opened=True)
            fetched = library.fetch("BP052", VECTOR_SLOT, {"hidden_multiple": 2})
            assert fetched.source in ("disk", "built")
            assert tuple(fetched.module(torch.zeros(2, 12)).shape) == (2, 12)
            assert_consistent(library, just_opened=False)
    assert rows >= 4, "the writers saved too little for the test to mean anything"
    assert repaired > 0, "no kill landed in the middle of a save"
