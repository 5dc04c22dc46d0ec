"""Leyline: the typed contracts that cross every subsystem boundary.

Everything here is generated from ``contracts/esper_core/leyline/v1/*.proto`` (protobuf package
``esper.leyline.v1``) and re-exported under short names::

    from esper_core.leyline import SeedLifecycleStage, SystemStatePacket

Enums are protobuf enums (``SeedLifecycleStage.SEED_STAGE_DORMANT``, ``SeedLifecycleStage.Name(3)``); never declare a
Python ``Enum`` that mirrors one of them. Messages are protobuf messages: build them once per decision point, never
per batch.
"""

from __future__ import annotations

from google.protobuf.message import Message

from esper_core.leyline.v1.enums_pb2 import (
    SeedLifecycleStage as SeedLifecycleStage,
    SeedLifecycleGate as SeedLifecycleGate,
    HealthStatus as HealthStatus,
    CircuitBreakerState as CircuitBreakerState,
    CommandType as CommandType,
    SeedOperation as SeedOperation,
    MessagePriority as MessagePriority,
    DeliveryGuarantee as DeliveryGuarantee,
    TelemetryLevel as TelemetryLevel,
    EmergencyLevel as EmergencyLevel,
    FieldReportOutcome as FieldReportOutcome,
    BlueprintTier as BlueprintTier,
    BusMessageType as BusMessageType,
    HazardBand as HazardBand,
    HandlingClass as HandlingClass,
    ResourceProfile as ResourceProfile,
    Provenance as Provenance,
    SlotKind as SlotKind,
    BlendSchedule as BlendSchedule,
    OptimizerFamily as OptimizerFamily,
    SecurityRejectionReason as SecurityRejectionReason,
    CommandStatus as CommandStatus,
)
from esper_core.leyline.v1.state_pb2 import (
    HardwareContext as HardwareContext,
    TrainingMetrics as TrainingMetrics,
    SeedState as SeedState,
    SystemStatePacket as SystemStatePacket,
)
from esper_core.leyline.v1.control_pb2 import (
    CommandSeedOperation as CommandSeedOperation,
    CommandOptimizerAdjustment as CommandOptimizerAdjustment,
    CommandCircuitBreaker as CommandCircuitBreaker,
    CommandRollback as CommandRollback,
    DecisionMetadata as DecisionMetadata,
    CommandSecurity as CommandSecurity,
    AdaptationCommand as AdaptationCommand,
    GateResult as GateResult,
    SeedLifecycleEvent as SeedLifecycleEvent,
    CommandResult as CommandResult,
    EmergencySignal as EmergencySignal,
)
from esper_core.leyline.v1.learning_pb2 import (
    MitigationAction as MitigationAction,
    FieldReportDelta as FieldReportDelta,
    FieldReport as FieldReport,
    PolicyUpdate as PolicyUpdate,
)
from esper_core.leyline.v1.blueprints_pb2 import (
    BlueprintParameterBounds as BlueprintParameterBounds,
    BlueprintDescriptor as BlueprintDescriptor,
    BSDS as BSDS,
    BlueprintBenchmarkProfile as BlueprintBenchmarkProfile,
    BlueprintBenchmark as BlueprintBenchmark,
    BSDSIssued as BSDSIssued,
    BSDSFailed as BSDSFailed,
    BenchmarkReport as BenchmarkReport,
    KernelPrefetchRequest as KernelPrefetchRequest,
    KernelArtifactReady as KernelArtifactReady,
    KernelArtifactError as KernelArtifactError,
    KernelCatalogUpdate as KernelCatalogUpdate,
)
from esper_core.leyline.v1.telemetry_pb2 import (
    MetricPoint as MetricPoint,
    TelemetryEvent as TelemetryEvent,
    TraceSpan as TraceSpan,
    SystemHealth as SystemHealth,
    TelemetryPacket as TelemetryPacket,
    BusEnvelope as BusEnvelope,
    EventEnvelope as EventEnvelope,
)
from esper_core.leyline.v1.budgets_pb2 import (
    PerformanceBudgets as PerformanceBudgets,
    MemoryBudgets as MemoryBudgets,
    SystemLimits as SystemLimits,
)
#: The Leyline protobuf package every message belongs to.
PACKAGE = "esper.leyline.v1"

#: The payload class carried by each bus message type.
PAYLOAD_TYPES: dict[int, type[Message]] = {
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
    BusMessageType.BUS_MESSAGE_TYPE_BSDS_ISSUED: BSDSIssued,
    BusMessageType.BUS_MESSAGE_TYPE_BSDS_FAILED: BSDSFailed,
    BusMessageType.BUS_MESSAGE_TYPE_BENCHMARK_REPORT: BenchmarkReport,
}

_MESSAGE_TYPE_OF: dict[type[Message], int] = {cls: kind for kind, cls in PAYLOAD_TYPES.items()}


def bus_message_type_of(message: Message) -> int:
    """The ``BusMessageType`` for a payload; raises ``TypeError`` for a message the bus does not carry."""
    try:
        return _MESSAGE_TYPE_OF[type(message)]
    except KeyError:
        carried = ", ".join(sorted(cls.__name__ for cls in _MESSAGE_TYPE_OF))
        raise TypeError(
            f"{type(message).__name__} is not a bus payload; the bus carries: {carried}"
        ) from None


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
