"""``esper urabrask bench`` and the sheet store: signed sheets beside Urza's artifacts, found by artifact key, and
refused when they cannot be trusted (edited, signed with another secret, unreadable) or are stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_core.cli.main import main
from esper_core.leyline import BSDS, HandlingClass
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_urza.karn import KarnCatalog
from esper_urza.parameters import artifact_key, resolve_parameters
from esper_urza.urabrask import measure_blueprint, standard_slots
from esper_urza.urabrask.sheet import safety_data_sheet, sheet_verifies, sign_sheet
from esper_urza.urabrask.store import SheetRefused, SheetStore

SECRET = "urabrask-sheet-test-secret-0123456789abcdef"


def bench(capsys: pytest.CaptureFixture[str], root: Path, *arguments: str) -> tuple[int, str, str]:
    code = main(["urabrask", "bench", "--json", f"--set=urza.root={root}", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bench_stores_a_signed_sheet_per_blueprint_and_slot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    code, out, err = bench(capsys, tmp_path / "urza", "--blueprint", "BP043", "--blueprint", "BP059")
    assert code == 0, err
    report = json.loads(out)
    by_id: dict[str, list[dict[str, object]]] = {}
    for row in report["sheets"]:
        by_id.setdefault(str(row["blueprint_id"]), []).append(row)
    catalog = KarnCatalog()
    assert len(by_id["BP043"]) == len(standard_slots(catalog.descriptor("BP043")))
    assert report["summary"]["quarantined"] == ["BP043"] and report["summary"]["sheets"] == len(report["sheets"])
    store = SheetStore(tmp_path / "urza", SigningKey.from_secret(SECRET))
    stored = [item for _, item in store.sheets()]
    assert len(stored) == len(report["sheets"]) and all(isinstance(sheet, BSDS) for sheet in stored)
    width = next(s for s in stored if isinstance(s, BSDS) and s.blueprint_id == "BP059")
    [slot] = standard_slots(catalog.descriptor("BP059"))
    parameters = resolve_parameters(catalog.descriptor("BP059"), {})
    assert width.artifact_key == artifact_key("karn", "BP059", parameters, slot), "named by Urza's artifact key"
    assert width.catalog == "karn" and width.catalog_version.startswith("esper-urza ")
    assert width.handling_class == HandlingClass.HANDLING_CLASS_STANDARD and not width.hazards
    assert width.measurements["timing.forward_p95_ms"] > 0 and width.measurements["cost.flops_per_sample"] > 0
    assert store.get(width.artifact_key, width.catalog_version) == width
    assert store.get(width.artifact_key, "esper-urza 99.0") is None, "a sheet of another catalog version is stale"


def sheet_of(blueprint: str = "BP059") -> BSDS:
    catalog = KarnCatalog()
    slot = standard_slots(catalog.descriptor(blueprint))[0]
    return safety_data_sheet(measure_blueprint(catalog, blueprint, slot), catalog_version="esper-urza test")


def test_a_sheet_edited_or_signed_with_another_secret_is_refused_naming_the_file(tmp_path: Path) -> None:
    key = SigningKey.from_secret(SECRET)
    store = SheetStore(tmp_path, key)
    sheet = sign_sheet(sheet_of("BP043"), key)
    path = store.put(sheet)
    assert sheet.handling_class == HandlingClass.HANDLING_CLASS_QUARANTINE
    forged = BSDS()
    forged.CopyFrom(sheet)
    forged.handling_class = HandlingClass.HANDLING_CLASS_STANDARD  # someone makes the stressor look safe
    path.write_bytes(forged.SerializeToString())
    with pytest.raises(SheetRefused, match="signature does not verify") as refused:
        store.get(sheet.artifact_key)
    assert str(path) in str(refused.value)
    [(_, listed)] = list(store.sheets())
    assert isinstance(listed, SheetRefused)
    other = SigningKey.from_secret("another-secret-of-enough-length-0123456789")
    with pytest.raises(SheetRefused, match="not signed with this store's secret"):
        store.put(sign_sheet(sheet_of(), other))
    path.write_bytes(b"\x00not a sheet")
    with pytest.raises(SheetRefused, match="not a readable safety data sheet"):
        store.get(sheet.artifact_key)


def test_a_signed_sheet_verifies_and_nothing_else_does() -> None:
    key = SigningKey.from_secret(SECRET)
    sheet = sheet_of()
    assert not sheet_verifies(sheet, key), "unsigned"
    sign_sheet(sheet, key)
    assert sheet_verifies(sheet, key)
    sheet.risk_score += 0.5
    assert not sheet_verifies(sheet, key)


def test_bench_at_a_given_slot_measures_what_grows_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    code, out, err = bench(capsys, tmp_path, "--blueprint", "BP059", "--blueprint", "BP043", "--slot", "vector:64")
    assert code == 0, err
    rows = json.loads(out)["sheets"]
    assert [(row["blueprint_id"], row["slot"]) for row in rows] == [("BP043", "vector[64]")], "BP059 is a width seed"


@pytest.mark.parametrize(
    ("arguments", "secret", "expected"),
    [
        (["--blueprint", "BP001"], SECRET, "no configured catalog has blueprint BP001"),
        (["--blueprint", "BP059", "--slot", "conv2d:4x8x8"], SECRET, "nothing was measured"),
        (["--catalog", "nope"], SECRET, "nope"),
        (["--blueprint", "BP059"], None, f"{SECRET_ENV_VAR} is not set"),
    ],
)
def test_bad_requests_are_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    secret: str | None,
    expected: str,
) -> None:
    if secret is None:
        monkeypatch.delenv(SECRET_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV_VAR, secret)
    code, _, err = bench(capsys, tmp_path, *arguments)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("esper: error: ") and expected in lines[0], err


def test_bench_needs_a_library_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    monkeypatch.chdir(tmp_path)
    assert main(["urabrask", "bench", "--blueprint", "BP059"]) == 2
    err = capsys.readouterr().err
    assert "set urza.root" in err and len(err.strip().splitlines()) == 1


def test_esper_blueprints_shows_the_stored_sheets_and_what_it_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    root = tmp_path / "urza"
    assert bench(capsys, root, "--blueprint", "BP045")[0] == 0

    def sheets(blueprint: str) -> dict[str, object]:
        assert main(["blueprints", "--sheet", blueprint, "--json", f"--set=urza.root={root}"]) == 0
        shown: dict[str, object] = json.loads(capsys.readouterr().out)
        return shown

    shown = sheets("BP045")
    slots = sorted(str(sheet["slot"]) for sheet in shown["sheets"])  # type: ignore[attr-defined]
    assert slots == sorted(slot.describe() for slot in standard_slots(KarnCatalog().descriptor("BP045")))
    assert all(sheet["handlingClass"] == "HANDLING_CLASS_QUARANTINE" for sheet in shown["sheets"])  # type: ignore[attr-defined]
    assert shown["refused"] == [] and sheets("BP059")["sheets"] == []
    monkeypatch.setenv(SECRET_ENV_VAR, "a-different-secret-of-enough-length-0123456789")
    refused = sheets("BP045")
    assert refused["sheets"] == [] and len(refused["refused"]) == 3  # type: ignore[arg-type]
    assert all("signature does not verify" in problem for problem in refused["refused"])  # type: ignore[attr-defined]


def test_the_rater_answers_from_what_is_stored_without_measuring(tmp_path: Path) -> None:
    """``stored_sheet`` (what Tamiyo's controller shows its policy) never measures: None until the blueprint is rated
    (``safety_sheet``, the risk engine's question), the rated sheet after, and a later run reads it from the store."""
    from esper_core.safety import StoredSheetSource
    from esper_urza.urabrask.rating import SheetRater

    key = SigningKey.from_secret(SECRET)
    catalog = KarnCatalog()
    [slot] = standard_slots(catalog.descriptor("BP059"))
    rater = SheetRater(tmp_path / "urza", key, [catalog], versions={"karn": "esper-urza test"})
    assert isinstance(rater, StoredSheetSource)
    assert rater.stored_sheet("BP059", slot) is None and rater.measured == 0, "asking never measures"
    assert rater.stored_sheet("BP999", slot) is None, "a blueprint no catalog offers"
    rated = rater.safety_sheet("BP059", slot)
    assert rated is not None and rater.measured == 1
    assert rater.stored_sheet("BP059", slot) == rated
    later = SheetRater(tmp_path / "urza", key, [catalog], versions={"karn": "esper-urza test"})
    assert later.stored_sheet("BP059", slot) == rated and later.measured == 0
    other = SigningKey.from_secret("another-secret-0123456789abcdef")
    forged = SheetRater(tmp_path / "urza", other, [catalog], versions={"karn": "esper-urza test"})
    assert forged.stored_sheet("BP059", slot) is None, "a sheet it cannot trust is not shown"
