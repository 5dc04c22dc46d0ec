"""What a decision point leaves behind: the run record, plugin notifications, the bus, and telemetry for the sinks.

The trainer decides *what happened*; this module writes it down, once, in each place a user or a plugin looks:
``record.log`` (epochs, decisions, transitions, field reports), the lifecycle hooks (``esper_tolaria_decision``,
``esper_kasmina_seed_transition``, ``esper_tamiyo_field_report``), the state packet on the bus, and Tolaria's
telemetry, relayed from the telemetry and emergency streams to every sink. Nothing here runs per batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandStatus,
    EmergencySignal,
    FieldReportOutcome,
    SeedState,
    SystemStatePacket,
    lifecycle,
    value_name,
)
from esper_core.leyline.annotations import POLICY_ERROR
from esper_core.plugins.selectors import NissaSelection
from esper_core.protocols import ResumableSink
from esper_core.telemetry import Event, Metric, build_telemetry_packet
from esper_core.tolaria.assembly import Run
from esper_core.tolaria.hardware import HardwareProbe, hardware_metrics
from esper_core.tolaria.history import EpochStats, History
from esper_core.tolaria.record import encode_message
from esper_core.tolaria.sinks import SinkChannel, SinkOptions
from esper_core.tolaria.slot_telemetry import field_report_events, slot_metrics

logger = logging.getLogger("esper.tolaria")


class RunRecorder:
    """Writes one run's decision points down; counts decisions by operation and culled seeds (checkpointed)."""

    def __init__(self, run: Run, hardware: HardwareProbe | None = None) -> None:
        self.run = run
        #: The probe that read this decision point's hardware (its host extras: the process's memory).
        self.hardware = hardware
        self.decisions: dict[str, int] = {}
        self.culled = 0
        #: Told of every ``EmergencySignal`` read from the emergency stream.
        self.on_signal: Callable[[EmergencySignal], None] | None = None
        #: Told when a sink raises (the exception, the sink's name, the call): the run writes it down.
        self.on_sink_failure: Callable[[BaseException, str, str], None] | None = None
        self._channels: dict[int, SinkChannel] = {}
        self._relaying = False

    def decision_point(
        self,
        history: History,
        epoch: int,
        stats: EpochStats,
        state: SystemStatePacket,
        command: AdaptationCommand,
        result: CommandResult,
        events: list[Any],
        reports: list[Any],
        validation: Any,
    ) -> None:
        """Record a completed decision point everywhere, then relay telemetry to the sinks."""
        run = self.run
        seeds = list(state.seeds)
        stages: dict[str, int] = {}
        for seed in seeds:
            name = lifecycle.stage_name(seed.stage)
            stages[name] = stages.get(name, 0) + 1
        operation = lifecycle.command_name(command)
        self.decisions[operation] = self.decisions.get(operation, 0) + 1
        # Counted FLOPs: the epoch's training so far, this decision point's validation pass and what its
        # counterfactual variants added, and the run's total up to here (History's notes say what counts).
        validation_flops = int(getattr(validation, "validation_flops", 0))
        measurement_flops = max(int(getattr(validation, "flops", 0)) - validation_flops, 0)
        with run.record.batch():  # the decision point's entries, written together and made durable by one fsync
            run.record.append(
                "epoch", epoch=epoch, global_step=history.global_step, train_loss=finite(stats.train_loss),
                train_accuracy=finite(stats.train_accuracy), val_loss=validation.loss,
                val_accuracy=validation.accuracy, parameters=int(state.metrics.parameter_count),
                host_parameters=history.host_parameters, seeds=stages, slots=seed_measurements(seeds),
                epoch_seconds=stats.seconds, decision_ms=history.hook_ms, **replica_check(history),
                validation_seconds=getattr(validation, "seconds", None),
                evaluation_variants=getattr(validation, "variants", 1),
                training_flops=stats.training_flops, validation_flops=validation_flops,
                measurement_flops=measurement_flops, total_flops=history.total_flops,
            )  # fmt: skip
            run.record.append(
                "decision", epoch=epoch, operation=operation, slot=command.target_slot_id,
                blueprint=command.seed_operation.blueprint_id, rationale=command.decision.rationale,
                risk_reason=command.decision.risk_reason, rules=list(command.decision.risk_rules_fired),
                policy=command.decision.policy_name, policy_version=command.decision.policy_version,
                policy_error=command.annotations.get(POLICY_ERROR) or None,
                status=value_name(CommandStatus, result.status, "COMMAND_STATUS_"), detail=result.detail,
                gates=[MessageToDict(gate) for gate in result.gates], command_id=command.command_id,
                packet=encode_message(state), command=encode_message(command),
            )  # fmt: skip
            self._record_transitions(epoch, events)
            for report in reports:
                run.record.append(
                    "field_report",
                    epoch=epoch,
                    report=report.report_id,
                    command_id=report.command_id,
                    slot=report.slot_id,
                    blueprint=report.blueprint_id,
                    outcome=value_name(FieldReportOutcome, report.outcome, "FIELD_REPORT_OUTCOME_"),
                    contribution=report.delta.contribution if report.delta.HasField("contribution") else None,
                )
        # The plugins hear of it once it is on disk, in the order it happened.
        for event in events:
            run.registry.seed_transition(event)
        for report in reports:
            run.registry.field_report(report)
        run.registry.decision(state, command, result)
        run.bus.publish(state)
        metrics = [
            Metric("tolaria.training.loss", finite(stats.train_loss) or 0.0),
            Metric("tolaria.training.accuracy", finite(stats.train_accuracy) or 0.0),
            Metric("tolaria.validation.loss", validation.loss),
            Metric("tolaria.validation.accuracy", validation.accuracy),
            Metric("tolaria.epoch.seconds", stats.seconds, "s"),
            Metric("tolaria.epoch_hook.latency_ms", history.hook_ms or 0.0, "ms"),
            *replica_metrics(history),
            Metric("tolaria.compute.training_flops", float(stats.training_flops), "FLOP"),
            Metric("tolaria.compute.measurement_flops", float(measurement_flops), "FLOP"),
            Metric("tolaria.compute.total_flops", float(history.total_flops), "FLOP"),
            Metric("tolaria.parameters", float(state.metrics.parameter_count)),
            Metric("tolaria.rollbacks", float(history.rollbacks)),
            Metric("tolaria.conservative_mode", float(history.conservative_left > 0)),
            *slot_metrics(seeds),
            *hardware_metrics(state.hardware, self.hardware.extras if self.hardware is not None else None),
            # The run's bus client: what it published and read, and its streams' lengths (docs/oona.md).
            *(Metric(name, value) for name, value in run.bus.metrics().items()),
        ]
        self.publish(history, field_report_events(reports), metrics=metrics, epoch=epoch)

    def transitions(self, epoch: int, events: list[Any]) -> None:
        """Record every lifecycle transition and announce it to the plugins."""
        self._record_transitions(epoch, events)
        for event in events:
            self.run.registry.seed_transition(event)

    def _record_transitions(self, epoch: int, events: list[Any]) -> None:
        run = self.run
        for event in events:
            if event.to_stage == lifecycle.CULLED:
                self.culled += 1
            run.record.append(
                "transition", epoch=epoch, slot=event.slot_id, seed=event.seed_id, blueprint=event.blueprint_id,
                source=lifecycle.stage_name(event.from_stage),
                target=lifecycle.stage_name(event.to_stage), reason=event.reason,
                gates=[MessageToDict(gate) for gate in event.gates],
            )  # fmt: skip

    def publish(
        self, history: History, events: list[Event], *, metrics: list[Metric] | None = None, epoch: int | None = None
    ) -> None:
        """One Tolaria telemetry packet on the bus (its priority from the one priority rule), then relay."""
        run = self.run
        packet = build_telemetry_packet(
            source="tolaria", metrics=metrics or [], events=events, training_run_id=run.run_id,
            epoch=history.epoch if epoch is None else epoch, global_step=history.global_step,
        )  # fmt: skip
        run.bus.publish(packet, priority=packet.priority)
        self.relay()

    def relay(self) -> None:
        """Hand everything on the telemetry and emergency streams to the sinks, and every ``EmergencySignal`` to
        :attr:`on_signal` (the trainer's emergency ladder)."""
        if self._relaying:  # a sink's failure is being written down: its own telemetry waits for the loop below
            return
        self._relaying = True
        try:
            self._relay()
        finally:
            self._relaying = False

    def _relay(self) -> None:
        run = self.run
        streams = [run.bus.streams.telemetry, run.bus.streams.emergency]
        while True:
            messages = run.bus.poll(streams, count=256)
            if not messages:
                break
            for message in messages:
                payload = message.payload
                if payload.DESCRIPTOR.name == "TelemetryPacket":
                    for channel in self.channels():
                        channel.emit(payload)
                elif isinstance(payload, EmergencySignal) and self.on_signal is not None:
                    self.on_signal(payload)
            run.bus.ack_many(messages)
        for channel in self.channels():
            channel.flush()

    def channels(self) -> list[SinkChannel]:
        """A channel for each of the run's sinks, in order (made when a sink is first seen)."""
        names = self.sink_names()
        found = []
        for index, sink in enumerate(self.run.sinks):
            channel = self._channels.get(id(sink))
            if channel is None or channel.sink is not sink:
                name = names[index]
                channel = SinkChannel(sink, name, self.run.config.get(SinkOptions), self._sink_failed(name))
                self._channels[id(sink)] = channel
            found.append(channel)
        return found

    def _sink_failed(self, name: str) -> Callable[[BaseException, str], None]:
        def failed(error: BaseException, during: str) -> None:
            if self.on_sink_failure is not None:
                self.on_sink_failure(error, name, during)
            else:
                raise error

        return failed

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The counters, and where each resumable sink stood (so a resume does not write telemetry twice)."""
        for channel in self.channels():
            channel.settle()  # what the sink was given before the checkpoint is in its state
        # By the sink's name (nissa.sinks), so that a resume with another sink list finds each sink's own state.
        names = self.sink_names()
        sinks = {
            names[index]: sink.state_dict()
            for index, sink in enumerate(self.run.sinks)
            if isinstance(sink, ResumableSink)
        }
        return {"decisions": dict(self.decisions), "culled": self.culled, "sinks": sinks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions = dict(state["decisions"])
        self.culled = int(state["culled"])
        saved_sinks = state.get("sinks", {})
        for index, (name, sink) in enumerate(zip(self.sink_names(), self.run.sinks, strict=True)):
            saved = saved_sinks.get(name, saved_sinks.get(str(index)))  # by index: checkpoints before names
            if saved is not None and isinstance(sink, ResumableSink):
                sink.load_state_dict(saved)

    def close_sinks(self) -> None:
        """Close every sink through its channel (what is queued gets ``nissa.delivery.wait_ms`` to go). A sink that
        cannot close is logged; it never keeps the others open."""
        channels = {id(channel.sink): channel for channel in self.channels()}
        for sink in self.run.sinks:
            try:
                channel = channels.get(id(sink))
                if channel is not None:
                    channel.close()
                else:
                    sink.close()
            except Exception as error:  # noqa: BLE001 - a sink that cannot close must not keep the rest open
                logger.warning("telemetry sink %r did not close: %s: %s", sink, type(error).__name__, error)

    def sink_names(self) -> list[str]:
        """The name of each of the run's sinks, in order (its class name when the selection does not say)."""
        names = self.run.config.get(NissaSelection).sinks
        return [names[i] if i < len(names) else type(sink).__name__ for i, sink in enumerate(self.run.sinks)]


