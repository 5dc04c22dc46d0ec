"""Policy updates: new weights for the learned policy as a Leyline ``PolicyUpdate``, built and checked.

An update carries ``payload`` = ``torch.save(state_dict)`` bytes, ``payload_sha256``, the ``feature_schema_digest``
and ``architecture_digest`` it was trained for, ``policy_name`` = ``"learned"``, ``tamiyo_policy_version`` and, when
the producer has a signing key, an HMAC ``signature`` over the update's deterministic serialization.

:func:`check_update` runs the checks in a fixed order and stops at the first failure, naming it with one of the
reason codes below. Nothing is unpickled before the digests, the checksum and the signature have passed, and then
only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from esper_core.leyline import PolicyUpdate
from esper_core.signing import SigningKey, sign_signature_field, verify_signature_field
from esper_core.storage.atomic import atomic_write_bytes
from esper_tamiyo.learned.schema import FEATURE_SCHEMA_VERSION

POLICY_NAME = "learned"
UPDATE_FORMAT_VERSION = 1

ACCEPTED = "accepted"
#: ``policy_name`` is not ``"learned"``.
WRONG_POLICY = "wrong_policy"
#: ``feature_schema_digest`` differs from the live policy's (trained on another encoding).
SCHEMA_MISMATCH = "schema_mismatch"
#: ``architecture_digest`` differs from the live policy's (another network shape).
ARCHITECTURE_MISMATCH = "architecture_mismatch"
#: SHA-256 of ``payload`` differs from ``payload_sha256`` (corrupt or altered in transit).
CHECKSUM_MISMATCH = "checksum_mismatch"
#: A signing key is configured and the update carries no signature.
MISSING_SIGNATURE = "missing_signature"
#: A signing key is configured and the signature does not match (altered, or signed with another secret).
INVALID_SIGNATURE = "invalid_signature"
#: ``issued_at`` is not later than that of the live update: an older (or the same) update replayed, or a producer
#: whose clock went back. Versions only move forward unless a rollback is requested (see :func:`check_update`).
STALE_UPDATE = "stale_update"
#: The payload is empty, too large, not loadable with ``weights_only=True``, or not a mapping of names to tensors.
INVALID_PAYLOAD = "invalid_payload"
#: A parameter is missing, unexpected, of the wrong shape or not a floating-point tensor.
SHAPE_MISMATCH = "shape_mismatch"
#: A parameter holds NaN or infinity.
NON_FINITE_WEIGHTS = "non_finite_weights"
#: Building the new network from the checked weights failed (should not happen after the checks above).
SWAP_FAILED = "swap_failed"

REJECTION_REASONS = (
    WRONG_POLICY,
    SCHEMA_MISMATCH,
    ARCHITECTURE_MISMATCH,
    CHECKSUM_MISMATCH,
    MISSING_SIGNATURE,
    INVALID_SIGNATURE,
    STALE_UPDATE,
    INVALID_PAYLOAD,
    SHAPE_MISMATCH,
    NON_FINITE_WEIGHTS,
    SWAP_FAILED,
)
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


@attrs.frozen
class UpdateVerdict:
    """What became of a policy update: accepted, or rejected with a reason code and a human-readable detail."""

    accepted: bool
    reason: str
    detail: str = ""
    #: The policy version live after the verdict (the new one when accepted, the unchanged one otherwise).
    policy_version: str = ""


def payload_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``torch.save`` of a plain ``{name: tensor}`` dict (tensors detached, on the CPU, contiguous)."""
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()


def make_update(
    state_dict: Mapping[str, torch.Tensor],
    *,
    feature_schema_digest: str,
    architecture_digest: str,
    policy_version: str,
    signing_key: SigningKey | None = None,
    policy_id: str = "",
    training_run_id: str = "",
    training_metrics: Mapping[str, float] | None = None,
) -> PolicyUpdate:
    """A complete ``PolicyUpdate`` for ``state_dict``, signed when ``signing_key`` is given."""
    payload = payload_bytes(state_dict)
    update = PolicyUpdate(
        version=UPDATE_FORMAT_VERSION,
        policy_id=policy_id,
        training_run_id=training_run_id,
        tamiyo_policy_version=policy_version,
        payload=payload,
        feature_schema_digest=feature_schema_digest,
        architecture_digest=architecture_digest,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        policy_name=POLICY_NAME,
    )
    update.issued_at.GetCurrentTime()
    for name in sorted(training_metrics or {}):
        update.training_metrics[name] = float((training_metrics or {})[name])
    if signing_key is not None:
        sign_signature_field(signing_key, update)
    return update


def _reject(reason: str, detail: str) -> tuple[UpdateVerdict, None]:
    return UpdateVerdict(False, reason, detail), None


