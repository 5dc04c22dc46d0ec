"""Errors esper-urza raises on purpose. All are :class:`esper_core.errors.EsperError`, which is what a caller that
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
        super().__init__(f"Tezzeret refused {blueprint} at {slot} ({self.shown()}): check {check!r} failed: {detail}")

    def shown(self) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in sorted(self.parameters.items())) or "no parameters"


class ArtifactServiceError(ArtifactBuildError):
    """``esper serve urza`` answered a prefetch request with an error: :attr:`reason` is its explanation (an unknown
    blueprint, bad parameters or slot, Tezzeret's refusal, or a failure of the service). ``check`` is ``"service"``."""

    def __init__(
        self, blueprint: str, slot: str, parameters: Mapping[str, float], *, reason: str, request_id: str
    ) -> None:
        super().__init__(blueprint, slot, parameters, check="service", detail=reason)
        self.reason = reason
        self.request_id = request_id
        self.args = (
            f"esper serve urza could not provide {blueprint} at {slot} ({self.shown()}): {reason} "
            f"(request {request_id})",
        )


class ArtifactIntegrityError(EsperError):
    """An artifact file is missing, altered (its SHA-256 differs from the library's record) or unreadable."""


class ArtifactPrefetchTimeout(EsperError, TimeoutError):
    """No ``esper serve urza`` answered a prefetch request in time; the message says how to start one."""


class LibraryFileError(EsperError):
    """A file or directory of the library itself (its root, ``artifacts/``, ``catalog.sqlite``, ``journal.log``)
    cannot be used: :attr:`path` names it, and the message says what is wrong with it and how to fix it.

    What the library can repair on its own (a damaged index, a damaged journal, stale temporary files, a missing
    ``artifacts/``) it repairs when it opens; this error is for what it must not decide alone (a directory where a
    file should be, a file it may not read or write, an index written by a newer esper-urza)."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"the Urza library cannot use {self.path}: {problem}; {fix}")
