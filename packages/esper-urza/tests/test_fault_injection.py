"""Fault injection for Urza's durable files: the index (``catalog.sqlite``), the journal (``journal.log``) and an
artifact file are each replaced with garbage, truncated, and have one bit flipped at sampled offsets (fixed seeds);
then the library is opened and every stored request fetched.

The outcome must be a clear :class:`~esper_core.errors.EsperError`, or a recovery to a consistent state: every row
names a file that hashes to the row's SHA-256, no file lies outside the index, and every fetch returns a module whose
weights are those of stored bytes that hash to the SHA-256 the fetch reports. Never a silent divergence: a module
built from bytes that do not match their SHA-256. Damage that spares an artifact file must not cost it either: it is
still served from disk, not rebuilt.

The run directory's own files (checkpoints, the record) have their suite in tests/test_fault_injection_files.py.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from esper_core.errors import EsperError
from esper_core.leyline import SlotKind
from esper_core.protocols import SlotShape
from esper_urza.karn import KarnCatalog
from esper_urza.library import UrzaLibrary
from esper_urza.tezzeret import load_artifact

VECTOR_SLOT = SlotShape(SlotKind.SLOT_KIND_VECTOR, (12,))
REQUESTS = [("BP052", {"hidden_multiple": 1.0}), ("BP052", {"hidden_multiple": 3.0}), ("BP053", {"rank": 2.0})]
#: Bit flips sampled per file, and truncation points (fractions of the file's length).
FLIPS = 16
CUTS = (0.0, 0.1, 0.5, 0.9, 0.999)

Damage = Callable[[bytes], bytes]


@pytest.fixture(scope="module")
def karn() -> KarnCatalog:
    return KarnCatalog()


#: Where each request's artifact file is in the pristine library (root-relative), in the order of REQUESTS.
PATHS: list[str] = []


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, karn: KarnCatalog) -> Path:
    """A closed library holding three artifacts, its journal holding their saves' intents and commits (never opened
    again: opening empties the journal)."""
    root = tmp_path_factory.mktemp("pristine") / "urza"
    PATHS.clear()
    with UrzaLibrary(root, [karn]) as library:
        for blueprint_id, parameters in REQUESTS:
            fetched, record = library.fetch_artifact(blueprint_id, VECTOR_SLOT, parameters)
            assert fetched.source == "built"
            PATHS.append(record.path)
    assert (root / "journal.log").stat().st_size > 0
    assert not (root / "catalog.sqlite-wal").exists()  # checkpointed on close: the index is one file
    return root


def damages(original: bytes, seed: int) -> Iterator[tuple[str, Damage]]:
    """Named ways to damage ``original``: garbage, truncations, and single flipped bits. The flips are sampled
    among the bytes that are not zero: most of a small SQLite file is free space, where a flip changes nothing."""
    rng = random.Random(seed)
    garbage = rng.randbytes(len(original))
    yield "replaced with garbage", lambda data: garbage
    for fraction in CUTS:
        yield f"cut at {fraction:.1%}", lambda data, f=fraction: data[: int(len(data) * f)]
    live = [offset for offset, byte in enumerate(original) if byte]
    for offset in sorted(rng.sample(live, min(FLIPS, len(live)))):
        bit = 1 << rng.randrange(8)

        def flip(data: bytes, at: int = offset, mask: int = bit) -> bytes:
            damaged = bytearray(data)
            damaged[at] ^= mask
            return bytes(damaged)

        yield f"bit {bit.bit_length() - 1} flipped at byte {offset}", flip


def check_consistent(library: UrzaLibrary, case: str) -> None:
    """Every row's file is there and hashes right, and every artifact file has its row."""
    rows = library.query()
    for record in rows:
        data = (library.root / record.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256, f"{case}: {record.path} does not hash to its row"
    files = {p.relative_to(library.root).as_posix() for p in library.artifacts_dir.rglob("*") if p.is_file()}
    assert files == {record.path for record in rows}, f"{case}: files without a row: {files - {r.path for r in rows}}"


def fetch_verified(library: UrzaLibrary, case: str) -> list[str]:
    """Fetch every request; each module's weights must be those of stored bytes that hash to the reported SHA-256.
    Returns the sources."""
    sources = []
    for blueprint_id, parameters in REQUESTS:
        fetched, record = library.fetch_artifact(blueprint_id, VECTOR_SLOT, parameters)
        data = (library.root / record.path).read_bytes()
        served = fetched.artifact_sha256
        assert hashlib.sha256(data).hexdigest() == served == record.sha256, (
            f"{case}: {blueprint_id} {parameters} was served as {served[:12]}; its bytes hash otherwise"
        )
        _, stored = load_artifact(data, sha256=record.sha256)
        weights = fetched.module.state_dict()
        assert weights.keys() == stored.keys(), f"{case}: {blueprint_id}: the module is not the stored artifact's"
        for name, tensor in stored.items():
            assert torch.equal(weights[name], tensor), f"{case}: {blueprint_id}: {name} differs from the stored bytes"
        assert tuple(fetched.module(torch.zeros(2, 12)).shape) == (2, 12)
        sources.append(fetched.source)
    return sources


def inject(pristine: Path, tmp_path: Path, karn: KarnCatalog, target: Callable[[Path], Path], seed: int) -> list[str]:
    """Damage ``target(root)`` of a copy of the library in every way, open and fetch; returns each case's outcome
    (``"error: ..."`` or the sources of the fetches), after checking it."""
    outcomes = []
    for index, (name, damage) in enumerate(damages(target(pristine).read_bytes(), seed)):
        root = tmp_path / f"case-{index}"
        shutil.copytree(pristine, root)
        file = target(root)
        file.write_bytes(damage(file.read_bytes()))
        try:
            with UrzaLibrary(root, [karn]) as library:
                check_consistent(library, name)
                sources = fetch_verified(library, name)
                check_consistent(library, name)
        except EsperError as error:  # allowed: a clear error (anything else fails the test)
            outcomes.append(f"{name}: error: {error}")
            continue
        outcomes.append(f"{name}: {' '.join(sources)}")
        shutil.rmtree(root)
    return outcomes


def test_a_damaged_index_is_rebuilt_and_every_artifact_still_served_from_disk(
    pristine: Path, tmp_path: Path, karn: KarnCatalog
) -> None:
    outcomes = inject(pristine, tmp_path, karn, lambda root: root / "catalog.sqlite", seed=101)
    assert all(outcome.endswith(": disk disk disk") for outcome in outcomes), "\n".join(outcomes)


def test_a_damaged_journal_is_recovered_from_and_every_artifact_still_served_from_disk(
    pristine: Path, tmp_path: Path, karn: KarnCatalog
) -> None:
    outcomes = inject(pristine, tmp_path, karn, lambda root: root / "journal.log", seed=202)
    assert all(outcome.endswith(": disk disk disk") for outcome in outcomes), "\n".join(outcomes)


def test_a_damaged_artifact_file_is_never_loaded_and_only_it_is_rebuilt(
    pristine: Path, tmp_path: Path, karn: KarnCatalog
) -> None:
    outcomes = inject(pristine, tmp_path, karn, lambda root: root / PATHS[1], seed=303)
    rebuilt = [outcome for outcome in outcomes if outcome.split(": ")[-1].split() == ["disk", "built", "disk"]]
    assert len(rebuilt) == len(outcomes), "\n".join(outcomes)  # every damage is caught, and costs only its artifact