def check_update(
    update: PolicyUpdate,
    *,
    feature_schema_digest: str,
    architecture_digest: str,
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    signing_key: SigningKey | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    live_issued_at_ns: int | None = None,
    allow_rollback: bool = False,
) -> tuple[UpdateVerdict, dict[str, torch.Tensor] | None]:
    """Check ``update`` against the live policy; on success return the float32 tensors to load.

    Order: policy name; feature schema digest; architecture digest; payload checksum; signature (only when a key is
    configured: then a missing signature is refused too); issue time; payload size and
    ``torch.load(weights_only=True)``; every expected key present, none unexpected, each a floating tensor of the
    expected shape; every value finite.

    The issue time check keeps versions moving forward: once an update issued at ``live_issued_at_ns`` is live, only
    an update issued strictly later is accepted (an update without ``issued_at`` counts as issued at 0). It comes
    after the signature, which covers ``issued_at``, so a replayed older update cannot be dressed up as newer. A
    rollback is explicit: ``allow_rollback=True`` (an operator loading a known update by hand), or the older weights
    exported again as a new update, which gets a new issue time and signature.
    """
    if update.policy_name != POLICY_NAME:
        return _reject(WRONG_POLICY, f"the update is for policy {update.policy_name!r}, this is {POLICY_NAME!r}")
    if update.feature_schema_digest != feature_schema_digest:
        return _reject(
            SCHEMA_MISMATCH,
            f"the update was trained on feature schema {update.feature_schema_digest[:16] or '(none)'}…, "
            f"this policy encodes with {feature_schema_digest[:16]}… (feature schema version "
            f"{FEATURE_SCHEMA_VERSION}): train a policy on this encoding (docs/learned-policy.md)",
        )
    if update.architecture_digest != architecture_digest:
        return _reject(
            ARCHITECTURE_MISMATCH,
            f"the update is for architecture {update.architecture_digest[:16] or '(none)'}…, "
            f"this policy runs {architecture_digest[:16]}…",
        )
    actual = hashlib.sha256(update.payload).hexdigest()
    if actual != update.payload_sha256:
        return _reject(
            CHECKSUM_MISMATCH,
            f"payload SHA-256 is {actual[:16]}…, the update says {update.payload_sha256[:16] or '(none)'}…",
        )
    if signing_key is not None:
        if not update.signature:
            return _reject(MISSING_SIGNATURE, "a signing key is configured and the update is unsigned")
        if not verify_signature_field(signing_key, update):
            return _reject(
                INVALID_SIGNATURE, "the signature does not match the update (altered, or signed with another secret)"
            )
    issued_ns = update.issued_at.ToNanoseconds() if update.HasField("issued_at") else 0
    if live_issued_at_ns is not None and issued_ns <= live_issued_at_ns and not allow_rollback:
        return _reject(
            STALE_UPDATE,
            f"the update was issued {_when(issued_ns)}, not after the live update ({_when(live_issued_at_ns)}): an "
            "older update replayed, or a producer whose clock went back. To roll back on purpose, export the older "
            "weights again as a new update, or load it with allow_rollback=True",
        )
    if not update.payload:
        return _reject(INVALID_PAYLOAD, "the payload is empty")
    if len(update.payload) > max_payload_bytes:
        return _reject(INVALID_PAYLOAD, f"the payload is {len(update.payload)} bytes, over {max_payload_bytes}")
    try:
        loaded: Any = torch.load(io.BytesIO(update.payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to load is a refused payload, reported with its cause
        return _reject(INVALID_PAYLOAD, f"torch.load(weights_only=True) failed: {type(error).__name__}: {error}")
    if not isinstance(loaded, Mapping) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in loaded.items()
    ):
        return _reject(INVALID_PAYLOAD, f"the payload is a {type(loaded).__name__}, not a mapping of names to tensors")
    missing = sorted(set(expected) - set(loaded))
    if missing:
        return _reject(SHAPE_MISMATCH, f"missing parameters: {', '.join(missing[:5])}")
    unexpected = sorted(set(loaded) - set(expected))
    if unexpected:
        return _reject(SHAPE_MISMATCH, f"unexpected parameters: {', '.join(unexpected[:5])}")
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(expected):
        shape, dtype = expected[name]
        tensor = loaded[name]
        if tuple(tensor.shape) != shape:
            return _reject(SHAPE_MISMATCH, f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if not tensor.is_floating_point():
            return _reject(SHAPE_MISMATCH, f"{name} has dtype {tensor.dtype}, expected a floating dtype")
        converted = tensor.to(dtype)
        if not bool(torch.isfinite(converted).all()):
            bad = int((~torch.isfinite(converted)).sum())
            return _reject(NON_FINITE_WEIGHTS, f"{name} holds {bad} non-finite value{'s' * (bad != 1)}")
        tensors[name] = converted
    return UpdateVerdict(True, ACCEPTED, f"{len(tensors)} tensors checked"), tensors


def _when(nanoseconds: int) -> str:
    if nanoseconds == 0:
        return "at no recorded time (issued_at unset)"
    stamp = Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return f"at {stamp.ToJsonString()}"


def save_update(update: PolicyUpdate, path: str | Path) -> None:
    """Write ``update`` (its serialized bytes) to ``path`` atomically, for ``tamiyo.learned.initial_update``."""
    atomic_write_bytes(path, update.SerializeToString(deterministic=True))


def read_update(path: str | Path) -> PolicyUpdate:
    """Read an update written by :func:`save_update`; raises ``ValueError`` naming the file when it is not one."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"policy update file {source} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{source} is a directory, not a policy update file") from None
    except OSError as error:
        raise ValueError(f"policy update file {source} cannot be read: {error.strerror or error}") from None
    if not data:
        raise ValueError(f"{source} is empty, not a serialized Leyline PolicyUpdate")
    try:
        update = PolicyUpdate.FromString(data)
    except DecodeError as error:
        raise ValueError(f"{source} is not a serialized Leyline PolicyUpdate: {error}") from None
    if not update.payload and not update.policy_name:
        # Protobuf parses many byte strings as *some* message; one with neither weights nor a policy name is not one.
        raise ValueError(f"{source} is not a serialized Leyline PolicyUpdate: it has no policy_name and no payload")
    return update
