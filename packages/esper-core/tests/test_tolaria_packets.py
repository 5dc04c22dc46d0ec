"""The state packet Tolaria builds at a decision point, field by field, from what the loop measured."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from esper_core.leyline import HardwareContext, OptimizerFamily, SeedState, lifecycle
from esper_core.tolaria.history import EpochStats, History
from esper_core.tolaria.packets import build_state_packet, hardware_context


@attrs.frozen
class Validation:
    loss: float
    accuracy: float


def packet(
    *,
    history: History | None = None,
    stats: EpochStats | None = None,
    validation: Validation = Validation(0.5, 0.8),
    seeds: list[SeedState] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> object:
    history = history or History(epoch=2, global_step=300, host_parameters=1000)
    return build_state_packet(
        run_id="run-1",
        epoch=3,
        epochs_total=10,
        batch_size=100,
        history=history,
        stats=stats or EpochStats(train_loss=0.6, train_accuracy=0.75, seconds=2.0, samples=1000),
        validation=validation,
        seeds=seeds or [],
        optimizer=optimizer or torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05),
        hardware=HardwareContext(device_type="cpu"),
    )


def test_the_identity_of_a_decision_point() -> None:
    state = packet()
    assert state.packet_id == "run-1-epoch-3-step-300"
    assert state.training_run_id == "run-1" and state.source_subsystem == "tolaria"
    assert state.current_epoch == 3 and state.global_step == 300
    assert state.metrics.epoch == 3 and state.metrics.epochs_total == 10
    assert state.timestamp.seconds > 0


def test_a_decision_point_repeated_after_a_rollback_has_an_identity_of_its_own() -> None:
    first = packet(history=History(epoch=2, global_step=300, rollbacks=0))
    again = packet(history=History(epoch=2, global_step=300, rollbacks=1))
    assert again.packet_id != first.packet_id and again.packet_id.startswith(first.packet_id)


def test_training_and_validation_metrics_and_throughput() -> None:
    metrics = packet().metrics
    assert metrics.train_loss == pytest.approx(0.6) and metrics.train_accuracy == pytest.approx(0.75)
    assert metrics.val_loss == pytest.approx(0.5) and metrics.val_accuracy == pytest.approx(0.8)
    assert metrics.samples_per_second == pytest.approx(500.0)
    assert metrics.epoch_duration_ms == pytest.approx(2000.0)
    assert metrics.step_latency_ms == pytest.approx(200.0)  # 2 s over ten steps of 100
    assert metrics.learning_rate == pytest.approx(0.05)
    assert metrics.optimizer_family == OptimizerFamily.OPTIMIZER_FAMILY_SGD


def test_a_mid_epoch_decision_point_leaves_the_training_loss_absent_not_zero() -> None:
    metrics = packet(stats=EpochStats(math.nan, math.nan, 1.0, 500)).metrics
    assert not metrics.HasField("train_loss") and not metrics.HasField("train_accuracy")


def test_loss_history_features_include_this_decision_points_validation_loss() -> None:
    history = History(epoch=3, val_losses=[1.0, 0.8, 0.7], host_parameters=10)
    metrics = packet(history=history, validation=Validation(0.75, 0.5)).metrics
    assert metrics.best_val_loss == pytest.approx(0.7)
    assert metrics.loss_delta == pytest.approx(0.05)
    ewma = 1.0
    for loss in (0.8, 0.7, 0.75):
        ewma = 0.3 * loss + 0.7 * ewma
    assert metrics.loss_ewma == pytest.approx(ewma)
    recent = [1.0, 0.8, 0.7, 0.75]
    mean = sum(recent) / 4
    assert metrics.loss_volatility == pytest.approx((sum((x - mean) ** 2 for x in recent) / 4) ** 0.5 / mean)


def test_the_first_decision_point_has_no_delta_or_volatility() -> None:
    metrics = packet(history=History()).metrics
    assert not metrics.HasField("loss_delta") and not metrics.HasField("loss_volatility")
    assert metrics.best_val_loss == pytest.approx(0.5) and metrics.loss_ewma == pytest.approx(0.5)


def test_parameters_count_the_host_and_the_seeds_that_exist() -> None:
    seeds = [
        SeedState(slot_id="a", stage=lifecycle.BLENDING, parameter_count=40),
        SeedState(slot_id="b", stage=lifecycle.FOSSILIZED, parameter_count=60),
        SeedState(slot_id="c", stage=lifecycle.EMBARGOED, parameter_count=500),  # culled: its module is gone
        SeedState(slot_id="d", stage=lifecycle.DORMANT),
    ]
    state = packet(seeds=seeds)
    assert state.metrics.parameter_count == 1000 + 40 + 60
    assert [seed.slot_id for seed in state.seeds] == ["a", "b", "c", "d"]


def test_the_previous_decision_points_latencies_are_reported_only_when_measured() -> None:
    measured = packet(history=History(hook_ms=3.0, decide_ms=1.5, apply_ms=None)).metrics
    assert measured.hook_latency_ms == pytest.approx(3.0) and measured.tamiyo_latency_ms == pytest.approx(1.5)
    assert not measured.HasField("kasmina_apply_ms")


def test_an_optimizer_of_another_family_is_other() -> None:
    rprop = torch.optim.Rprop([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    assert packet(optimizer=rprop).metrics.optimizer_family == OptimizerFamily.OPTIMIZER_FAMILY_OTHER


def test_the_cpu_hardware_context_reads_the_machines_memory() -> None:
    context = hardware_context(torch.device("cpu"))
    assert context.device_type == "cpu" and context.device_id == "0"
    assert context.total_memory_gb >= context.available_memory_gb > 0
