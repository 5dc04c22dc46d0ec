"""HMAC-SHA256 signing of commands, bus envelopes and policy updates, with replay and freshness checks.

There is one secret per deployment. In a single process with no configured secret a random per-run secret is
generated (:meth:`SigningKey.resolve`); across processes ``ESPER_LEYLINE_SECRET`` is required and its absence is a
clear startup error. Every refusal carries a Leyline ``SecurityRejectionReason``.

Replay protection must stay bounded in memory without ever letting a replay through: the :class:`NonceLedger` keeps
nonces for as long as a command could still be accepted, and when it must evict a nonce that is still inside that
window it raises a *horizon* instead: commands issued at or before the horizon are refused as stale, since the
ledger can no longer prove they are not replays.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeAlias

import attrs
from google.protobuf.message import Message

from esper_core.errors import SecurityError
from esper_core.leyline import AdaptationCommand, SecurityRejectionReason

SECRET_ENV_VAR = "ESPER_LEYLINE_SECRET"
MIN_SECRET_BYTES = 16

Reason: TypeAlias = SecurityRejectionReason.ValueType


@attrs.frozen
class SigningKey:
    """A shared HMAC secret. ``key_id`` identifies it (for rotation) without revealing it."""

    secret: bytes = attrs.field(repr=False)
    key_id: str = attrs.field(init=False)

    @secret.validator
    def _long_enough(self, _attribute: object, value: bytes) -> None:
        if len(value) < MIN_SECRET_BYTES:
            raise SecurityError(
                f"the signing secret is {len(value)} bytes; use at least {MIN_SECRET_BYTES} "
                f"(for example: export {SECRET_ENV_VAR}=$(python -c 'import secrets; print(secrets.token_hex(32))'))"
            )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "key_id", hashlib.sha256(self.secret).hexdigest()[:12])

    @classmethod
    def from_secret(cls, secret: str | bytes) -> SigningKey:
        return cls(secret.encode("utf-8") if isinstance(secret, str) else secret)

    @classmethod
    def generate(cls) -> SigningKey:
        """A random key for one process; nothing outside the process can verify its signatures."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, var: str = SECRET_ENV_VAR) -> SigningKey | None:
        value = (os.environ if env is None else env).get(var, "")
        return cls.from_secret(value) if value else None

    @classmethod
    def resolve(cls, *, required: bool, env: Mapping[str, str] | None = None, var: str = SECRET_ENV_VAR) -> SigningKey:
        """The configured key; when none is configured, a per-run random key, or an error if one is ``required``."""
        key = cls.from_env(env, var)
        if key is not None:
            return key
        if required:
            raise SecurityError(
                f"{var} is not set. Processes that talk over a shared bus must share a secret: export {var} with "
                "the same value (at least 16 characters) for every Esper process, for example "
                f"export {var}=$(python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return cls.generate()

    def sign(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, hashlib.sha256).digest()

    def verify(self, data: bytes, signature: bytes) -> bool:
        return bool(signature) and hmac.compare_digest(self.sign(data), signature)


def message_bytes_without(message: Message, clear: Callable[[Message], None]) -> bytes:
    """The deterministic serialization of ``message`` after ``clear`` removed its signature from a copy."""
    copy = type(message)()
    copy.CopyFrom(message)
    clear(copy)
    return copy.SerializeToString(deterministic=True)


def _command_signed_bytes(command: AdaptationCommand) -> bytes:
    return message_bytes_without(command, lambda c: c.security.ClearField("signature"))  # type: ignore[attr-defined]


def sign_signature_field(key: SigningKey, message: Message, field: str = "signature") -> None:
    """Sign a message that carries its own ``bytes`` signature field (a ``PolicyUpdate``, for example)."""
    setattr(message, field, key.sign(message_bytes_without(message, lambda m: m.ClearField(field))))


def verify_signature_field(key: SigningKey, message: Message, field: str = "signature") -> bool:
    return key.verify(message_bytes_without(message, lambda m: m.ClearField(field)), getattr(message, field))


@attrs.frozen
class Verdict:
    """The outcome of a verification: accepted, or refused with a reason code and a human-readable detail."""

    accepted: bool
    reason: Reason = SecurityRejectionReason.SECURITY_REJECTION_UNSPECIFIED
    detail: str = ""

    @property
    def reason_name(self) -> str:
        return SecurityRejectionReason.Name(self.reason)


_ACCEPTED = Verdict(True)


def _refuse(reason: Reason, detail: str) -> Verdict:
    return Verdict(False, reason, detail)


class NonceLedger:
    """Remembers accepted nonces for ``ttl_s`` seconds, holding at most ``capacity`` of them.

    ``horizon`` is the latest issue time of a nonce evicted while still within its TTL; commands issued at or before
    it must be refused, because a replay of them could no longer be detected.
    """

    def __init__(self, capacity: int = 4096, ttl_s: float = 65.0, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("a nonce ledger needs a capacity of at least 1")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, float] = OrderedDict()
        self.horizon = float("-inf")
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._entries

    def record(self, nonce: str, issued_at: float) -> None:
        now = self._clock()
        while self._entries:
            oldest_nonce, oldest_issued = next(iter(self._entries.items()))
            if oldest_issued < now - self.ttl_s:
                del self._entries[oldest_nonce]
            elif len(self._entries) >= self.capacity:
                del self._entries[oldest_nonce]
                self.horizon = max(self.horizon, oldest_issued)
                self.evictions += 1
            else:
                break
        self._entries[nonce] = issued_at


class CommandSigner:
    """Signs ``AdaptationCommand``s: a fresh command id as nonce, the issue time, then the HMAC.

    ``freshness_window_ms`` is stamped on each command (and covered by the signature); a verifier refuses the
    command once it is older than this or than its own window, whichever is smaller.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str = "",
        freshness_window_ms: int = 60_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.issuer = issuer
        self.freshness_window_ms = freshness_window_ms
        self._clock = clock

    def sign(self, command: AdaptationCommand) -> AdaptationCommand:
        """Sign ``command`` in place (replacing any earlier id, nonce and signature) and return it."""
        command.command_id = uuid.uuid4().hex
        if self.issuer and not command.issued_by:
            command.issued_by = self.issuer
        security = command.security
        security.nonce = command.command_id
        security.issued_at.FromNanoseconds(int(self._clock() * 1e9))
        security.freshness_window_ms = self.freshness_window_ms
        security.key_id = self.key.key_id
        security.ClearField("signature")
        security.signature = self.key.sign(_command_signed_bytes(command))
        return command


class CommandVerifier:
    """Verifies signature, nonce and freshness of commands; each refusal names its reason.

    The checks run in this order: a key is configured; a signature is present; it is valid; a nonce is present; an
    issue time is present; it is not further in the future than ``max_future_skew_ms``; it is not older than its
    freshness window (see :meth:`window_ms`), nor at or before the ledger's horizon; the nonce has not been seen.
    Only a command that passes everything has its nonce recorded.

    The freshness window of a command is the *smaller* of the verifier's ``freshness_window_ms`` and the command's
    own non-zero ``security.freshness_window_ms``. A signer may ask for its command to expire sooner than the
    receiver would allow (the field is covered by the signature, so only a key holder can shorten it), but never to
    live longer: the receiver's window is the bound its replay protection is sized for (the nonce ledger forgets a
    nonce once no window could still accept its command), so a longer window would let a replay through.
    """

    def __init__(
        self,
        key: SigningKey | None,
        *,
        freshness_window_ms: int = 60_000,
        max_future_skew_ms: int = 5_000,
        nonce_capacity: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.freshness_window_ms = freshness_window_ms
        self.max_future_skew_ms = max_future_skew_ms
        self._clock = clock
        self.ledger = NonceLedger(
            nonce_capacity, ttl_s=(freshness_window_ms + max_future_skew_ms) / 1000.0, clock=clock
        )
        self.rejections: dict[str, int] = {}

    def window_ms(self, command: AdaptationCommand) -> int:
        """The freshness window that applies to ``command``: its own when non-zero and smaller, else the verifier's."""
        own = command.security.freshness_window_ms
        return min(own, self.freshness_window_ms) if own > 0 else self.freshness_window_ms

    def verify(self, command: AdaptationCommand) -> Verdict:
        verdict = self._check(command)
        if not verdict.accepted:
            self.rejections[verdict.reason_name] = self.rejections.get(verdict.reason_name, 0) + 1
        return verdict

    def _check(self, command: AdaptationCommand) -> Verdict:
        if self.key is None:
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_VERIFIER_UNAVAILABLE,
                "no signing key is configured, so no command can be verified",
            )
        security = command.security
        if not security.signature:
            return _refuse(SecurityRejectionReason.SECURITY_REJECTION_MISSING_SIGNATURE, "the command is unsigned")
        if not self.key.verify(_command_signed_bytes(command), security.signature):
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE,
                "the signature does not match the command (altered, or signed with another secret)",
            )
        if not security.nonce:
            return _refuse(SecurityRejectionReason.SECURITY_REJECTION_MISSING_NONCE, "the command has no nonce")
        if not security.HasField("issued_at") or security.issued_at.ToNanoseconds() == 0:
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_MISSING_TIMESTAMP, "the command has no issue time"
            )
        issued = security.issued_at.ToNanoseconds() / 1e9
        now = self._clock()
        if issued > now + self.max_future_skew_ms / 1000.0:
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_ISSUED_IN_FUTURE,
                f"issued {issued - now:.3f} s in the future (allowed skew {self.max_future_skew_ms} ms)",
            )
        window_ms = self.window_ms(command)
        if issued < now - window_ms / 1000.0:
            whose = "the command's own" if window_ms < self.freshness_window_ms else "the verifier's"
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_STALE,
                f"issued {now - issued:.3f} s ago (freshness window {window_ms} ms, {whose})",
            )
        if issued <= self.ledger.horizon:
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_STALE,
                "issued before the replay horizon of a full nonce ledger",
            )
        if security.nonce in self.ledger:
            return _refuse(
                SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED,
                f"nonce {security.nonce} was already used",
            )
        self.ledger.record(security.nonce, issued)
        return _ACCEPTED
