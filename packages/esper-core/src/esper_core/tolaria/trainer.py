"""Tolaria's training loop (ARCHITECTURE.md section 6).

Per epoch: train on the task's data in a seeded order (nothing runs per batch but the training step: losses and
counts accumulate on the device and are read once, at the epoch's end); then a decision point:

1. validation through the seed executor (every seed's counterfactual contribution comes with it);
2. the executor's bookkeeping (ages, embargoes, health checks);
3. a ``SystemStatePacket``: typed metrics and every slot's ``SeedState``;
4. the controller's decision, under ``decision_timeout_s`` (a late or failed decision is a no-op; repeated failures
   put the loop in conservative mode, where the controller is not consulted for ``conservative_for`` decision
   points);
5. the executor applies the command (a slow application counts as a failure too, but is never abandoned half way);
6. the controller judges outcomes (field reports); everything is recorded, published on the bus and announced to
   plugins; telemetry is relayed from the bus to the sinks;
7. a checkpoint.

A non-finite loss, or a training loss above ``loss_spike_factor`` times the previous epoch's, rolls the run back to
its last checkpoint and culls the seeds that were in the forward pass (the one responsible, when only one was), with
a signed command; it is recorded. After ``max_rollbacks`` the run stops.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from google.protobuf.json_format import MessageToDict

from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    DecisionMetadata,
    HardwareContext,
    OptimizerFamily,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    TrainingMetrics,
    lifecycle,
    value_name,
)
from esper_core.plugins.runinfo import RunInfo
from esper_core.signing import CommandSigner
from esper_core.telemetry import ERROR, WARNING, Event, Metric, build_telemetry_packet
from esper_core.tolaria.assembly import Run, RunError
from esper_core.tolaria.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint

FAMILIES = {
    "SGD": OptimizerFamily.OPTIMIZER_FAMILY_SGD,
    "Adam": OptimizerFamily.OPTIMIZER_FAMILY_ADAM,
    "AdamW": OptimizerFamily.OPTIMIZER_FAMILY_ADAMW,
}


@attrs.define
class EpochStats:
    train_loss: float
    train_accuracy: float
    seconds: float
    samples: int


@attrs.define
class History:
    """What the loop remembers between decision points (saved in checkpoints)."""

    epoch: int = 0
    global_step: int = 0
    val_losses: list[float] = attrs.Factory(list)
    train_losses: list[float] = attrs.Factory(list)
    failures: int = 0
    conservative_left: int = 0
    rollbacks: int = 0
    hook_ms: float | None = None
    decide_ms: float | None = None
    apply_ms: float | None = None
    host_parameters: int = 0
    started_at: float = attrs.Factory(time.time)
    train_seconds: float = 0.0


@attrs.frozen
class Summary:
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    host_parameters: int
    parameters: int
    fossilized: int
    culled: int
    rollbacks: int
    wall_seconds: float
    train_seconds: float
    decisions: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: Called at each epoch's end with (epoch, epoch stats, the state packet, the command, its result).
EpochCallback = Callable[[int, EpochStats, SystemStatePacket, AdaptationCommand, CommandResult], None]
#: Called with (steps done, steps in the epoch) during an epoch.
StepCallback = Callable[[int, int], None]


class Trainer:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.history = History()
        self.history.host_parameters = sum(p.numel() for p in run.executor.host_parameters())
        self.signer = CommandSigner(run.signing_key, issuer="tolaria")
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="esper-decide")
        self.run.bus.subscribe([run.bus.streams.telemetry, run.bus.streams.emergency])
        self.decisions: dict[str, int] = {}
        self.culled = 0
        self.on_epoch: EpochCallback | None = None
        self.on_step: StepCallback | None = None

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> Summary:
        run = self.run
        if self.history.epoch == 0:
            run.record.append(
                "run_started",
                run_id=run.run_id,
                task=run.task.name,
                host_parameters=self.history.host_parameters,
                slots=[MessageToDict(s) for s in run.executor.export_seed_states()],
            )
            run.registry.run_started(RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config))
        else:
            run.registry.run_started(RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config, resumed=True))
        while self.history.epoch < run.options.epochs:
            epoch = self.history.epoch + 1
            stats = self.train_epoch(epoch)
            problem = self._divergence(stats)
            if problem is not None:
                self._roll_back(epoch, problem)
                continue
            state, command, result = self.decision_point(epoch, stats)
            self.history.epoch = epoch
            self.history.train_losses.append(stats.train_loss)
            self.checkpoint()
            if self.on_epoch is not None:
                self.on_epoch(epoch, stats, state, command, result)
        return self.finish()

    def batches(
        self, inputs: torch.Tensor, targets: torch.Tensor, size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(inputs), size):
            yield inputs[start : start + size], targets[start : start + size]

    def train_epoch(self, epoch: int) -> EpochStats:
        run, history = self.run, self.history
        inputs, targets = run.data.train
        size = run.options.batch_size
        shuffle = torch.Generator().manual_seed(run.options.seed * 1_000_003 + epoch)  # resumable: no carried state
        order = torch.randperm(len(inputs), generator=shuffle).to(run.device)
        steps = math.ceil(len(inputs) / size)
        loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
        correct = torch.zeros((), dtype=torch.float64, device=run.device)
        every = run.tolaria.decision_every_steps
        run.model.train()
        start = time.perf_counter()
        for step in range(steps):
            index = order[step * size : (step + 1) * size]
            batch_inputs, batch_targets = inputs[index], targets[index]
            run.optimizer.zero_grad(set_to_none=True)
            outputs = run.model(batch_inputs)
            loss = run.task.loss(outputs, batch_targets)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            if run.tolaria.gradient_clip:
                torch.nn.utils.clip_grad_norm_(self._optimized_parameters(), run.tolaria.gradient_clip)
            run.optimizer.step()
            history.global_step += 1
            loss_sum += loss.detach().double() * len(index)
            correct += run.task.correct(outputs.detach(), batch_targets).double()
            if self.on_step is not None:
                self.on_step(step + 1, steps)
            if every and history.global_step % every == 0 and step < steps - 1:
                partial = EpochStats(float("nan"), float("nan"), time.perf_counter() - start, (step + 1) * size)
                self.decision_point(epoch, partial, checkpoint_epoch=False)
                run.model.train()
        seconds = time.perf_counter() - start
        history.train_seconds += seconds
        count = len(inputs)
        return EpochStats(float(loss_sum.item()) / count, float(correct.item()) / count, seconds, count)

    def _optimized_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.run.optimizer.param_groups for p in group["params"]]

    # -- decision points --------------------------------------------------------------------------------------
    def decision_point(
        self, epoch: int, stats: EpochStats, *, checkpoint_epoch: bool = True
    ) -> tuple[SystemStatePacket, AdaptationCommand, CommandResult]:
        run, history = self.run, self.history
        start = time.perf_counter()
        validation = run.executor.evaluate(
            self.batches(*run.data.val, max(run.options.batch_size, 256)), run.task.loss, run.task.correct
        )
        run.executor.decision_point(epoch, history.global_step)
        seeds = run.executor.export_seed_states()
        state = self._state(epoch, stats, validation, seeds)
        command, decide_ms = self._decide(state)
        result, apply_ms = self._apply(command)
        reports = run.controller.observe(state, command, result)
        events = run.executor.drain_events()
        # The hook's own cost: validation is work the run needs anyway, and scales with the validation set.
        validation_s = float(getattr(validation, "seconds", 0.0))
        history.hook_ms = (time.perf_counter() - start - validation_s) * 1000.0
        history.decide_ms, history.apply_ms = decide_ms, apply_ms
        if checkpoint_epoch:
            history.val_losses.append(validation.loss)
        self._note(epoch, stats, state, command, result, events, reports, validation)
        return state, command, result

    def _state(self, epoch: int, stats: EpochStats, validation: Any, seeds: list[SeedState]) -> SystemStatePacket:
        run, history = self.run, self.history
        metrics = TrainingMetrics(
            epoch=epoch,
            global_step=history.global_step,
            epochs_total=run.options.epochs,
            val_loss=validation.loss,
            val_accuracy=validation.accuracy,
            isolation_violations=sum(seed.isolation_violations for seed in seeds),
            parameter_count=history.host_parameters
            + sum(s.parameter_count for s in seeds if s.stage in lifecycle.HAS_SEED),
            rollbacks=history.rollbacks,
            optimizer_family=FAMILIES.get(type(run.optimizer).__name__, OptimizerFamily.OPTIMIZER_FAMILY_OTHER),
            learning_rate=float(run.optimizer.param_groups[0]["lr"]),
        )
        if math.isfinite(stats.train_loss):
            metrics.train_loss = stats.train_loss
            metrics.train_accuracy = stats.train_accuracy
        if stats.seconds > 0:
            metrics.samples_per_second = stats.samples / stats.seconds
            metrics.epoch_duration_ms = stats.seconds * 1000.0
            steps = max(1, math.ceil(stats.samples / run.options.batch_size))
            metrics.step_latency_ms = stats.seconds * 1000.0 / steps  # the mean: no per-step timing is taken
        losses = [*history.val_losses, validation.loss]
        metrics.best_val_loss = min(losses)
        if len(losses) > 1:
            metrics.loss_delta = losses[-1] - losses[-2]
            recent = losses[-4:]
            mean = sum(recent) / len(recent)
            metrics.loss_volatility = (sum((x - mean) ** 2 for x in recent) / len(recent)) ** 0.5 / max(mean, 1e-12)
        ewma = losses[0]
        for loss in losses[1:]:
            ewma = 0.3 * loss + 0.7 * ewma
        metrics.loss_ewma = ewma
        for name, value in (
            ("hook_latency_ms", history.hook_ms),
            ("tamiyo_latency_ms", history.decide_ms),
            ("kasmina_apply_ms", history.apply_ms),
        ):
            if value is not None:
                setattr(metrics, name, value)
        state = SystemStatePacket(
            version=1, packet_id=f"{run.run_id}-epoch-{epoch}-step-{history.global_step}",
            training_run_id=run.run_id, source_subsystem="tolaria", current_epoch=epoch,
            global_step=history.global_step, metrics=metrics, hardware=self._hardware(), seeds=seeds,
        )  # fmt: skip
        state.timestamp.GetCurrentTime()
        return state

    def _hardware(self) -> HardwareContext:
        device = self.run.device
        context = HardwareContext(device_type=device.type, device_id=str(device.index or 0))
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            context.total_memory_gb, context.available_memory_gb = total / 2**30, free / 2**30
        else:
            context.total_memory_gb, context.available_memory_gb = _memory_gb()
        return context

    def _decide(self, state: SystemStatePacket) -> tuple[AdaptationCommand, float | None]:
        history, options = self.history, self.run.tolaria
        if history.conservative_left > 0:
            history.conservative_left -= 1
            return _noop("conservative mode: the controller is not consulted at this decision point"), None
        start = time.perf_counter()
        future = self._worker.submit(self.run.controller.decide, state)
        try:
            command = future.result(timeout=options.decision_timeout_s)
        except concurrent.futures.TimeoutError:
            self._failure(f"the controller did not decide within {options.decision_timeout_s} s")
            return _noop(f"timed out after {options.decision_timeout_s} s"), None
        except Exception as error:  # noqa: BLE001 - a failing controller must not stop training
            self._failure(f"the controller failed: {type(error).__name__}: {error}")
            return _noop(f"the controller failed: {error}"), None
        history.failures = 0
        return command, (time.perf_counter() - start) * 1000.0

    def _apply(self, command: AdaptationCommand) -> tuple[CommandResult, float | None]:
        if command.command_type == CommandType.COMMAND_NOOP and not command.security.signature:
            return CommandResult(status=CommandStatus.COMMAND_STATUS_NOOP, detail=command.decision.rationale), None
        start = time.perf_counter()
        result = self.run.executor.apply(command)
        elapsed = (time.perf_counter() - start) * 1000.0
        if elapsed > self.run.tolaria.apply_timeout_s * 1000.0:
            self._failure(f"applying the command took {elapsed:.0f} ms")
        return result, elapsed

    def _failure(self, reason: str) -> None:
        history, options = self.history, self.run.tolaria
        history.failures += 1
        events = [Event("decision_failed", reason, WARNING)]
        if history.failures >= options.failures_to_conservative:
            history.conservative_left = options.conservative_for
            history.failures = 0
            events.append(Event("conservative_mode_entered", reason, WARNING))
        self.run.record.append(
            "failure", epoch=self.history.epoch + 1, reason=reason, conservative=history.conservative_left > 0
        )
        self._publish(events)

    # -- recording, telemetry, hooks --------------------------------------------------------------------------
    def _note(
        self,
        epoch: int,
        stats: EpochStats,
        state: SystemStatePacket,
        command: AdaptationCommand,
        result: CommandResult,
        events: list[Any],
        reports: list[Any],
        validation: Any,
    ) -> None:
        run, history = self.run, self.history
        seeds = list(state.seeds)
        stages: dict[str, int] = {}
        for seed in seeds:
            name = lifecycle.stage_name(seed.stage)
            stages[name] = stages.get(name, 0) + 1
        operation = lifecycle.command_name(command)
        self.decisions[operation] = self.decisions.get(operation, 0) + 1
        run.record.append(
            "epoch", epoch=epoch, global_step=history.global_step, train_loss=_finite(stats.train_loss),
            train_accuracy=_finite(stats.train_accuracy), val_loss=validation.loss, val_accuracy=validation.accuracy,
            parameters=int(state.metrics.parameter_count), host_parameters=history.host_parameters,
            seeds=stages, slots=_seed_measurements(seeds), epoch_seconds=stats.seconds, decision_ms=history.hook_ms,
            validation_seconds=getattr(validation, "seconds", None),
            evaluation_variants=getattr(validation, "variants", 1),
        )  # fmt: skip
        run.record.append(
            "decision", epoch=epoch, operation=operation, slot=command.target_slot_id,
            blueprint=command.seed_operation.blueprint_id, rationale=command.decision.rationale,
            risk_reason=command.decision.risk_reason, rules=list(command.decision.risk_rules_fired),
            policy=command.decision.policy_name,
            status=value_name(CommandStatus, result.status, "COMMAND_STATUS_"), detail=result.detail,
            gates=[MessageToDict(gate) for gate in result.gates], command_id=command.command_id,
        )  # fmt: skip
        self._transitions(epoch, events)
        for report in reports:
            run.record.append(
                "field_report",
                epoch=epoch,
                report=report.report_id,
                slot=report.slot_id,
                blueprint=report.blueprint_id,
                outcome=_outcome(report),
                contribution=report.delta.contribution if report.delta.HasField("contribution") else None,
            )
            run.registry.field_report(report)
        run.registry.decision(state, command, result)
        run.bus.publish(state)
        self._publish([], epoch=epoch, stats=stats, validation=validation, state=state)

    def _transitions(self, epoch: int, events: list[Any]) -> None:
        """Record every lifecycle transition and announce it to the plugins."""
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
            run.registry.seed_transition(event)

    def _publish(self, events: list[Event], **context: Any) -> None:
        run = self.run
        metrics = []
        if "validation" in context:
            stats, validation, state = context["stats"], context["validation"], context["state"]
            metrics = [
                Metric("tolaria.training.loss", _finite(stats.train_loss) or 0.0),
                Metric("tolaria.training.accuracy", _finite(stats.train_accuracy) or 0.0),
                Metric("tolaria.validation.loss", validation.loss),
                Metric("tolaria.validation.accuracy", validation.accuracy),
                Metric("tolaria.epoch.seconds", stats.seconds, "s"),
                Metric("tolaria.epoch_hook.latency_ms", self.history.hook_ms or 0.0, "ms"),
                Metric("tolaria.parameters", float(state.metrics.parameter_count)),
                Metric("tolaria.rollbacks", float(self.history.rollbacks)),
                Metric("tolaria.conservative_mode", float(self.history.conservative_left > 0)),
            ]
        packet = build_telemetry_packet(
            source="tolaria", metrics=metrics, events=events, training_run_id=run.run_id,
            epoch=context.get("epoch", self.history.epoch), global_step=self.history.global_step,
        )  # fmt: skip
        run.bus.publish(packet, priority=packet.priority)
        self._relay()

    def _relay(self) -> None:
        """Hand everything on the telemetry and emergency streams to the sinks."""
        run = self.run
        streams = [run.bus.streams.telemetry, run.bus.streams.emergency]
        while True:
            messages = run.bus.poll(streams, count=256)
            if not messages:
                break
            for message in messages:
                payload = message.payload
                if payload.DESCRIPTOR.name == "TelemetryPacket":
                    for sink in run.sinks:
                        sink.emit(payload)  # type: ignore[arg-type]
            run.bus.ack_many(messages)
        for sink in run.sinks:
            sink.flush()

    # -- rollback ---------------------------------------------------------------------------------------------
    def _divergence(self, stats: EpochStats) -> str | None:
        if not math.isfinite(stats.train_loss):
            return f"the training loss is {stats.train_loss}"
        previous = self.history.train_losses[-1] if self.history.train_losses else None
        factor = self.run.tolaria.loss_spike_factor
        if previous is not None and stats.train_loss > factor * previous:
            return f"the training loss spiked to {stats.train_loss:.4g} (> {factor} x {previous:.4g})"
        return None

    def _roll_back(self, epoch: int, reason: str) -> None:
        run = self.run
        # In the forward pass and still removable (a fossilized seed is part of the host now).
        blamed = [s for s in run.executor.export_seed_states() if s.stage in lifecycle.IN_FORWARD & lifecycle.IN_FLIGHT]
        if self.history.rollbacks >= run.tolaria.max_rollbacks:
            raise RunError(
                f"epoch {epoch}: {reason}, and the run has already rolled back {self.history.rollbacks} "
                "times; it stops here (raise tolaria.max_rollbacks, or lower the learning rate)"
            )
        path = self.restore_latest()
        if path is None:
            raise RunError(f"epoch {epoch}: {reason}, and there is no checkpoint to roll back to")
        history = self.history  # the restored one: restore replaces the object
        history.rollbacks += 1  # the count the latest checkpoint holds: every rollback re-saves it (below)
        culled = []
        for seed in blamed:
            command = AdaptationCommand(
                command_type=CommandType.COMMAND_SEED, target_slot_id=seed.slot_id, issued_by="tolaria",
                seed_operation=CommandSeedOperation(operation=SeedOperation.SEED_OP_CULL),
                decision=DecisionMetadata(policy_name="tolaria", rationale=f"rollback: {reason}"),
            )  # fmt: skip
            result = run.executor.apply(self.signer.sign(command))
            if result.status == CommandStatus.COMMAND_STATUS_APPLIED:
                culled.append(seed.slot_id)
        responsible = culled[0] if len(culled) == 1 else None
        run.record.append(
            "rollback", epoch=epoch, to_epoch=history.epoch, reason=reason, culled=culled, responsible=responsible
        )
        self._transitions(epoch, run.executor.drain_events())
        self._publish([Event("rollback", f"epoch {epoch}: {reason}; culled {culled or 'none'}", ERROR)])
        # Overwrite the checkpoint we came back to with what we have now: the culls, the rollback count and the
        # record entries above survive the next rollback or a resume (or the same seed would return with them).
        self.checkpoint()

    # -- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        run = self.run
        state = {
            "epoch": self.history.epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "executor": run.executor.state_dict(),
            "controller": run.controller.state_dict(),
            "rng": rng_state(),
            "history": attrs.asdict(self.history),
            "decisions": dict(self.decisions),
            "culled": self.culled,
            "record_length": len(run.record),
        }
        save_checkpoint(run.run_dir, self.history.epoch, state, run.tolaria.keep_checkpoints)

    def restore_latest(self) -> Any:
        from esper_core.tolaria.checkpoint import latest_checkpoint

        path = latest_checkpoint(self.run.run_dir)
        if path is None:
            return None
        self.restore(load_checkpoint(path))
        return path

    def restore(self, state: dict[str, Any]) -> None:
        run = self.run
        run.model.load_state_dict(state["model"])
        run.executor.load_state_dict(state["executor"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.controller.load_state_dict(state["controller"])
        restore_rng(state["rng"])
        self.history = History(**state["history"])
        self.decisions = dict(state["decisions"])
        self.culled = int(state["culled"])
        run.record.truncate(int(state["record_length"]))

    # -- the end ----------------------------------------------------------------------------------------------
    def finish(self) -> Summary:
        run = self.run
        seeds = run.executor.export_seed_states()
        validation = run.executor.evaluate(self.batches(*run.data.val, 512), run.task.loss, run.task.correct)
        test_loss = test_accuracy = None
        if run.data.test is not None:
            test = run.executor.evaluate(self.batches(*run.data.test, 512), run.task.loss, run.task.correct)
            test_loss, test_accuracy = test.loss, test.accuracy
        summary = Summary(
            epochs=self.history.epoch,
            train_loss=self.history.train_losses[-1] if self.history.train_losses else float("nan"),
            val_loss=validation.loss,
            val_accuracy=validation.accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            host_parameters=self.history.host_parameters,
            parameters=self.history.host_parameters
            + sum(s.parameter_count for s in seeds if s.stage in lifecycle.HAS_SEED),
            fossilized=sum(s.stage == lifecycle.FOSSILIZED for s in seeds),
            culled=self.culled,
            rollbacks=self.history.rollbacks,
            wall_seconds=time.time() - self.history.started_at,
            train_seconds=self.history.train_seconds,
            decisions=dict(self.decisions),
        )
        run.record.append("run_finished", **summary.as_dict())
        run.registry.run_finished(
            RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config),
            {k: v for k, v in summary.as_dict().items() if isinstance(v, (int, float))},
        )
        self._relay()
        return summary

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        run = self.run
        for sink in run.sinks:
            sink.close()
        run.controller.close()
        run.record.close()
        if hasattr(run.store, "close"):
            run.store.close()
        run.bus.close()


def _noop(rationale: str) -> AdaptationCommand:
    return AdaptationCommand(
        version=1, command_type=CommandType.COMMAND_NOOP, issued_by="tolaria",
        decision=DecisionMetadata(policy_name="tolaria", rationale=rationale),
    )  # fmt: skip


def _outcome(report: Any) -> str:
    from esper_core.leyline import FieldReportOutcome

    return value_name(FieldReportOutcome, report.outcome, "FIELD_REPORT_OUTCOME_")


def _seed_measurements(seeds: list[SeedState]) -> dict[str, dict[str, Any]]:
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


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _memory_gb() -> tuple[float, float]:
    """Total and available memory from /proc/meminfo (zeros where it cannot be read)."""
    try:
        lines = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()
        fields = dict(line.split(":", 1) for line in lines)
        total = int(fields["MemTotal"].split()[0]) / 2**20
        available = int(fields["MemAvailable"].split()[0]) / 2**20
        return total, available
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0
