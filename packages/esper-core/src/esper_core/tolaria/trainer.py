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

The run's compute is counted, not timed (``History.training_flops`` and its siblings): the FLOPs of a training step
are counted on a few training samples whenever the seeds in the forward pass changed at a decision point (a stage
change, a cull; a restore), cached per sample, and multiplied by the samples trained; the validation pass reports
its own. Nothing is counted per batch.

A non-finite loss, or a training loss above ``loss_spike_factor`` times the previous epoch's, rolls the run back to
its last checkpoint and culls the seeds that were in the forward pass (the one responsible, when only one was), with
a signed command; it is recorded. After ``max_rollbacks`` the run stops.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from google.protobuf.json_format import MessageToDict

from esper_core.flops import COUNT_SAMPLES, count_training_step
from esper_core.leyline import (
    AdaptationCommand,
    CommandResult,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    DecisionMetadata,
    SeedOperation,
    SystemStatePacket,
    lifecycle,
)
from esper_core.plugins.runinfo import RunInfo
from esper_core.security_options import SecurityOptions
from esper_core.signing import CommandSigner
from esper_core.telemetry import ERROR, WARNING, Event
from esper_core.tolaria.assembly import Run, RunError
from esper_core.tolaria.checkpoint import Loaded, load_newest, restore_rng, rng_state, save_checkpoint
from esper_core.tolaria.history import EpochStats, History, Summary
from esper_core.tolaria.packets import build_state_packet, hardware_context, seed_parameters
from esper_core.tolaria.recording import RunRecorder

__all__ = ["EpochCallback", "EpochStats", "History", "StepCallback", "Summary", "Trainer"]

#: Called at each epoch's end with (epoch, epoch stats, the state packet, the command, its result).
EpochCallback = Callable[[int, EpochStats, SystemStatePacket, AdaptationCommand, CommandResult], None]
#: Called with (steps done, steps in the epoch) during an epoch.
StepCallback = Callable[[int, int], None]


