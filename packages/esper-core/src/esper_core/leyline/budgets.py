"""The original design's budgets and limits (PROTOTYPE-REFERENCE.md section 2.2), as Leyline messages.

Subsystems read budgets from here instead of repeating the numbers; a run may override them in its config.
"""

from __future__ import annotations

from esper_core.leyline import MemoryBudgets, PerformanceBudgets, SystemLimits


def default_performance_budgets() -> PerformanceBudgets:
    return PerformanceBudgets(
        epoch_boundary_ms=18.0,
        tamiyo_inference_ms=12.0,
        system_state_assembly_ms=3.0,
        adaptation_processing_ms=2.0,
        fast_rollback_ms=500.0,
        full_rollback_ms=12_000.0,
        protobuf_serialization_us=80.0,
        message_validation_us=20.0,
        breaker_timeout_ms=1_000.0,
        breaker_reset_ms=30_000.0,
        kernel_fetch_ms=10.0,
        importance_tracking_overhead_percent=1.0,
        checkpoint_analysis_ms=300_000.0,
        structured_validation_ms=60_000.0,
        rollback_coordination_ms=30_000.0,
    )


def default_memory_budgets() -> MemoryBudgets:
    return MemoryBudgets(
        model=0.40,
        optimizer=0.25,
        gradients=0.15,
        checkpoints=0.08,
        telemetry=0.05,
        morphogenetic=0.05,
        emergency=0.02,
        importance_statistics=0.03,
        pruning_metadata=0.02,
    )


def default_system_limits() -> SystemLimits:
    return SystemLimits(
        max_seeds_per_epoch=100,
        max_message_size_bytes=280,
        max_queue_depth=10_000,
        max_retry_attempts=3,
        max_pause_quota=10_000,
        max_gc_allocations_per_message=4,
        max_pruning_ratio=0.5,
        max_consecutive_pruning_failures=3,
        max_checkpoint_storage_gb=100.0,
        importance_history_days=30,
    )
