"""Plugins fail loudly, harmlessly: what an exception raised by a plugin becomes in a run.

A run calls code it did not write at every plugin point: a policy, a controller, blueprint catalogs, an artifact
store, a seed executor, a task, telemetry sinks. When that code raises, the person running Esper must learn which
plugin it was, from which distribution, and what it raised, once, without the run dying of it, and the plugin's
author needs the traceback. One mechanism does that for every plugin point, in three parts:

1. **Blame.** An exception is marked with the plugin that raised it (:func:`blame`), where that is known: by
   :func:`guard`, the thin proxy Tolaria puts around each component it builds, or by the subsystem that called the
   plugin (Kasmina marks what a seed module raises in the forward pass). Only an exception whose chain carries no
   mark yet is marked, so one that travels through several plugins (a catalog's ``build`` inside an artifact store's
   ``fetch`` inside an executor's ``apply``) stays blamed on the plugin that raised it. A guard marks nothing while
   nothing raises, and costs one Python call per call.
2. **Capture.** Whoever catches the exception and carries on makes a :class:`PluginFailure` of it
   (:func:`failure_of`): the plugin, the exception's type and message, and the full traceback as text. A subsystem
   that turns a plugin's exception into a safe result (Kasmina refusing a germination whose build raised, Tamiyo
   deciding a no-op for a policy that raised) keeps the failure and hands it on through ``drain_plugin_failures()``
   (:class:`PluginFailureSource`), since only it saw the exception.
3. **The ledger.** :class:`PluginFailureLedger` writes each failure down where people and programs look: the
   traceback in ``RUN/plugin-errors/NNN-<kind>-<name>.txt`` (written atomically; an identical traceback of the same
   plugin is not written twice), a ``plugin_error`` entry in the run record, a count per plugin and exception type
   (saved in checkpoints), and one console line per plugin and exception type.

What a run does about a failure (a no-op in place of a decision, a command that fails safely, a blueprint
quarantined for the run, conservative mode, an epoch trained again) is the caller's decision; the ledger keeps the
facts. Nissa's sinks can use the same three parts: guard a sink, catch around ``emit``, report to the run's ledger.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import re
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

import attrs

from esper_core.errors import EsperError
from esper_core.storage import atomic_write_text

if TYPE_CHECKING:
    from esper_core.plugins.registry import Registry

__all__ = [
    "DIRECTORY",
    "Blame",
    "Guarded",
    "Origin",
    "PluginFailure",
    "PluginFailureLedger",
    "PluginFailureSource",
    "Reported",
    "blame",
    "blamed",
    "failure_of",
    "first_argument",
    "guard",
    "guarded_identity",
    "origin_of",
    "unguarded",
]

T = TypeVar("T")

#: The run directory's folder of tracebacks.
DIRECTORY = "plugin-errors"
#: The attribute of an exception that holds its :class:`Blame`.
BLAME_ATTRIBUTE = "__esper_blame__"
#: Console lines and record entries keep this much of an exception's message (the traceback file keeps all of it).
MESSAGE_LIMIT = 500
#: What a guard does not blame a plugin for unless told otherwise: an Esper error is raised on purpose, with a
#: message that says what is wrong (a refusal, not a crash).
REFUSALS: tuple[type[BaseException], ...] = (EsperError,)


@attrs.frozen
class Blame:
    """Which plugin raised: its plugin point's kind (``"policy"``, ``"blueprint catalog"``, ...) and its name as the
    run configured it, the call it was in, and what the call was about when that matters (``subject``: the blueprint
    a catalog was building; ``slot``: the seed slot whose seed module raised)."""

    kind: str
    name: str
    during: str
    subject: str = ""
    slot: str = ""
    #: The module of the plugin object's class: where to look for its distribution when the registry does not know.
    module: str = ""

    @property
    def plugin(self) -> str:
        """How messages name the plugin: ``policy 'explode'``."""
        return f"{self.kind} {self.name!r}"


def blame(error: BaseException, who: Blame) -> None:
    """Mark ``error`` as raised by ``who``, unless it (or an exception in its chain) is marked already."""
    if blamed(error) is not None:
        return
    with contextlib.suppress(AttributeError, TypeError):  # a type that takes no attributes stays unblamed
        setattr(error, BLAME_ATTRIBUTE, who)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling (unless ``raise ... from None`` said it was
    not about them), outermost first, each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        context = None if current.__suppress_context__ else current.__context__
        pending.extend(linked for linked in (current.__cause__, context) if linked is not None)


def blamed(error: BaseException) -> tuple[Blame, BaseException] | None:
    """The mark in ``error``'s chain and the exception that carries it (the one the plugin raised), or ``None``."""
    for link in _chain(error):
        who = getattr(link, BLAME_ATTRIBUTE, None)
        if isinstance(who, Blame):
            return who, link
    return None


