"""The ``SystemStatePacket`` Tolaria sends the controller at a decision point: typed metrics, hardware and every slot.

Built once per decision point from what the loop measured (never per batch). A pure function of its inputs, so the
packet a policy sees can be checked field by field without training anything.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from esper_core.leyline import (
    HardwareContext,
    OptimizerFamily,
    SeedState,
    SystemStatePacket,
    TrainingMetrics,
    lifecycle,
)
from esper_core.tolaria.gradients import GradientMeasurement
from esper_core.tolaria.hardware import HardwareProbe, base_context
from esper_core.tolaria.history import EpochStats, History

#: Optimizer class names and their Leyline family (anything else is OTHER).
FAMILIES = {
    "SGD": OptimizerFamily.OPTIMIZER_FAMILY_SGD,
    "Adam": OptimizerFamily.OPTIMIZER_FAMILY_ADAM,
    "AdamW": OptimizerFamily.OPTIMIZER_FAMILY_ADAMW,
}
#: Weight of the newest validation loss in ``TrainingMetrics.loss_ewma``.
EWMA_WEIGHT = 0.3
#: Decision points whose validation losses ``loss_volatility`` is measured over.
VOLATILITY_WINDOW = 4


def build_state_packet(
    *,
    run_id: str,
    epoch: int,
    epochs_total: int,
    batch_size: int,
    history: History,
    stats: EpochStats,
    validation: Any,
    seeds: list[SeedState],
    optimizer: torch.optim.Optimizer,
    hardware: HardwareContext,
    gradients: GradientMeasurement | None = None,
    gradient_norm_ewma: float | None = None,
) -> SystemStatePacket:
    """The packet of one decision point.

    :param history: the loop's history *before* this decision point (its validation losses do not yet include
        ``validation.loss``; its latencies are the previous decision point's own work).
    :param stats: the epoch's training (NaN losses at a mid-epoch decision point: those fields are left absent).
    :param validation: the executor's evaluation (``loss``, ``accuracy``).
    :param gradients: this decision point's gradient measurements (:mod:`esper_core.tolaria.gradients`); None: not
        measured, the gradient fields stay absent. ``gradient_norm_ewma``: their norm's moving average, this one
        included.
    """
    metrics = TrainingMetrics(
        epoch=epoch,
        global_step=history.global_step,
        epochs_total=epochs_total,
        val_loss=validation.loss,
        val_accuracy=validation.accuracy,
        isolation_violations=sum(seed.isolation_violations for seed in seeds),
        parameter_count=history.host_parameters + seed_parameters(seeds),
        rollbacks=history.rollbacks,
        optimizer_family=FAMILIES.get(type(optimizer).__name__, OptimizerFamily.OPTIMIZER_FAMILY_OTHER),
        learning_rate=float(optimizer.param_groups[0]["lr"]),
    )
    if math.isfinite(stats.train_loss):
        metrics.train_loss = stats.train_loss
        metrics.train_accuracy = stats.train_accuracy
    if stats.seconds > 0:
        metrics.samples_per_second = stats.samples / stats.seconds
        metrics.epoch_duration_ms = stats.seconds * 1000.0
        steps = max(1, math.ceil(stats.samples / batch_size))
        metrics.step_latency_ms = stats.seconds * 1000.0 / steps  # the mean: no per-step timing is taken
    losses = [*history.val_losses, validation.loss]
    metrics.best_val_loss = min(losses)
    if len(losses) > 1:
        metrics.loss_delta = losses[-1] - losses[-2]
        recent = losses[-VOLATILITY_WINDOW:]
        mean = sum(recent) / len(recent)
        metrics.loss_volatility = (sum((x - mean) ** 2 for x in recent) / len(recent)) ** 0.5 / max(mean, 1e-12)
    ewma = losses[0]
    for loss in losses[1:]:
        ewma = EWMA_WEIGHT * loss + (1.0 - EWMA_WEIGHT) * ewma
    metrics.loss_ewma = ewma
    if gradients is not None:
        for name, value in (
            ("gradient_norm", gradients.norm),
            ("gradient_norm_ewma", gradient_norm_ewma if gradients.norm is not None else None),
            ("gradient_variance", gradients.variance),
            ("gradient_conflict_rate", gradients.conflict_rate),
        ):
            if value is not None:
                setattr(metrics, name, value)
    for name, value in (
        ("hook_latency_ms", history.hook_ms),
        ("tamiyo_latency_ms", history.decide_ms),
        ("kasmina_apply_ms", history.apply_ms),
    ):
        if value is not None:
            setattr(metrics, name, value)
    state = SystemStatePacket(
        version=1,
        packet_id=packet_id(run_id, epoch, history),
        training_run_id=run_id,
        source_subsystem="tolaria",
        current_epoch=epoch,
        global_step=history.global_step,
        metrics=metrics,
        hardware=hardware,
        seeds=seeds,
    )
    state.timestamp.GetCurrentTime()
    return state


def packet_id(run_id: str, epoch: int, history: History) -> str:
    """A decision point's identity: unique within the run, even when a rollback repeats an epoch (a remote
    controller answers a packet id it has seen with the command it remembers, whose nonce is then spent)."""
    identity = f"{run_id}-epoch-{epoch}-step-{history.global_step}"
    return f"{identity}-after-rollback-{history.rollbacks}" if history.rollbacks else identity


def seed_parameters(seeds: list[SeedState]) -> int:
    """Parameters of the seeds that exist (a culled seed's are gone)."""
    return sum(seed.parameter_count for seed in seeds if seed.stage in lifecycle.HAS_SEED)


def hardware_context(device: torch.device, probe: HardwareProbe | None = None) -> HardwareContext:
    """The device the run trains on, with its memory (the GPU's on CUDA, the machine's otherwise); with the run's
    probe, everything it measures too (utilization, temperature: :mod:`esper_core.tolaria.hardware`)."""
    return base_context(device) if probe is None else probe.read(device)
