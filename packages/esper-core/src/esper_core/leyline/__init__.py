"""Leyline: the typed contracts that cross every subsystem boundary.

Everything here is generated from ``contracts/esper_core/leyline/v1/*.proto`` (protobuf package
``esper.leyline.v1``) and re-exported under short names::

    from esper_core.leyline import SeedLifecycleStage, SystemStatePacket

Enums are protobuf enums (``SeedLifecycleStage.SEED_STAGE_DORMANT``, ``SeedLifecycleStage.Name(3)``); never declare a
Python ``Enum`` that mirrors one of them. Messages are protobuf messages: build them once per decision point, never
per batch.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from esper_core.leyline.v1.blueprints_pb2 import (
    BSDS as BSDS,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BenchmarkReport as BenchmarkReport,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BlueprintBenchmark as BlueprintBenchmark,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BlueprintBenchmarkProfile as BlueprintBenchmarkProfile,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BlueprintDescriptor as BlueprintDescriptor,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BlueprintParameterBounds as BlueprintParameterBounds,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BSDSFailed as BSDSFailed,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BSDSIssued as BSDSIssued,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    KernelArtifactError as KernelArtifactError,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    KernelArtifactReady as KernelArtifactReady,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    KernelCatalogUpdate as KernelCatalogUpdate,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    KernelPrefetchRequest as KernelPrefetchRequest,
)
from esper_core.leyline.v1.budgets_pb2 import (
    MemoryBudgets as MemoryBudgets,
)
from esper_core.leyline.v1.budgets_pb2 import (
    PerformanceBudgets as PerformanceBudgets,
)
from esper_core.leyline.v1.budgets_pb2 import (
    SystemLimits as SystemLimits,
)
from esper_core.leyline.v1.control_pb2 import (
    AdaptationCommand as AdaptationCommand,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandCircuitBreaker as CommandCircuitBreaker,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandEmergency as CommandEmergency,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandOptimizerAdjustment as CommandOptimizerAdjustment,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandPause as CommandPause,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandResult as CommandResult,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandRollback as CommandRollback,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandSecurity as CommandSecurity,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandSeedOperation as CommandSeedOperation,
)
from esper_core.leyline.v1.control_pb2 import (
    DecisionMetadata as DecisionMetadata,
)
from esper_core.leyline.v1.control_pb2 import (
    EmergencySignal as EmergencySignal,
)
from esper_core.leyline.v1.control_pb2 import (
    GateResult as GateResult,
)
from esper_core.leyline.v1.control_pb2 import (
    SeedLifecycleEvent as SeedLifecycleEvent,
)
from esper_core.leyline.v1.enums_pb2 import (
    BlendSchedule as BlendSchedule,
)
from esper_core.leyline.v1.enums_pb2 import (
    BlueprintTier as BlueprintTier,
)
from esper_core.leyline.v1.enums_pb2 import (
    BusMessageType as BusMessageType,
)
from esper_core.leyline.v1.enums_pb2 import (
    CircuitBreakerState as CircuitBreakerState,
)
from esper_core.leyline.v1.enums_pb2 import (
    CommandStatus as CommandStatus,
)
from esper_core.leyline.v1.enums_pb2 import (
    CommandType as CommandType,
)
from esper_core.leyline.v1.enums_pb2 import (
    DeliveryGuarantee as DeliveryGuarantee,
)
from esper_core.leyline.v1.enums_pb2 import (
    EmergencyLevel as EmergencyLevel,
)
from esper_core.leyline.v1.enums_pb2 import (
    FieldReportOutcome as FieldReportOutcome,
)
from esper_core.leyline.v1.enums_pb2 import (
    GrowthMode as GrowthMode,
)
from esper_core.leyline.v1.enums_pb2 import (
    HandlingClass as HandlingClass,
)
from esper_core.leyline.v1.enums_pb2 import (
    HazardBand as HazardBand,
)
from esper_core.leyline.v1.enums_pb2 import (
    HealthStatus as HealthStatus,
)
from esper_core.leyline.v1.enums_pb2 import (
    MessagePriority as MessagePriority,
)
from esper_core.leyline.v1.enums_pb2 import (
    OptimizerFamily as OptimizerFamily,
)
from esper_core.leyline.v1.enums_pb2 import (
    Provenance as Provenance,
)
from esper_core.leyline.v1.enums_pb2 import (
    ResourceProfile as ResourceProfile,
)
from esper_core.leyline.v1.enums_pb2 import (
    SecurityRejectionReason as SecurityRejectionReason,
)
from esper_core.leyline.v1.enums_pb2 import (
    SeedLifecycleGate as SeedLifecycleGate,
)
from esper_core.leyline.v1.enums_pb2 import (
    SeedLifecycleStage as SeedLifecycleStage,
)
from esper_core.leyline.v1.enums_pb2 import (
    SeedOperation as SeedOperation,
)
from esper_core.leyline.v1.enums_pb2 import (
    SlotKind as SlotKind,
)
from esper_core.leyline.v1.enums_pb2 import (
    TelemetryLevel as TelemetryLevel,
)
from esper_core.leyline.v1.learning_pb2 import (
    FieldReport as FieldReport,
)
from esper_core.leyline.v1.learning_pb2 import (
    FieldReportDelta as FieldReportDelta,
)
from esper_core.leyline.v1.learning_pb2 import (
    GroundRunRequest as GroundRunRequest,
)
from esper_core.leyline.v1.learning_pb2 import (
    GroundRunResult as GroundRunResult,
)
from esper_core.leyline.v1.learning_pb2 import (
    MitigationAction as MitigationAction,
)
from esper_core.leyline.v1.learning_pb2 import (
    PolicyUpdate as PolicyUpdate,
)
from esper_core.leyline.v1.learning_pb2 import (
    RunRecordEntry as RunRecordEntry,
)
from esper_core.leyline.v1.state_pb2 import (
    HardwareContext as HardwareContext,
)
from esper_core.leyline.v1.state_pb2 import (
    MeasuredBlueprint as MeasuredBlueprint,
)
from esper_core.leyline.v1.state_pb2 import (
    SeedState as SeedState,
)
from esper_core.leyline.v1.state_pb2 import (
    SystemStatePacket as SystemStatePacket,
)
from esper_core.leyline.v1.state_pb2 import (
    TrainingMetrics as TrainingMetrics,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    BusEnvelope as BusEnvelope,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    EventEnvelope as EventEnvelope,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    MetricPoint as MetricPoint,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    SystemHealth as SystemHealth,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    TelemetryEvent as TelemetryEvent,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    TelemetryPacket as TelemetryPacket,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    TraceSpan as TraceSpan,
)

#: The Leyline protobuf package every message belongs to.
PACKAGE = "esper.leyline.v1"

#: The payload class carried by each bus message type.
PAYLOAD_TYPES: dict[BusMessageType.ValueType, type[Message]] = {
    BusMessageType.BUS_MESSAGE_TYPE_SYSTEM_STATE: SystemStatePacket,
    BusMessageType.BUS_MESSAGE_TYPE_ADAPTATION_COMMAND: AdaptationCommand,
    BusMessageType.BUS_MESSAGE_TYPE_FIELD_REPORT: FieldReport,
    BusMessageType.BUS_MESSAGE_TYPE_TELEMETRY: TelemetryPacket,
    BusMessageType.BUS_MESSAGE_TYPE_POLICY_UPDATE: PolicyUpdate,
    BusMessageType.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_REQUEST: KernelPrefetchRequest,
    BusMessageType.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_READY: KernelArtifactReady,
    BusMessageType.BUS_MESSAGE_TYPE_KERNEL_PREFETCH_ERROR: KernelArtifactError,
    BusMessageType.BUS_MESSAGE_TYPE_KERNEL_CATALOG_UPDATE: KernelCatalogUpdate,
    BusMessageType.BUS_MESSAGE_TYPE_EMERGENCY_SIGNAL: EmergencySignal,
    BusMessageType.BUS_MESSAGE_TYPE_COMMAND_RESULT: CommandResult,
    BusMessageType.BUS_MESSAGE_TYPE_SEED_LIFECYCLE_EVENT: SeedLifecycleEvent,
    BusMessageType.BUS_MESSAGE_TYPE_GROUND_RUN_REQUEST: GroundRunRequest,
    BusMessageType.BUS_MESSAGE_TYPE_GROUND_RUN_RESULT: GroundRunResult,
    BusMessageType.BUS_MESSAGE_TYPE_RUN_RECORD_ENTRY: RunRecordEntry,
    BusMessageType.BUS_MESSAGE_TYPE_BSDS_ISSUED: BSDSIssued,
    BusMessageType.BUS_MESSAGE_TYPE_BSDS_FAILED: BSDSFailed,
    BusMessageType.BUS_MESSAGE_TYPE_BENCHMARK_REPORT: BenchmarkReport,
}

_MESSAGE_TYPE_OF: dict[type[Message], BusMessageType.ValueType] = {cls: kind for kind, cls in PAYLOAD_TYPES.items()}


def bus_message_type_of(message: Message) -> BusMessageType.ValueType:
    """The ``BusMessageType`` for a payload; raises ``TypeError`` for a message the bus does not carry."""
    try:
        return _MESSAGE_TYPE_OF[type(message)]
    except KeyError:
        carried = ", ".join(sorted(cls.__name__ for cls in _MESSAGE_TYPE_OF))
        raise TypeError(f"{type(message).__name__} is not a bus payload; the bus carries: {carried}") from None


def all_message_types() -> list[type[Message]]:
    """Every top-level Leyline message class, in a stable order (for round-trip tests and self-checks)."""
    from esper_core.leyline.v1 import (
        blueprints_pb2,
        budgets_pb2,
        control_pb2,
        learning_pb2,
        state_pb2,
        telemetry_pb2,
    )

    classes: list[type[Message]] = []
    for module in (state_pb2, control_pb2, learning_pb2, blueprints_pb2, telemetry_pb2, budgets_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            classes.append(getattr(module, name))
    return classes


def all_enum_names() -> dict[str, list[str]]:
    """Every Leyline enum with its value names (used by the shadow-enum guard)."""
    from esper_core.leyline.v1 import enums_pb2

    return {
        name: [value.name for value in descriptor.values]
        for name, descriptor in enums_pb2.DESCRIPTOR.enum_types_by_name.items()
    }


def value_name(enum: Any, value: int, prefix: str = "") -> str:
    """The name of an enum value without ``prefix`` (``value_name(SlotKind, 2, "SLOT_KIND_")`` is ``"VECTOR"``).

    Never raises: enum values are append-only, so a newer peer may send one this version does not know; it is
    shown as ``UNKNOWN(77)`` rather than stopping whoever is printing it.
    """
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"UNKNOWN({value})"
    return name.removeprefix(prefix)
