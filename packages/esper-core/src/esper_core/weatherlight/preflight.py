"""Preflight: everything ``esper serve`` needs, checked before anything starts, every problem reported at once.

Checks, in order, collecting every failure rather than stopping at the first:

1. every requested service is provided by an installed plugin;
2. the shared signing secret is set (``ESPER_LEYLINE_SECRET``, or ``security.secret_env``): processes that talk
   over a bus must share it, so a missing secret is an error here, never a random per-run key;
3. the configured bus backend is installed, can be built, and answers (a PING for Redis);
4. what each service declares in its :class:`~esper_core.plugins.ServiceSpec`: the Python modules it ``requires``
   and its own ``preflight`` checks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from esper_core.errors import EsperError
from esper_core.oona.options import OonaOptions
from esper_core.plugins.descriptors import BuildContext, ServiceSpec
from esper_core.security_options import SecurityOptions
from esper_core.signing import SigningKey

if TYPE_CHECKING:
    from esper_core.config import EsperConfig
    from esper_core.oona import BusBackend
    from esper_core.plugins.registry import Registry


class PreflightError(EsperError):
    """One or more dependencies of the requested services are missing; nothing was started."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        count = len(self.problems)
        super().__init__(f"preflight found {count} problem{'s' if count != 1 else ''}; nothing was started:\n{lines}")


@attrs.frozen
class Prepared:
    """What preflight resolved: the services to run, the shared key, and the (reachable) bus backend."""

    specs: tuple[ServiceSpec, ...]
    signing_key: SigningKey
    backend: BusBackend
    #: ``oona.backend`` as configured, with any password hidden.
    backend_url: str


def _redacted(url: str) -> str:
    if "://" not in url:
        return url
    from esper_core.oona.redis_backend import redact_url

    return redact_url(url)


def _module_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package is missing, or the name is not importable
        return True


def preflight(
    registry: Registry, config: EsperConfig, names: Iterable[str], *, env: Mapping[str, str] | None = None
) -> Prepared:
    """Resolve and check everything ``names`` need; raise :class:`PreflightError` listing every problem."""
    problems: list[str] = []
    specs: list[ServiceSpec] = []
    for name in names:
        try:
            specs.append(registry.service(name))
        except EsperError as error:
            problems.append(f"service {name!r}: {error}")

    security = config.get(SecurityOptions)
    key: SigningKey | None = None
    try:
        key = SigningKey.resolve(required=True, env=env, var=security.secret_env)
    except EsperError as error:
        problems.append(f"secret: {error}")

    oona = config.get(OonaOptions)
    where = _redacted(oona.backend)
    backend: Any = None
    try:
        backend = registry.build(registry.bus_backend(oona.backend), config=config)
        ping = getattr(backend, "ping", None)
        if callable(ping):
            ping()
    except EsperError as error:
        problems.append(f"bus (oona.backend = {where!r}): {error}")

    for spec in specs:
        for module in spec.requires:
            if _module_missing(module):
                problems.append(
                    f"service {spec.name!r} needs the Python module {module!r}, which is not installed; install the "
                    f"distribution that provides it (the service comes from {registry.provider_of(spec).describe()})"
                )
        if spec.preflight is not None:
            options = config.get(spec.options) if spec.options is not None else None
            context = BuildContext(registry=registry, config=config, options=options, signing_key=key)
            try:
                problems.extend(f"service {spec.name!r}: {problem}" for problem in spec.preflight(context))
            except Exception as error:  # noqa: BLE001 - a failing check is a problem to report, not a crash
                problems.append(f"service {spec.name!r}: its preflight check raised {type(error).__name__}: {error}")

    if problems:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
        raise PreflightError(problems)
    assert key is not None and backend is not None
    return Prepared(tuple(specs), key, backend, where)