@attrs.frozen
class PluginFailure:
    """One exception raised by a plugin, as a run keeps it: who raised what, and the traceback as text."""

    kind: str
    name: str
    during: str
    error_type: str
    message: str
    traceback: str
    subject: str = ""
    slot: str = ""
    module: str = ""

    @property
    def plugin(self) -> str:
        return f"{self.kind} {self.name!r}"

    @property
    def key(self) -> str:
        """The plugin as counters and summaries key it: ``"policy:explode"``."""
        return f"{self.kind}:{self.name}"

    def describe(self) -> str:
        """``RuntimeError: boom`` (the message on one line, cut at :data:`MESSAGE_LIMIT` characters)."""
        return f"{self.error_type}: {_one_line(self.message)}" if self.message else self.error_type


def failure_of(error: BaseException, default: Blame | None = None) -> PluginFailure | None:
    """The failure ``error`` is: blamed on the plugin marked in its chain, else on ``default`` (the plugin the caller
    called); ``None`` when neither says a plugin raised it (then it is not a plugin's failure: let it propagate)."""
    found = blamed(error)
    if found is not None:
        who, raised = found
    elif default is not None:
        who, raised = default, error
    else:
        return None
    return PluginFailure(
        kind=who.kind,
        name=who.name,
        during=who.during,
        error_type=type(raised).__name__,
        message=str(raised),
        traceback="".join(traceback.format_exception(error)),
        subject=who.subject,
        slot=who.slot,
        module=who.module,
    )


@runtime_checkable
class PluginFailureSource(Protocol):
    """A component that catches its plugins' exceptions to carry on safely, and hands them to the run.

    Tolaria calls ``drain_plugin_failures()`` on the controller and the seed executor after each call it makes to
    them (from the training loop's thread); it returns what was caught since the last call, oldest first.
    """

    def drain_plugin_failures(self) -> list[PluginFailure]: ...


# -- guards ---------------------------------------------------------------------------------------------------------


