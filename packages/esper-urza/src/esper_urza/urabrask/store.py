"""Signed safety data sheets beside Urza's artifacts: ``<urza.root>/sheets/<artifact key>.bsds``.

A sheet is named by the artifact key Urza names the artifact by (catalog, blueprint, canonical parameters, slot), so
the sheet of an artifact is found without a search, and measuring again replaces it (written atomically). What is
read back is checked twice: its signature under the shared secret (a sheet edited by hand, or signed with another
secret, is refused with the file named: a controller must never trust a forged "SAFE"), and its catalog version (a
sheet measured on another version of the catalog's code says nothing about this one: it is stale, and the blueprint
must be measured again).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from esper_core.errors import EsperError
from esper_core.leyline import BSDS
from esper_core.signing import SigningKey
from esper_core.storage.atomic import atomic_write_bytes
from esper_urza.urabrask.sheet import sheet_verifies

__all__ = ["SHEETS_DIRECTORY", "SheetRefused", "SheetStore"]

SHEETS_DIRECTORY = "sheets"
SUFFIX = ".bsds"


class SheetRefused(EsperError):
    """A stored sheet that cannot be trusted: unreadable, unsigned, or signed with another secret."""


class SheetStore:
    """The sheets under ``root`` (an Urza library root), signed and checked with ``key``."""

    def __init__(self, root: Path, key: SigningKey) -> None:
        self.directory = Path(root) / SHEETS_DIRECTORY
        self.key = key

    def path_of(self, artifact_key: str) -> Path:
        if len(artifact_key) != 64 or any(c not in "0123456789abcdef" for c in artifact_key):
            raise ValueError(f"an artifact key is 64 lower-case hex digits (SHA-256), got {artifact_key!r}")
        return self.directory / f"{artifact_key}{SUFFIX}"

    def put(self, sheet: BSDS) -> Path:
        """Store ``sheet`` (it must be signed with this store's key) under its artifact key; the file's path."""
        if not sheet_verifies(sheet, self.key):
            raise SheetRefused(f"the sheet of {sheet.blueprint_id} is not signed with this store's secret")
        path = self.path_of(sheet.artifact_key)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, sheet.SerializeToString(deterministic=True))
        return path

    def get(self, artifact_key: str, catalog_version: str | None = None) -> BSDS | None:
        """The sheet of ``artifact_key``; None when there is none or it is stale (measured on a catalog version
        other than ``catalog_version``, when given). Raises :class:`SheetRefused` naming the file when the stored
        sheet is unreadable or its signature does not verify."""
        path = self.path_of(artifact_key)
        if not path.exists():
            return None
        sheet = self._read(path)
        if catalog_version is not None and sheet.catalog_version != catalog_version:
            return None
        return sheet

    def sheets(self) -> Iterator[tuple[Path, BSDS | SheetRefused]]:
        """Every stored sheet with its file, in file-name order; one that cannot be trusted as the error instead."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                yield path, self._read(path)
            except SheetRefused as refused:
                yield path, refused

    def _read(self, path: Path) -> BSDS:
        sheet = BSDS()
        try:
            sheet.ParseFromString(path.read_bytes())
        except (OSError, DecodeError) as error:
            raise SheetRefused(
                f"{path}: not a readable safety data sheet ({error}); measure the blueprint again"
            ) from None
        if not sheet.signature:
            raise SheetRefused(f"{path}: the sheet is not signed; measure the blueprint again")
        if not sheet_verifies(sheet, self.key):
            raise SheetRefused(
                f"{path}: the signature does not verify (edited by hand, or signed with another secret than "
                "ESPER_LEYLINE_SECRET); measure the blueprint again"
            )
        if path.name != f"{sheet.artifact_key}{SUFFIX}":
            raise SheetRefused(f"{path}: the sheet is of artifact {sheet.artifact_key}, not of the file's name")
        return sheet