def replica_check(history: History) -> dict[str, float]:
    """On several processes, the decision point's replica check in ms (for the record's epoch entry)."""
    return {} if history.replica_check_ms is None else {"replica_check_ms": history.replica_check_ms}


def replica_metrics(history: History) -> list[Metric]:
    """On several processes, the decision point's replica check (docs/distributed.md)."""
    if history.replica_check_ms is None:
        return []
    return [Metric("tolaria.distributed.replica_check_ms", history.replica_check_ms, "ms")]


def seed_measurements(seeds: list[SeedState]) -> dict[str, dict[str, Any]]:
    """Each slot holding a seed: its blueprint, stage, alpha and measured contribution (with standard error)."""
    measured = {}
    for seed in seeds:
        if seed.stage not in lifecycle.HAS_SEED:
            continue
        entry: dict[str, Any] = {
            "blueprint": seed.blueprint_id,
            "stage": lifecycle.stage_name(seed.stage),
            "alpha": seed.alpha,
            "parameters": seed.parameter_count,
        }
        for field in ("contribution", "contribution_stderr", "contribution_accuracy"):
            if seed.HasField(field):
                entry[field] = getattr(seed, field)
        measured[seed.slot_id] = entry
    return measured


def finite(value: float) -> float | None:
    """``value``, or ``None`` (JSON null) when it is NaN or infinite."""
    return value if math.isfinite(value) else None