def first_argument(name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """A ``subjects`` entry for :func:`guard`: the call's first argument (or keyword ``name``) as text."""

    def subject(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        value = args[0] if args else kwargs.get(name, "")
        return str(value)

    return subject


class Guarded:
    """A component seen through :func:`guard`: every attribute is the component's, and every method call blames an
    exception it raises on the component (see the module's notes).

    The methods of the component's class are wrapped when the guard is made, so that they are visible without
    calling ``__getattr__`` (``isinstance`` with a runtime-checkable protocol of methods only, such as
    :class:`~esper_core.protocols.ArtifactStore`, looks at attributes statically from Python 3.12 on); other
    routines are wrapped on first use. A wrapper looks its method up at each call (a method replaced later is the
    one called) and costs one Python call more than the bare method: nothing next to a training step, the hottest
    place one is used (a task's ``loss``). Data attributes are read and written through to the component. A
    protocol with data members (``BlueprintCatalog.name``) is not recognized statically through a guard: check
    :func:`unguarded` instead.
    """

    def __init__(
        self,
        target: Any,
        kind: str,
        name: str,
        refusals: Mapping[str, tuple[type[BaseException], ...]],
        subjects: Mapping[str, Callable[[tuple[Any, ...], dict[str, Any]], str]],
    ) -> None:
        object.__setattr__(self, "_guarded_target", target)
        object.__setattr__(self, "_guarded_kind", kind)
        object.__setattr__(self, "_guarded_name", name)
        object.__setattr__(self, "_guarded_refusals", dict(refusals))
        object.__setattr__(self, "_guarded_subjects", dict(subjects))
        cls = type(target)
        for attribute in dir(cls):
            if attribute.startswith("_"):
                continue
            static = inspect.getattr_static(cls, attribute, None)
            if isinstance(static, (types.FunctionType, staticmethod, classmethod)):
                object.__setattr__(self, attribute, self._guarded_wrap(attribute, getattr(target, attribute)))

    def __getattr__(self, attribute: str) -> Any:
        target = object.__getattribute__(self, "_guarded_target")
        value = getattr(target, attribute)
        if attribute.startswith("__") or not inspect.isroutine(value):
            return value
        wrapped = self._guarded_wrap(attribute, value)
        object.__setattr__(self, attribute, wrapped)  # found by ordinary lookup from now on
        return wrapped

    def __setattr__(self, attribute: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_guarded_target"), attribute, value)
        # The wrapper of what was there goes: the next lookup wraps the new value (or finds a plain value), so a
        # method replaced through the guard (a test's or a profiler's) is guarded in turn, never wrapped twice.
        self.__dict__.pop(attribute, None)

    def __delattr__(self, attribute: str) -> None:
        delattr(object.__getattribute__(self, "_guarded_target"), attribute)
        self.__dict__.pop(attribute, None)

    def __repr__(self) -> str:
        return f"guarded({object.__getattribute__(self, '_guarded_target')!r})"

    def _guarded_wrap(self, attribute: str, method: Callable[..., Any]) -> Callable[..., Any]:
        target = object.__getattribute__(self, "_guarded_target")
        kind = object.__getattribute__(self, "_guarded_kind")
        name = object.__getattribute__(self, "_guarded_name")
        refused = object.__getattribute__(self, "_guarded_refusals").get(attribute, REFUSALS)
        subject_of = object.__getattribute__(self, "_guarded_subjects").get(attribute)
        module = type(target).__module__

        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if not isinstance(error, refused):
                    subject = subject_of(args, kwargs) if subject_of is not None else ""
                    blame(error, Blame(kind, name, attribute, subject=subject, module=module))
                raise

        return guarded


def guard(
    target: T,
    *,
    kind: str,
    name: str,
    refusals: Mapping[str, tuple[type[BaseException], ...]] | None = None,
    subjects: Mapping[str, Callable[[tuple[Any, ...], dict[str, Any]], str]] | None = None,
) -> T:
    """``target`` behind a :class:`Guarded` proxy that blames what its methods raise on plugin ``kind``/``name``.

    :param refusals: per method, the exception types that are the method's documented answers rather than failures
        (default for every method: :data:`REFUSALS`; give ``()`` to blame everything a method raises).
    :param subjects: per method, how to name what the call is about (see :func:`first_argument`).
    """
    if isinstance(target, Guarded):
        return target
    return cast(T, Guarded(target, kind, name, refusals or {}, subjects or {}))


def unguarded(component: Any) -> Any:
    """The component behind a guard (or ``component`` itself). Check protocols on it: from Python 3.12,
    ``isinstance`` with a runtime-checkable protocol looks at attributes statically and does not see through a guard.
    """
    if isinstance(component, Guarded):
        return object.__getattribute__(component, "_guarded_target")
    return component


def guarded_identity(component: Any) -> tuple[str, str] | None:
    """(kind, name) of a guarded component, or ``None`` for one that is not guarded."""
    if isinstance(component, Guarded):
        kind = object.__getattribute__(component, "_guarded_kind")
        name = object.__getattribute__(component, "_guarded_name")
        return str(kind), str(name)
    return None


# -- where a plugin comes from ----------------------------------------------------------------------------------


@attrs.frozen
class Origin:
    """Where a plugin comes from: its distribution and version when it was installed as one, and a description for
    messages (``distribution 'acme-esper' 0.1.0``, ``plugin 'acme' (registered directly, ...)``)."""

    distribution: str | None
    version: str | None
    described: str

    @property
    def shown(self) -> str:
        """``acme-esper 0.1.0`` (what the record keeps), or ``""`` when the plugin is not from a distribution."""
        if self.distribution:
            return f"{self.distribution} {self.version or ''}".strip()
        return ""


def origin_of(registry: Registry | None, kind: str, name: str, module: str = "") -> Origin:
    """Where plugin ``kind``/``name`` comes from: the distribution whose entry point provided it (the registry knows
    that for every component it built), else the distribution that installed ``module``, else the module itself."""
    if registry is not None:
        from esper_core.plugins.points import PLUGIN_POINTS

        for point in PLUGIN_POINTS:
            if point.kind != kind:
                continue
            try:
                info = registry.provider_of(registry.get(point.spec_type, name))
            except (LookupError, EsperError):
                break
            if info.distribution:
                described = f"distribution {info.distribution!r} {info.version or ''}".strip()
                return Origin(info.distribution, info.version, described)
            return Origin(None, None, info.describe())
    top = module.split(".", maxsplit=1)[0]
    if top:
        distributions = _packages_distributions().get(top, [])
        if distributions:
            distribution = distributions[0]
            try:
                version: str | None = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                version = None
            return Origin(distribution, version, f"distribution {distribution!r} {version or ''}".strip())
        return Origin(None, None, f"module {module!r} (not from an installed distribution)")
    return Origin(None, None, "an unknown distribution")


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    """Top-level module -> the distributions that install it (a scan of every installed distribution: once)."""
    return importlib.metadata.packages_distributions()


# -- the ledger -----------------------------------------------------------------------------------------------------


class RecordLike(Protocol):
    """Where the ledger writes its entries (a run's :class:`~esper_core.tolaria.record.RunRecord`)."""

    def append(self, kind: str, **fields: Any) -> None: ...


@attrs.frozen
class Reported:
    """What the ledger made of one failure: the traceback file (relative to the run directory), the record entry it
    wrote, and whether this was the first of its plugin and exception type in this process (the console heard of it)."""

    failure: PluginFailure
    origin: Origin
    traceback_file: str
    entry: dict[str, Any]
    announced: bool


def _one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _file_part(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "plugin"


class PluginFailureLedger:
    """Writes one run's plugin failures down (see the module's notes) and counts them; its counts and the blueprints
    quarantined for the run travel in checkpoints (:meth:`state_dict`).

    :param run_dir: the run directory (tracebacks go to ``run_dir / plugin-errors``).
    :param record: where ``plugin_error`` and ``quarantine`` entries go.
    :param origin: where a failed plugin comes from (:func:`origin_of` with the run's registry).
    :param announce: prints one line for people; called once per plugin and exception type in this process.

    Call it from one thread (the training loop's): failures caught elsewhere are handed over first
    (:class:`PluginFailureSource`).
    """

    def __init__(
        self,
        run_dir: Path,
        record: RecordLike,
        *,
        origin: Callable[[PluginFailure], Origin],
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.record = record
        self.origin = origin
        self.announce = announce
        #: Failures per plugin key (``kind:name``) and exception type, across resumes.
        self.counts: dict[str, dict[str, int]] = {}
        #: Blueprints this run will not germinate again: blueprint id -> what happened (catalog, reason, epoch).
        self.quarantined: dict[str, dict[str, Any]] = {}
        self._files: dict[str, str] = {}  # digest of plugin and traceback -> the file that holds it
        self._announced: set[tuple[str, str]] = set()
        self._origins: dict[tuple[str, str, str], Origin] = {}
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        return self.run_dir / DIRECTORY

    @property
    def total(self) -> int:
        return sum(sum(by_type.values()) for by_type in self.counts.values())

    def report(self, failure: PluginFailure, *, epoch: int, consequence: str) -> Reported:
        """Write ``failure`` down: its traceback file, a ``plugin_error`` record entry, its count, and (the first time
        for its plugin and exception type) one console line. ``consequence`` says what the run did about it."""
        with self._lock:
            where = (failure.kind, failure.name, failure.module)
            origin = self._origins.get(where)
            if origin is None:
                origin = self._origins[where] = self.origin(failure)
            by_type = self.counts.setdefault(failure.key, {})
            by_type[failure.error_type] = by_type.get(failure.error_type, 0) + 1
            relative = self._traceback_file(failure, origin, epoch, consequence)
            entry: dict[str, Any] = {
                "epoch": epoch,
                "plugin_kind": failure.kind,
                "plugin": failure.name,
                "distribution": origin.shown or None,
                "provider": origin.described,
                "during": failure.during,
                "subject": failure.subject or None,
                "slot": failure.slot or None,
                "error_type": failure.error_type,
                "message": _one_line(failure.message, 4 * MESSAGE_LIMIT),
                "traceback": relative,
                "consequence": consequence,
                "count": by_type[failure.error_type],
            }
            self.record.append("plugin_error", **entry)
            first = (failure.key, failure.error_type) not in self._announced
            if first:
                self._announced.add((failure.key, failure.error_type))
                if self.announce is not None:
                    self.announce(self.line(failure, origin, relative, consequence))
            return Reported(failure, origin, relative, entry, first)

    def line(self, failure: PluginFailure, origin: Origin, relative: str, consequence: str) -> str:
        """The one console line of a failure (the first of its plugin and exception type)."""
        subject = f" ({failure.subject})" if failure.subject else ""
        return (
            f"{failure.plugin} from {origin.described} raised {failure.describe()} in {failure.during}{subject}; "
            f"{consequence}. Traceback: {self.run_dir / relative} (repeats are counted in the record, not shown)"
        )

    def _traceback_file(self, failure: PluginFailure, origin: Origin, epoch: int, consequence: str) -> str:
        digest = hashlib.sha256(f"{failure.key}\n{failure.describe()}\n{failure.traceback}".encode()).hexdigest()
        known = self._files.get(digest)
        if known is not None and (self.run_dir / known).exists():
            return known
        number = self._next_number()
        relative = f"{DIRECTORY}/{number:03d}-{_file_part(failure.kind)}-{_file_part(failure.name)}.txt"
        subject = f" ({failure.subject})" if failure.subject else ""
        slot = f", seed slot {failure.slot!r}" if failure.slot else ""
        header = [
            f"plugin:      {failure.plugin}, from {origin.described}",
            f"module:      {failure.module or '-'}",
            f"raised:      {failure.describe()}",
            f"during:      {failure.during}{subject}{slot}, epoch {epoch} (the first time; the record counts the rest)",
            f"consequence: {consequence}",
            "",
        ]
        atomic_write_text(self.run_dir / relative, "\n".join(header) + "\n" + failure.traceback)
        self._files[digest] = relative
        return relative

    def _next_number(self) -> int:
        """One more than the highest number in the folder: files are never overwritten, not even after a resume or a
        rollback cut the record entries that named them."""
        highest = 0
        if self.directory.is_dir():
            for path in self.directory.glob("[0-9]*-*.txt"):
                prefix = path.name.split("-", 1)[0]
                if prefix.isdigit():
                    highest = max(highest, int(prefix))
        return highest + 1

    # -- quarantine -------------------------------------------------------------------------------------------------
    def quarantine(self, blueprint_id: str, *, catalog: str, reason: str, epoch: int, traceback_file: str) -> bool:
        """Keep ``blueprint_id`` out of the rest of the run; writes a ``quarantine`` entry. False if it already was."""
        with self._lock:
            if blueprint_id in self.quarantined:
                return False
            details = {"catalog": catalog, "reason": reason, "epoch": epoch, "traceback": traceback_file}
            self.quarantined[blueprint_id] = details
            self.record.append("quarantine", blueprint=blueprint_id, **details)
            return True

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (it loads with ``weights_only``): the counts, the quarantine and the traceback files written."""
        with self._lock:
            return {
                "counts": {key: dict(by_type) for key, by_type in self.counts.items()},
                "quarantined": {key: dict(details) for key, details in self.quarantined.items()},
                "files": dict(self._files),
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with self._lock:
            counts = dict(state.get("counts", {}))
            self.counts = {
                str(key): {str(t): int(n) for t, n in dict(by_type).items()} for key, by_type in counts.items()
            }
            self.quarantined = {str(key): dict(details) for key, details in dict(state.get("quarantined", {})).items()}
            self._files = {str(key): str(value) for key, value in dict(state.get("files", {})).items()}