class Trainer:
    """Trains one assembled run; ``clock`` (``time.monotonic`` by default) measures the run's running time."""

    def __init__(self, run: Run, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run
        self.clock = clock
        self.history = History()
        self.history.host_parameters = sum(p.numel() for p in run.executor.host_parameters())
        window = run.config.get(SecurityOptions).freshness_window_ms
        self.signer = CommandSigner(run.signing_key, issuer="tolaria", freshness_window_ms=window)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="esper-decide")
        self.run.bus.subscribe([run.bus.streams.telemetry, run.bus.streams.emergency])
        self.recorder = RunRecorder(run)
        #: Where the current stretch of running began (``time.monotonic()``); see ``History.wall_seconds``.
        self._running_since = self.clock()
        self.on_epoch: EpochCallback | None = None
        self.on_step: StepCallback | None = None
        #: The seeds' configuration and the counted FLOPs per sample of a training step in it (None: count anew).
        self._step_cost: tuple[tuple[Any, ...], float] | None = None

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
        per_sample = self.training_flops_per_sample()
        epoch_flops = 0
        stretch_from = 0  # the first sample of the epoch trained with the current per-sample cost
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
                done = (step + 1) * size
                stretch = round(per_sample * (done - stretch_from))
                epoch_flops += stretch
                history.training_flops += stretch
                stretch_from = done
                partial = EpochStats(float("nan"), float("nan"), time.perf_counter() - start, done, epoch_flops)
                self.decision_point(epoch, partial, checkpoint_epoch=False)
                per_sample = self.training_flops_per_sample()
                run.model.train()
        seconds = time.perf_counter() - start
        history.train_seconds += seconds
        count = len(inputs)
        stretch = round(per_sample * (count - stretch_from))  # the last, partial batch counts its own samples
        epoch_flops += stretch
        history.training_flops += stretch
        return EpochStats(float(loss_sum.item()) / count, float(correct.item()) / count, seconds, count, epoch_flops)

    def _optimized_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.run.optimizer.param_groups for p in group["params"]]

    # -- compute ----------------------------------------------------------------------------------------------
    def _configuration(self) -> tuple[Any, ...]:
        """What a training step's cost depends on: the seeds in the forward pass, each with its stage (a germinated,
        culled or embargoed seed computes nothing)."""
        return tuple(
            (s.slot_id, s.stage, s.seed_id, s.blueprint_id, tuple(sorted(s.blueprint_parameters.items())),
             s.parameter_count)
            for s in self.run.executor.export_seed_states()
            if s.stage in lifecycle.IN_FORWARD
        )  # fmt: skip

    def refresh_step_cost(self) -> None:
        """Count a training step's FLOPs anew if the seeds' configuration changed since the last count (at a decision
        point, after the command: a germination, a stage change or a cull changes it)."""
        configuration = self._configuration()
        if self._step_cost is not None and self._step_cost[0] == configuration:
            return
        run = self.run
        batch = run.data.train[0][: min(run.options.batch_size, COUNT_SAMPLES)]  # per sample exact on any batch
        counted = count_training_step(run.model, batch, self._optimized_parameters())
        self._step_cost = (configuration, counted.per_sample())

    def training_flops_per_sample(self) -> float:
        """The counted FLOPs per training sample (forward + backward) of the model as it is now."""
        if self._step_cost is None:
            self.refresh_step_cost()
        assert self._step_cost is not None
        return self._step_cost[1]

    # -- decision points --------------------------------------------------------------------------------------
    def decision_point(
        self, epoch: int, stats: EpochStats, *, checkpoint_epoch: bool = True
    ) -> tuple[SystemStatePacket, AdaptationCommand, CommandResult]:
        run, history = self.run, self.history
        start = time.perf_counter()
        validation = run.executor.evaluate(
            self.batches(*run.data.val, max(run.options.batch_size, 256)), run.task.loss, run.task.correct
        )
        history.add_evaluation(validation)
        run.executor.decision_point(epoch, history.global_step)
        seeds = run.executor.export_seed_states()
        state = build_state_packet(
            run_id=run.run_id, epoch=epoch, epochs_total=run.options.epochs, batch_size=run.options.batch_size,
            history=history, stats=stats, validation=validation, seeds=seeds, optimizer=run.optimizer,
            hardware=hardware_context(run.device),
        )  # fmt: skip
        command, decide_ms = self._decide(state)
        result, apply_ms = self._apply(command)
        reports = run.controller.observe(state, command, result)
        events = run.executor.drain_events()
        self.refresh_step_cost()  # the command may have changed what a training step computes
        # The hook's own cost: validation is work the run needs anyway, and scales with the validation set.
        validation_s = float(getattr(validation, "seconds", 0.0))
        history.hook_ms = (time.perf_counter() - start - validation_s) * 1000.0
        history.decide_ms, history.apply_ms = decide_ms, apply_ms
        if checkpoint_epoch:
            history.val_losses.append(validation.loss)
        self.recorder.decision_point(history, epoch, stats, state, command, result, events, reports, validation)
        return state, command, result

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
        self.recorder.publish(history, events)

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
        spent = self.history  # the compute of the epoch thrown away was spent all the same
        if self.restore_latest() is None:
            raise RunError(f"epoch {epoch}: {reason}, and there is no checkpoint to roll back to")
        history = self.history  # the restored one: restore replaces the object
        history.training_flops, history.validation_flops, history.measurement_flops = (
            spent.training_flops, spent.validation_flops, spent.measurement_flops
        )  # fmt: skip
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
        self.recorder.transitions(epoch, run.executor.drain_events())
        self.recorder.publish(
            history, [Event("rollback", f"epoch {epoch}: {reason}; culled {culled or 'none'}", ERROR)]
        )
        # Overwrite the checkpoint we came back to with what we have now: the culls, the rollback count and the
        # record entries above survive the next rollback or a resume (or the same seed would return with them).
        self.checkpoint()

    # -- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        run = self.run
        now = self.clock()
        self.history.wall_seconds += now - self._running_since
        self._running_since = now
        state = {
            "epoch": self.history.epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "executor": run.executor.state_dict(),
            "controller": run.controller.state_dict(),
            "rng": rng_state(),
            "history": attrs.asdict(self.history),
            "recorder": self.recorder.state_dict(),
            "record_bytes": run.record.end_offset,
        }
        save_checkpoint(run.run_dir, self.history.epoch, state, run.tolaria.keep_checkpoints)

    def restore_latest(self) -> Loaded | None:
        """Go back to the newest checkpoint that is intact and that the run record agrees with.

        Returns what was loaded, with the newer checkpoints that had to be skipped and why (``None``: the run has no
        checkpoint yet). Raises :class:`~esper_core.tolaria.checkpoint.DamagedCheckpoint` when none is usable, and
        :class:`~esper_core.tolaria.record.RecordDamaged` when the record is damaged beyond any checkpoint.
        """
        record = self.run.record

        def record_agrees(state: dict[str, Any]) -> str | None:
            offset = state.get("record_bytes")
            return None if offset is None else record.check_before(int(offset))

        loaded = load_newest(self.run.run_dir, accept=record_agrees)
        if loaded is not None:
            self.restore(loaded.state)
        return loaded

    def restore(self, state: dict[str, Any]) -> None:
        run = self.run
        run.model.load_state_dict(state["model"])
        run.executor.load_state_dict(state["executor"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.controller.load_state_dict(state["controller"])
        restore_rng(state["rng"])
        self.history = History(**state["history"])
        self._step_cost = None  # the restored seeds may differ: count again before training
        # Checkpoints written before the recorder existed hold its counters at the top level.
        self.recorder.load_state_dict(
            state.get("recorder") or {"decisions": state["decisions"], "culled": state["culled"]}
        )
        if "record_bytes" in state:
            run.record.cut_to(int(state["record_bytes"]))
        else:  # written before positions were byte offsets
            run.record.truncate(int(state["record_length"]))
        self._running_since = self.clock()

    # -- the end ----------------------------------------------------------------------------------------------
    def finish(self) -> Summary:
        run = self.run
        seeds = run.executor.export_seed_states()
        validation = run.executor.evaluate(self.batches(*run.data.val, 512), run.task.loss, run.task.correct)
        # The run's compute with the final passes (not kept in the history: a resumed finished run does them again).
        compute = attrs.evolve(self.history)
        compute.add_evaluation(validation)
        test_loss = test_accuracy = None
        if run.data.test is not None:
            test = run.executor.evaluate(self.batches(*run.data.test, 512), run.task.loss, run.task.correct)
            test_loss, test_accuracy = test.loss, test.accuracy
            compute.add_evaluation(test)
        summary = Summary(
            epochs=self.history.epoch,
            train_loss=self.history.train_losses[-1] if self.history.train_losses else float("nan"),
            val_loss=validation.loss,
            val_accuracy=validation.accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            host_parameters=self.history.host_parameters,
            parameters=self.history.host_parameters + seed_parameters(seeds),
            fossilized=sum(s.stage == lifecycle.FOSSILIZED for s in seeds),
            culled=self.recorder.culled,
            rollbacks=self.history.rollbacks,
            wall_seconds=self.history.wall_seconds + self.clock() - self._running_since,
            train_seconds=self.history.train_seconds,
            decisions=dict(self.recorder.decisions),
            training_flops=compute.training_flops,
            validation_flops=compute.validation_flops,
            measurement_flops=compute.measurement_flops,
            total_flops=compute.total_flops,
        )
        run.record.append("run_finished", **summary.as_dict())
        run.registry.run_finished(
            RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config),
            {k: v for k, v in summary.as_dict().items() if isinstance(v, (int, float))},
        )
        self.recorder.relay()
        run.bus.destroy_group(run.bus.subscriptions)  # nobody reads this run's group again (Redis would keep it)
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
