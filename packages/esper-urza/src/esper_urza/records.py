"""What Urza knows about an artifact without loading it (torch-free, so the library's write path needs no torch).

An artifact file is ``torch.save`` of a dict holding only plain data and tensors, loadable with
``torch.load(..., weights_only=True)``::

    {"format": "esper-urza-artifact/1", "record": "<JSON of ArtifactRecord.to_json()>", "state_dict": {name: Tensor}}

Never a pickled module: the module is rebuilt from the catalog and the ``state_dict`` loaded into it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from esper_core.leyline import BlueprintDescriptor
from esper_core.protocols import SlotShape
from esper_urza.parameters import kind_from_name, kind_name

ARTIFACT_FORMAT = "esper-urza-artifact/1"


@attrs.frozen(eq=False)
class GuardSpec:
    """What the artifact's module accepts and returns: the slot's kind and shape (batch excluded) and the dtype.

    A width artifact's module reads another activation than it writes: ``read_kind`` and ``read_shape`` name it
    (empty for a residual artifact, whose module reads what it writes, and for every artifact stored before width
    slots existed, which therefore stay valid as residual ones)."""

    slot_kind: str
    shape: tuple[int, ...]
    dtype: str
    read_kind: str = ""
    read_shape: tuple[int, ...] = ()

    @classmethod
    def of(cls, slot: SlotShape, dtype: str) -> GuardSpec:
        """The guard of an artifact built for ``slot``."""
        shape = tuple(int(size) for size in slot.shape)
        if not slot.is_width:
            return cls(kind_name(slot.kind), shape, dtype)
        read_shape = tuple(int(size) for size in slot.read_shape)
        return cls(kind_name(slot.kind), shape, dtype, kind_name(slot.read_kind), read_shape)

    @property
    def is_width(self) -> bool:
        return bool(self.read_shape)

    @property
    def slot(self) -> SlotShape:
        """The slot the artifact was built for."""
        if not self.is_width:
            return SlotShape(kind_from_name(self.slot_kind), self.shape)
        return SlotShape(
            kind_from_name(self.slot_kind),
            self.shape,
            read_kind=kind_from_name(self.read_kind),
            read_shape=self.read_shape,
        )

    def fits(self, slot: SlotShape) -> bool:
        """Whether the artifact was built for exactly ``slot`` (both sides: a residual artifact never serves a width
        slot of the same written shape, nor the other way round)."""
        other = GuardSpec.of(slot, self.dtype)
        return (self.slot_kind, self.shape, self.read_kind, self.read_shape) == (
            other.slot_kind,
            other.shape,
            other.read_kind,
            other.read_shape,
        )

    def describe(self) -> str:
        written = f"{self.dtype}[N x {' x '.join(str(size) for size in self.shape)}] ({self.slot_kind})"
        if not self.is_width:
            return written
        read = f"{self.dtype}[N x {' x '.join(str(size) for size in self.read_shape)}] ({self.read_kind})"
        return f"{read} -> {written}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; a residual guard is written exactly as before width slots existed."""
        data: dict[str, Any] = {"slot_kind": self.slot_kind, "shape": list(self.shape), "dtype": self.dtype}
        if self.is_width:
            data["read_kind"] = self.read_kind
            data["read_shape"] = list(self.read_shape)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GuardSpec:
        """The guard in ``data`` (one without a read side, as every artifact before width slots, is residual)."""
        return cls(
            str(data["slot_kind"]),
            tuple(int(size) for size in data["shape"]),
            str(data["dtype"]),
            str(data.get("read_kind", "")),
            tuple(int(size) for size in data.get("read_shape", ())),
        )


@attrs.frozen(eq=False)
class ArtifactRecord:
    """One artifact's metadata: the descriptor, parameters and slot it was built for, its guard, its hash and what
    Tezzeret measured. ``path`` and ``extras`` belong to the library (``extras`` is where Urabrask's safety data
    sheets will live)."""

    key: str
    catalog: str
    blueprint_id: str
    name: str
    tier: str
    risk: float
    stage: int
    quarantine_only: bool
    approval_required: bool
    parameters: dict[str, float]
    guard: GuardSpec
    sha256: str
    size_bytes: int
    parameter_count: int
    forward_latency_ms: float
    build_ms: float
    initial_output_ratio: float
    compiled: bool
    created_at: float
    descriptor_bytes: bytes
    versions: dict[str, str]
    report: dict[str, Any] = attrs.field(factory=dict)
    path: str = ""
    extras: dict[str, Any] = attrs.field(factory=dict)

    @property
    def slot(self) -> SlotShape:
        return self.guard.slot

    def descriptor(self) -> BlueprintDescriptor:
        return BlueprintDescriptor.FromString(self.descriptor_bytes)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (what the artifact file embeds, without ``path`` and ``extras``)."""
        return {
            "format": ARTIFACT_FORMAT,
            "key": self.key,
            "catalog": self.catalog,
            "blueprint_id": self.blueprint_id,
            "name": self.name,
            "tier": self.tier,
            "risk": self.risk,
            "stage": self.stage,
            "quarantine_only": self.quarantine_only,
            "approval_required": self.approval_required,
            "parameters": dict(self.parameters),
            "guard": self.guard.to_json(),
            "parameter_count": self.parameter_count,
            "forward_latency_ms": self.forward_latency_ms,
            "build_ms": self.build_ms,
            "initial_output_ratio": self.initial_output_ratio,
            "compiled": self.compiled,
            "created_at": self.created_at,
            "descriptor": base64.b64encode(self.descriptor_bytes).decode("ascii"),
            "versions": dict(self.versions),
            "report": dict(self.report),
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        *,
        sha256: str,
        size_bytes: int,
        path: str = "",
        extras: Mapping[str, Any] | None = None,
    ) -> ArtifactRecord:
        if data.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"not an {ARTIFACT_FORMAT} record (format {data.get('format')!r})")
        return cls(
            key=str(data["key"]),
            catalog=str(data["catalog"]),
            blueprint_id=str(data["blueprint_id"]),
            name=str(data["name"]),
            tier=str(data["tier"]),
            risk=float(data["risk"]),
            stage=int(data["stage"]),
            quarantine_only=bool(data["quarantine_only"]),
            approval_required=bool(data["approval_required"]),
            parameters={str(k): float(v) for k, v in data["parameters"].items()},
            guard=GuardSpec.from_json(data["guard"]),
            sha256=sha256,
            size_bytes=size_bytes,
            parameter_count=int(data["parameter_count"]),
            forward_latency_ms=float(data["forward_latency_ms"]),
            build_ms=float(data["build_ms"]),
            initial_output_ratio=float(data["initial_output_ratio"]),
            compiled=bool(data["compiled"]),
            created_at=float(data["created_at"]),
            descriptor_bytes=base64.b64decode(data["descriptor"]),
            versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            report=dict(data.get("report", {})),
            path=path,
            extras=dict(extras or {}),
        )

    def with_location(self, path: str, extras: Mapping[str, Any] | None = None) -> ArtifactRecord:
        return attrs.evolve(self, path=path, extras=dict(self.extras if extras is None else extras))


@attrs.frozen(eq=False)
class BuiltArtifact:
    """An artifact ready to store: the file's bytes and its record (whose ``sha256`` is over exactly these bytes),
    and, when it was built in this process, its ``state_dict`` (so the library need not parse the bytes again)."""

    data: bytes
    record: ArtifactRecord
    state_dict: Mapping[str, Any] | None = None


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_record(record: ArtifactRecord) -> str:
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))
