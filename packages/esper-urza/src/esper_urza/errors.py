"""Errors esper-urza raises on purpose. Both are :class:`esper_core.errors.EsperError`, which is what a caller that
reaches Urza through the core protocols (Kasmina) can catch without importing this package."""

from __future__ import annotations

from collections.abc import Mapping

from esper_core.errors import EsperError


class ArtifactBuildError(EsperError):
    """Tezzeret refused to make an artifact: names the blueprint, the slot, the parameters, the failed check and
    its numbers (also in :attr:`numbers`)."""

    def __init__(
        self,
        blueprint: str,
        slot: str,
        parameters: Mapping[str, float],
        *,
        check: str,
        detail: str,
        numbers: Mapping[str, float | int | str] | None = None,
    ) -> None:
        self.blueprint = blueprint
        self.slot = slot
        self.parameters = dict(parameters)
        self.check = check
        self.detail = detail
        self.numbers = dict(numbers or {})
        shown = ", ".join(f"{name}={value:g}" for name, value in sorted(self.parameters.items())) or "no parameters"
        super().__init__(f"Tezzeret refused {blueprint} at {slot} ({shown}): check {check!r} failed: {detail}")


class ArtifactIntegrityError(EsperError):
    """An artifact file is missing, altered (its SHA-256 differs from the library's record) or unreadable."""
