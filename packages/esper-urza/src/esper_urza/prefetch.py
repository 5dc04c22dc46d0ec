"""``urza-prefetch``: an artifact store whose artifacts ``esper serve urza`` builds, for a training process that
should not build them itself.

Selected with ``urza.store = "urza-prefetch"``. A fetch:

1. publishes a ``KernelPrefetchRequest`` (a fresh ``request_id``, the run's id, the blueprint, its parameters, the
   slot's kind and shape, and for a width slot the kind and shape its seed reads) on
   ``oona.streams.kernel_requests``;
2. waits for the reply with that request id on ``kernel_ready`` or ``kernel_errors``, read with a consumer group of
   its own (every store sees every reply; replies to other requests are acknowledged and skipped), at most
   ``urza.prefetch.timeout_s``;
3. opens the artifact the reply names from the library directory it shares with the service (``urza.root``),
   checking the file's SHA-256 against the reply's checksum before parsing it, and returns a
   :class:`~esper_core.protocols.FetchedSeed` as the local ``urza`` store would (``source`` says where this
   process found the weights: ``disk`` the first time, ``memory`` after).

An error reply raises :class:`~esper_urza.errors.ArtifactServiceError` (an ``ArtifactBuildError``) with the
service's reason; no reply in time raises :class:`~esper_urza.errors.ArtifactPrefetchTimeout`, which says how to
start the service.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from esper_core.errors import ConfigError, EsperError
from esper_core.leyline import KernelArtifactError, KernelArtifactReady, KernelPrefetchRequest
from esper_core.oona import Oona
from esper_core.protocols import FetchedSeed, SlotShape
from esper_core.security_options import SecurityOptions
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_urza.errors import ArtifactIntegrityError, ArtifactPrefetchTimeout, ArtifactServiceError
from esper_urza.options import PrefetchOptions, UrzaOptions

if TYPE_CHECKING:
    from esper_core.plugins import BuildContext
    from esper_urza.library import UrzaLibrary

log = logging.getLogger("esper.urza.prefetch")

#: The longest single blocking read while waiting (the wait is a loop of these until the deadline).
POLL_MS = 1000


def _redacted(url: str) -> str:
    if "://" not in url:
        return url
    from esper_core.oona.redis_backend import redact_url

    return redact_url(url)


class PrefetchStore:
    """An :class:`esper_core.protocols.ArtifactStore` answered by ``esper serve urza`` over the bus.

    :param bus: an Oona client of the store's own (its consumer group must be used by no other reader, or it would
        take replies this store waits for). The store never closes its backend: that belongs to the run.
    :param library: the library at the service's ``urza.root``, used to open (never to build) artifacts; closed by
        :meth:`close`.
    :param timeout_s: how long one fetch waits for the service's reply.
    """

    def __init__(
        self,
        bus: Oona,
        library: UrzaLibrary,
        *,
        training_run_id: str = "",
        timeout_s: float = 30.0,
        secret_env: str = SECRET_ENV_VAR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.library = library
        self.training_run_id = training_run_id
        self.timeout_s = timeout_s
        self.secret_env = secret_env
        #: Replies read that answered other requests (another store's, or one this store stopped waiting for).
        self.skipped_replies = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._streams = [bus.streams.kernel_ready, bus.streams.kernel_errors]
        # The group starts at the streams' end: nothing already there can answer a request this store has yet to
        # make, and it exists before the first request goes out, so no reply can slip past it.
        self.bus.subscribe(self._streams)

    def fetch(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> FetchedSeed:
        """Ask the service for the artifact, wait for its answer, and open the artifact from the shared library."""
        started = time.perf_counter()
        request = KernelPrefetchRequest(
            request_id=uuid.uuid4().hex,
            blueprint_id=blueprint_id,
            training_run_id=self.training_run_id,
            parameters={name: float(value) for name, value in parameters.items()},
            slot_kind=slot.kind,
            slot_shape=[int(size) for size in slot.shape],
        )
        if slot.is_width:  # the seed reads another activation than it writes: the service builds for both sides
            request.read_kind = slot.read_kind
            request.read_shape.extend(int(size) for size in slot.read_shape)
        request.issued_at.GetCurrentTime()
        with self._lock:  # one wait at a time: a concurrent wait would acknowledge (and lose) this one's reply
            if self._closed:
                raise EsperError("the urza-prefetch store is closed")
            self.bus.publish(request, stream=self.bus.streams.kernel_requests, correlation_id=request.request_id)
            reply = self._await(request.request_id)
        if isinstance(reply, KernelArtifactError):
            raise ArtifactServiceError(
                blueprint_id, slot.describe(), parameters, reason=reply.reason, request_id=request.request_id
            )
        opened = self.library.open_artifact(reply.artifact_ref, reply.checksum, slot=slot)
        if opened.descriptor.blueprint_id != blueprint_id:
            raise ArtifactIntegrityError(
                f"esper serve urza answered request {request.request_id} for {blueprint_id} with artifact "
                f"{reply.artifact_ref[:12]}, which is {opened.descriptor.blueprint_id}"
            )
        return attrs.evolve(opened, fetch_latency_ms=(time.perf_counter() - started) * 1000.0)

    def _await(self, request_id: str) -> KernelArtifactReady | KernelArtifactError:
        deadline = self._clock() + self.timeout_s
        while True:
            remaining_ms = math.ceil((deadline - self._clock()) * 1000)
            if remaining_ms <= 0:
                raise self._timeout(request_id)
            found: KernelArtifactReady | KernelArtifactError | None = None
            messages = self.bus.poll(self._streams, count=32, block_ms=min(remaining_ms, POLL_MS))
            for message in messages:
                payload = message.payload
                if (
                    isinstance(payload, (KernelArtifactReady, KernelArtifactError))
                    and payload.request_id == request_id
                    and found is None
                ):
                    found = payload
                else:
                    self.skipped_replies += 1
            if messages:
                self.bus.ack_many(messages)
            if found is not None:
                return found

    def _timeout(self, request_id: str) -> ArtifactPrefetchTimeout:
        backend = self.bus.options.backend
        hint = ""
        if backend == "memory":
            hint = (
                " This bus is oona.backend = 'memory', which no other process can reach: set it to the "
                'service\'s Redis (oona.backend = "redis://HOST:6379/0").'
            )
        return ArtifactPrefetchTimeout(
            f"no `esper serve urza` answered prefetch request {request_id} within {self.timeout_s:g} s. Start one on "
            f"the same bus and library, with the same {self.secret_env}: esper serve urza --set "
            f"oona.backend={_redacted(backend)} --set urza.root={self.library.root} (a cold build can take "
            f"seconds: raise urza.prefetch.timeout_s if the service is running but slow).{hint}"
        )

    def close(self) -> None:
        """Close the library this store opened, and delete the store's consumer group (its own: nobody reads it
        again, and Redis would keep it forever). The bus's backend belongs to the run."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.bus.destroy_group(self._streams)
            except EsperError as error:  # the bus may be down; a leftover group costs nothing but its name
                log.warning("could not delete the prefetch store's group %s: %s", self.bus.group, error)
            finally:
                self.library.close()

    def __enter__(self) -> PrefetchStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def build_prefetch_store(context: BuildContext) -> PrefetchStore:
    """The store for one run: a bus client of its own over the run's bus, the library at ``urza.root``."""
    from esper_urza.library import UrzaLibrary

    bus = context.bus
    if not isinstance(bus, Oona):
        raise ConfigError(
            "urza.store = 'urza-prefetch' fetches artifacts from `esper serve urza` over the bus, but this component "
            "was built without one: it needs the run's bus, shared with the service (oona.backend = "
            '"redis://HOST:6379/0" in both)'
        )
    if bus.options.backend == "memory":
        raise ConfigError(
            "urza.store = 'urza-prefetch' fetches artifacts from `esper serve urza`, another process, but this run's "
            "bus is in-process (oona.backend = 'memory'): set oona.backend = \"redis://HOST:6379/0\", the service's"
        )
    config = context.config
    urza = config.get(UrzaOptions) if config is not None else UrzaOptions()
    security = config.get(SecurityOptions) if config is not None else SecurityOptions()
    if SigningKey.from_env(var=security.secret_env) is None:
        raise ConfigError(
            f"urza.store = 'urza-prefetch' needs the secret `esper serve urza` verifies requests with: set "
            f"{security.secret_env} to the same value in this process and in the service"
        )
    if urza.root is None:
        raise ConfigError(
            "urza.store = 'urza-prefetch' opens the artifacts `esper serve urza` stores, so urza.root must name the "
            "library directory the service uses (--set urza.root=/srv/esper/urza, or ESPER_URZA__ROOT), on a "
            "filesystem both processes reach"
        )
    options = context.options if isinstance(context.options, PrefetchOptions) else PrefetchOptions()
    run_id = str(getattr(context, "training_run_id", None) or context.services.get("training_run_id") or "")
    if not run_id and context.run_dir is not None:
        run_id = context.run_dir.name
    group = f"urza-prefetch-{run_id or 'run'}-{uuid.uuid4().hex[:8]}"
    client = Oona(bus.backend, signing_key=bus.key, options=bus.options, group=group, consumer=group, source=group)
    # The run's own bus: the library publishes what it reports (a corrupt artifact evicted) on the run's telemetry.
    library = UrzaLibrary(urza.root, context.blueprint_catalogs(), options=urza, bus=bus, training_run_id=run_id)
    try:
        return PrefetchStore(
            client, library, training_run_id=run_id, timeout_s=options.timeout_s, secret_env=security.secret_env
        )
    except BaseException:
        library.close()
        raise
