"""Tolaria's training loop (ARCHITECTURE.md section 6).

Per epoch: train on the task's data in a seeded order (nothing runs per batch but the training step,
:mod:`esper_core.tolaria.step`: losses and counts accumulate on the device and are read once, at the epoch's end);
then a decision point:

1. validation through the seed executor (every seed's counterfactual contribution comes with it);
2. the executor's bookkeeping (ages, embargoes, health checks);
3. a ``SystemStatePacket``: typed metrics (the gradient measurements on the probe batch among them,
   :mod:`esper_core.tolaria.gradients`) and every slot's ``SeedState``;
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

On several processes (``ranks``; docs/distributed.md) every rank trains its shard of each batch through a
data-parallel wrapper and validates its shard of the validation set (the results are gathered: every rank sees the
same numbers); the leader alone decides, records, checkpoints and publishes, and sends the commands its executor
applied to the followers, whose executors apply them too (:mod:`esper_core.tolaria.replication`). After each
decision point the ranks compare a digest of their seeds and weights; a mismatch stops the run. A rollback sends the
leader's restored state to the followers. A plugin exception that keeps an epoch from finishing stops a run on
several processes at its last checkpoint (the ranks cannot retry an epoch in step).

Plugins fail loudly, harmlessly (:mod:`esper_core.plugin_failures`). Every exception a plugin raises at run time is
written down once by the run's :class:`~esper_core.plugin_failures.PluginFailureLedger` (a console line per plugin
and exception type, the traceback in ``plugin-errors/``, a ``plugin_error`` record entry, checkpointed counts), and
the run carries on as safely as the place allows:

- the policy or the controller raised: a no-op instead of the decision;
- the seed executor, a catalog or the artifact store raised while a command was applied: the command fails, the
  executor leaves the slot as it was (Kasmina does), and a blueprint whose build raised is quarantined for the run
  (never offered, proposed or germinated again);
- those count as failures towards conservative mode, like a late decision;
- an epoch cannot finish (the task's model or loss raised, the executor's validation, a seed module in the forward
  pass): the run goes back to its last checkpoint and trains the epoch again (a seed module that raised is culled
  and its blueprint quarantined, as for a divergence); after ``failed_epochs_to_stop`` such epochs in a row the run
  stops with one line naming the plugin, resumable from that checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
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
    CommandEmergency,
    CommandPause,
    CommandResult,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    DecisionMetadata,
    EmergencyLevel,
    EmergencySignal,
    MessagePriority,
    SeedOperation,
    SeedState,
    SystemStatePacket,
    lifecycle,
    value_name,
)
from esper_core.leyline.annotations import (
    EMERGENCY,
    POLICY_ERROR,
    mark_quarantined,
    parse_emergency,
    parse_policy_error,
)
from esper_core.plugin_failures import (
    Blame,
    PluginFailure,
    PluginFailureLedger,
    PluginFailureSource,
    Reported,
    blame,
    failure_of,
    guarded_identity,
    origin_of,
    unguarded,
)
from esper_core.plugins.runinfo import RunInfo
from esper_core.protocols import SEED_GROUP_KEY, QuarantineListener
from esper_core.security_options import SecurityOptions
from esper_core.signing import CommandSigner
from esper_core.telemetry import ERROR, WARNING, Event, Metric
from esper_core.tolaria.assembly import Run, RunError
from esper_core.tolaria.checkpoint import Loaded, load_newest, restore_rng, rng_state, save_checkpoint
from esper_core.tolaria.emergency import (
    CONSERVATIVE,
    ELEVATED,
    HALT,
    EmergencyLadder,
    EmergencyOptions,
    RunHalted,
    level_name,
)
from esper_core.tolaria.gradients import GradientMeasurement, ewma, measure_gradients, split_parameters
from esper_core.tolaria.hardware import HardwareProbe
from esper_core.tolaria.history import EpochStats, History, Summary
from esper_core.tolaria.packets import build_state_packet, hardware_context, seed_parameters
from esper_core.tolaria.ranks import Ranks
from esper_core.tolaria.recording import RunRecorder
from esper_core.tolaria.replication import Directive, ReplicaMismatch, compare_digests, seed_digest
from esper_core.tolaria.sinks import SinkOptions
from esper_core.tolaria.snapshot import MemorySnapshot
from esper_core.tolaria.step import TrainingStep

__all__ = ["EpochCallback", "EpochStats", "History", "NoticeCallback", "StepCallback", "Summary", "Trainer"]

#: Called at each epoch's end with (epoch, epoch stats, the state packet, the command, its result).
EpochCallback = Callable[[int, EpochStats, SystemStatePacket, AdaptationCommand, CommandResult], None]
#: Called with (steps done, steps in the epoch) during an epoch.
StepCallback = Callable[[int, int], None]
#: Called with (what, one line) when the run has something to tell a person at once: ``"plugin error"`` (the first
#: of a plugin and exception type), ``"conservative mode"``.
NoticeCallback = Callable[[str, str], None]

#: The attribute that marks a signal this run raised itself (its run id), so that reading it back changes nothing.
RAISED_BY = "raised_by_run"

logger = logging.getLogger("esper.tolaria")


class Trainer:
    """Trains one assembled run; ``clock`` (``time.monotonic`` by default) measures the run's running time;
    ``ranks``: this process's place among the run's data-parallel processes (one process by default)."""

    def __init__(self, run: Run, *, clock: Callable[[], float] = time.monotonic, ranks: Ranks | None = None) -> None:
        self.run = run
        self.clock = clock
        self.ranks = ranks if ranks is not None else Ranks.single()
        #: Whether the executor validates a shard of the batches (else every rank validates all of them).
        self._shards = (
            self.ranks.distributed and "shard" in inspect.signature(unguarded(run.executor).evaluate).parameters
        )
        #: The commands the executor applied at the decision point under way, with their results (sent to the
        #: followers), and the followers' RNG states at the last checkpoint (sent back on a rollback or a resume).
        self._applied: list[tuple[AdaptationCommand, CommandResult]] = []
        self._rank_rng: list[Any] | None = None
        #: The last replica check's cost (ms): the digest, and comparing it across the ranks.
        self.last_digest_ms = 0.0
        #: A follower: the halt the leader announced at the last decision point.
        self._halt_told = ""
        #: The seeds (slot, seed id) at the last replica check: a new one takes the leader's initial weights.
        self._seeded: tuple[tuple[str, str], ...] = ()
        self.history = History()
        self.history.host_parameters = sum(p.numel() for p in run.executor.host_parameters())
        window = run.config.get(SecurityOptions).freshness_window_ms
        self.signer = CommandSigner(run.signing_key, issuer="tolaria", freshness_window_ms=window)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="esper-decide")
        self.run.bus.subscribe([run.bus.streams.telemetry, run.bus.streams.emergency])
        #: Reads the hardware at decision points (``tolaria.hardware_utilization``: utilization and temperature).
        self.hardware = HardwareProbe(run.tolaria.hardware_utilization)
        self.recorder = RunRecorder(run, self.hardware)
        #: Where the current stretch of running began (``time.monotonic()``); see ``History.wall_seconds``.
        self._running_since = self.clock()
        self.on_epoch: EpochCallback | None = None
        self.on_step: StepCallback | None = None
        self.on_notice: NoticeCallback | None = None
        self.failures = PluginFailureLedger(
            run.run_dir,
            run.record,
            origin=lambda failure: origin_of(run.registry, failure.kind, failure.name, failure.module),
            announce=lambda line: self._notice("plugin error", line),
        )
        #: Epochs in a row that a plugin's exception kept from finishing. Not checkpointed: a resume (after the
        #: plugin was fixed, presumably) is a fresh try.
        self._failed_epochs = 0
        #: Whether the decision point under way had a failure (one without any resets the count towards
        #: conservative mode).
        self._failed_here = False
        #: The task's model or loss, blamed for what a training step raises when no plugin inside it was.
        self._task_blame = Blame("task", run.options.task, "training step", module=_module_of(run.task))
        #: The seeds' configuration and the counted FLOPs per sample of a training step in it (None: count anew).
        self._step_cost: tuple[tuple[Any, ...], float] | None = None
        #: The training step (precision, accumulation, schedule, clipping, compile: esper_core.tolaria.step).
        self.step = TrainingStep.of_run(run, self.ranks)
        #: The newest checkpoint's state in memory (fast rollback), and how long the last restore took.
        self._snapshot: MemorySnapshot | None = None
        self.last_restore_ms = 0.0
        #: The emergency ladder (docs/tolaria.md, "Emergencies"): signals for this run are read from the bus.
        self.ladder = EmergencyLadder(run.config.get(EmergencyOptions), run.run_id)
        self._violations_seen = 0
        self.recorder.on_signal = self._heard
        self.recorder.on_sink_failure = self._sink_failed
        # Claim the failures the controller and the executor catch and carry on from: this run writes them down
        # (one caught while the run was put together, now; the others after each call).
        self._collect(run.controller, "the controller carried on without it")
        self._collect(run.executor, "the executor carried on without it")

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> Summary:
        run = self.run
        if self.ranks.distributed:
            self._replicate_state()  # every rank starts from the leader's state (its checkpoint's, on a resume)
        if not self.ranks.leads:
            return self._follow()
        if self.history.epoch == 0:
            run.record.append(
                "run_started",
                run_id=run.run_id,
                task=run.task.name,
                host_parameters=self.history.host_parameters,
                slots=[MessageToDict(s) for s in run.executor.export_seed_states()],
                **({"processes": self.ranks.world} if self.ranks.distributed else {}),
            )
            run.registry.run_started(RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config))
        else:
            run.registry.run_started(RunInfo(run_id=run.run_id, run_dir=run.run_dir, config=run.config, resumed=True))
        while self.history.epoch < run.options.epochs:
            self._halt_if_asked()
            epoch = self.history.epoch + 1
            try:
                stats = self.train_epoch(epoch)
                problem = self._divergence(stats)
                if problem is not None:
                    self._rolled_back(epoch, problem)
                    continue
                state, command, result = self.decision_point(epoch, stats)
            except Exception as error:
                failure = failure_of(error)
                if failure is None:  # not a plugin's exception: a bug of Esper's own, shown with its traceback
                    raise
                if self.ranks.distributed:
                    self._stop_distributed(epoch, failure)
                self._epoch_failed(epoch, failure)
                continue
            self._failed_epochs = 0
            self.history.epoch = epoch
            self.history.train_losses.append(stats.train_loss)
            self.checkpoint()
            if self.on_epoch is not None:
                self.on_epoch(epoch, stats, state, command, result)
            self._halt_if_asked()
        return self.finish()

    def _follow(self) -> Summary:
        """A follower's loop: the leader's, in step with it, without deciding, recording or writing anything."""
        run = self.run
        while self.history.epoch < run.options.epochs:
            epoch = self.history.epoch + 1
            stats = self.train_epoch(epoch)
            if self._divergence(stats) is not None:  # the leader saw the same (the stats are summed): it rolls back
                self._replicate_state()
                self.checkpoint()  # the leader checkpoints after its rollback: this rank's RNG goes with it
                continue
            self.decision_point(epoch, stats)
            self.history.epoch = epoch
            self.history.train_losses.append(stats.train_loss)
            self.checkpoint()
            if self._halt_told:
                raise RunHalted(f"{self._halt_told} (told by rank 0)")
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
        self.step.prepare(self._configuration(), self._in_forward())
        run.model.train()
        start = time.perf_counter()
        ranks = self.ranks
        for step in range(steps):
            index = order[step * size : (step + 1) * size]
            share = 1.0
            if ranks.distributed:  # this rank's shard of the batch, weighted by its share of it
                shard = index[ranks.rank :: ranks.world]
                share = len(shard) * ranks.world / len(index)
                # A batch smaller than the ranks: an example weighted 0 keeps this rank in the gradient all-reduce.
                index = shard if len(shard) else index[:1]
            batch_inputs, batch_targets = inputs[index], targets[index]
            try:  # free unless it raises
                batch_loss, batch_correct = self.step(batch_inputs, batch_targets, history.global_step, share)
            except Exception as error:
                lost = ranks.lost(error, f"a training step (epoch {epoch}, step {step + 1})")
                if lost is not None:  # the gradient exchange failed: not the task's doing
                    raise lost from error
                blame(error, self._task_blame)  # the host model is the task's (a seed module blames itself)
                raise
            if not share:
                batch_loss, batch_correct = batch_loss * 0, batch_correct * 0
            history.global_step += 1
            loss_sum += batch_loss
            correct += batch_correct
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
                self.step.prepare(self._configuration(), self._in_forward())
                run.model.train()
        ranks.sum([loss_sum, correct], "the epoch's training loss")
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

    def _in_forward(self) -> frozenset[str]:
        """The slots whose seeds are in the forward pass (their parameters take gradients)."""
        return frozenset(s.slot_id for s in self.run.executor.export_seed_states() if s.stage in lifecycle.IN_FORWARD)

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
        self._failed_here = False
        self._applied = []
        # Batch-norm statistics moved on each rank's shard: the validation and the gates read the leader's.
        self.ranks.align_buffers(run.model, self._optimized_parameters(), "aligning the buffers for a decision point")
        validation = self.evaluate(run.data.val, max(run.options.batch_size, 256))
        history.add_evaluation(validation)
        run.executor.decision_point(epoch, history.global_step)
        if not self.ranks.leads:
            return self._follow_decision(epoch, validation, start, checkpoint_epoch)
        self._emergencies(epoch)
        seeds = run.executor.export_seed_states()
        gradients = self.measure_gradients(seeds)
        if gradients is not None and gradients.norm is not None:
            history.gradient_norm_ewma = ewma(history.gradient_norm_ewma, gradients.norm)
        state = build_state_packet(
            run_id=run.run_id, epoch=epoch, epochs_total=run.options.epochs, batch_size=run.options.batch_size,
            history=history, stats=stats, validation=validation, seeds=seeds, optimizer=run.optimizer,
            hardware=hardware_context(run.device, self.hardware), gradients=gradients,
            gradient_norm_ewma=history.gradient_norm_ewma,
        )  # fmt: skip
        if self.failures.quarantined:
            mark_quarantined(state, {key: int(value["epoch"]) for key, value in self.failures.quarantined.items()})
        command, decide_ms = self._decide(state)
        self._emergency_of(command, epoch)
        result, apply_ms = self._apply(command)
        reports = run.controller.observe(state, command, result)
        self._collect(run.controller, "the controller carried on without it")
        self._collect(run.executor, "the executor carried on without it")
        if not self._failed_here:
            history.failures = 0  # a decision point without a failure ends a run of them
        events = run.executor.drain_events()
        self.refresh_step_cost()  # the command may have changed what a training step computes
        if self.ranks.distributed:
            self.ranks.broadcast(Directive.of(self._applied, self.ladder.halt), "sending the decision to the ranks")
            self._check_replicas(f"epoch {epoch}, step {history.global_step}")
            history.replica_check_ms = self.last_digest_ms
        # The hook's own cost: validation is work the run needs anyway, and scales with the validation set.
        validation_s = float(getattr(validation, "seconds", 0.0))
        history.hook_ms = (time.perf_counter() - start - validation_s) * 1000.0
        history.decide_ms, history.apply_ms = decide_ms, apply_ms
        if checkpoint_epoch:
            history.val_losses.append(validation.loss)
        self.recorder.decision_point(history, epoch, stats, state, command, result, events, reports, validation)
        return state, command, result

    def _follow_decision(
        self, epoch: int, validation: Any, start: float, checkpoint_epoch: bool
    ) -> tuple[SystemStatePacket, AdaptationCommand, CommandResult]:
        """A follower's decision point after the validation and the executor's bookkeeping: apply the commands the
        leader's executor applied, in order, then check the replicas."""
        run, history = self.run, self.history
        directive: Directive = self.ranks.broadcast(None, "waiting for the leader's decision")
        assert isinstance(directive, Directive)
        directive.replay(run.executor.apply, self.ranks.rank)
        run.executor.drain_events()
        self.recorder.relay()  # drain what this rank's executor published on its own bus (it has no sinks)
        self.refresh_step_cost()
        self._halt_told = directive.halt
        self._check_replicas(f"epoch {epoch}, step {history.global_step}")
        history.replica_check_ms = self.last_digest_ms
        history.hook_ms = (time.perf_counter() - start - float(getattr(validation, "seconds", 0.0))) * 1000.0
        if checkpoint_epoch:
            history.val_losses.append(validation.loss)
        return SystemStatePacket(), _noop("a follower does not decide"), CommandResult()

    def evaluate(self, split: tuple[torch.Tensor, torch.Tensor], size: int) -> Any:
        """The executor's validation pass over ``split`` in batches of ``size`` (this rank's shard of them, when
        the executor shards: every rank gets the same result)."""
        run = self.run
        batches = self.batches(*split, size)
        if self._shards:
            return run.executor.evaluate(batches, run.task.loss, run.task.correct, shard=self.ranks)
        return run.executor.evaluate(batches, run.task.loss, run.task.correct)

    def _check_replicas(self, where: str) -> None:
        """Wrap the model anew if its seeds changed (the new seeds take the leader's weights), then compare every
        rank's digest of its seeds and weights with the leader's; a difference stops the run."""
        started = time.perf_counter()
        seeds = self.run.executor.export_seed_states()
        seeded = tuple((s.slot_id, s.seed_id) for s in seeds if s.stage in lifecycle.HAS_SEED)
        if seeded != self._seeded:  # a new seed: its initial weights are the leader's (whatever each rank drew)
            slots = {slot for slot, _ in seeded}
            self.ranks.align(
                [p for group in self.run.optimizer.param_groups if group.get(SEED_GROUP_KEY) in slots
                 for p in group["params"]],
                "giving a new seed the leader's weights",
            )  # fmt: skip
            self._seeded = seeded
        self.step.prepare(self._configuration(), self._in_forward())
        digest = seed_digest(seeds, self.run.optimizer)
        digests = self.ranks.gather(digest, "comparing the ranks' seeds")
        self.last_digest_ms = (time.perf_counter() - started) * 1000.0
        try:
            compare_digests(digests, where)
        except ReplicaMismatch as error:
            if self.ranks.leads:
                self.run.record.append("replica_mismatch", where=where, reason=str(error))
            raise

    def _replicate_state(self, stop: str = "") -> None:
        """The leader sends its state (or, with ``stop``, why the run stops) to the followers, which take it: at
        the start (a resume's checkpoint) and after a rollback."""
        run = self.run
        if self.ranks.leads:
            payload: dict[str, Any] = {"stop": stop} if stop else {
                "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "executor": run.executor.state_dict(), "step": self.step.state_dict(),
                "history": attrs.asdict(self.history), "rank_rng": self._rank_rng,
            }  # fmt: skip
            self.ranks.broadcast(payload, "sending the leader's state to the ranks")
            return
        state: dict[str, Any] = self.ranks.broadcast(None, "receiving the leader's state")
        if state.get("stop"):
            raise RunError(f"{state['stop']} (told by rank 0)")
        run.model.load_state_dict(state["model"])
        run.executor.load_state_dict(state["executor"])
        run.optimizer.load_state_dict(state["optimizer"])
        self.step.load_state_dict(state["step"])
        self.history = History(**state["history"])
        self._step_cost = None
        if state["rank_rng"] is not None and len(state["rank_rng"]) == self.ranks.world:
            restore_rng(state["rank_rng"][self.ranks.rank])

    def _rolled_back(self, epoch: int, problem: str) -> None:
        """:meth:`_roll_back`; on several ranks, a rollback that stops the run tells the followers why."""
        try:
            self._roll_back(epoch, problem)
        except RunError as error:
            if self.ranks.distributed:
                self._replicate_state(stop=str(error))
            raise

    def _stop_distributed(self, epoch: int, failure: PluginFailure) -> None:
        """A plugin's exception kept an epoch from finishing on several ranks: written down, and the run stops at its
        last checkpoint (the ranks cannot train the epoch again in step; the launcher stops the others)."""
        reported = self._plugin_failed(failure, "a run on several processes stops at its last checkpoint", counts=False)
        raise RunError(
            f"epoch {epoch}: {failure.plugin} raised {failure.describe()} in {failure.during}; a run on several "
            f"processes stops at its last checkpoint (epoch {self.history.epoch}). Traceback: "
            f"{self.run.run_dir / reported.traceback_file}. Fix the plugin, then {self.ranks.then}"
        )

    def measure_gradients(self, seeds: list[SeedState]) -> GradientMeasurement | None:
        """The decision point's gradient measurements on the probe batch (esper_core.tolaria.gradients); None with
        ``tolaria.gradient_micro_batches = 0``."""
        run = self.run
        if not run.tolaria.gradient_micro_batches:
            return None
        host, measured = split_parameters(run.optimizer, seeds)
        inputs, targets = run.data.probe
        return measure_gradients(
            run.model, inputs, targets, run.task.loss, host, measured, run.tolaria.gradient_micro_batches
        )

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
            controller = Blame("controller", options.controller, "decide", module=_module_of(self.run.controller))
            failure = failure_of(error, controller)
            assert failure is not None
            self._plugin_failed(failure, "a no-op was decided in its place", counts=False)  # counted just below
            self._failure(f"the controller failed: {type(error).__name__}: {error}")
            return _noop(f"the controller failed: {error}"), None
        elapsed = (time.perf_counter() - start) * 1000.0
        drained = self._collect(self.run.controller, "a safe no-op was decided instead")
        self._policy_error_untold(command, drained)
        return command, elapsed

    def _policy_error_untold(self, command: AdaptationCommand, drained: list[PluginFailure]) -> None:
        """A command that says its policy raised, from a controller that kept no traceback for Tolaria (one in
        another process, or not Tamiyo): the failure is written down from the annotation alone."""
        text = command.annotations.get(POLICY_ERROR)
        if not text or any(failure.kind == "policy" for failure in drained):
            return
        if isinstance(unguarded(self.run.controller), PluginFailureSource):
            return  # it hands over its failures: this one was handed over earlier, or deliberately not
        parsed = parse_policy_error(text)
        name, error_type, message = parsed if parsed is not None else ("?", "Exception", text)
        untold = (
            f"(no traceback: controller {self.run.tolaria.controller!r} reported only {text!r}; "
            "the policy's traceback is in the log of the process it runs in)\n"
        )
        failure = PluginFailure("policy", name, "decide", error_type, message, untold)
        self._plugin_failed(failure, "a safe no-op was decided instead")

    def _apply(self, command: AdaptationCommand) -> tuple[CommandResult, float | None]:
        if command.command_type == CommandType.COMMAND_NOOP and not command.security.signature:
            return CommandResult(status=CommandStatus.COMMAND_STATUS_NOOP, detail=command.decision.rationale), None
        refused = self._quarantined_germination(command)
        if refused is not None:
            return refused, None
        start = time.perf_counter()
        executor = self.run.executor
        try:
            result = executor.apply(command)
            self._applied.append((command, result))
        except Exception as error:  # noqa: BLE001 - a failing executor must not stop training
            default = Blame("seed executor", self.run.tolaria.seed_executor, "apply", module=_module_of(executor))
            failure = failure_of(error, default)
            assert failure is not None
            result = CommandResult(
                command_id=command.command_id,
                slot_id=command.target_slot_id,
                status=CommandStatus.COMMAND_STATUS_FAILED,
                detail=f"{failure.plugin} raised {failure.describe()} while the command was applied; not carried out",
            )
            self._plugin_failed(failure, "the command failed safely and the run goes on without it")
        elapsed = (time.perf_counter() - start) * 1000.0
        status = value_name(CommandStatus, result.status, "COMMAND_STATUS_")
        self._collect(executor, f"the command was not carried out ({status})")
        if elapsed > self.run.tolaria.apply_timeout_s * 1000.0:
            self._failure(f"applying the command took {elapsed:.0f} ms")
        return result, elapsed

    def _quarantined_germination(self, command: AdaptationCommand) -> CommandResult | None:
        """The refusal of a germination of a quarantined blueprint (a controller that ignores the state packet's
        quarantine gets the same answer as one that proposes it by mistake), or ``None``."""
        operation = command.seed_operation
        if command.command_type != CommandType.COMMAND_SEED or operation.operation != SeedOperation.SEED_OP_GERMINATE:
            return None
        quarantined = self.failures.quarantined.get(operation.blueprint_id)
        if quarantined is None:
            return None
        return CommandResult(
            command_id=command.command_id,
            slot_id=command.target_slot_id,
            status=CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL,
            detail=f"blueprint {operation.blueprint_id} is quarantined for this run since epoch "
            f"{quarantined['epoch']}: {quarantined['reason']}",
        )

    def _failure(self, reason: str, *, entry: bool = True) -> None:
        """Count a failure towards conservative mode (and enter it after ``failures_to_conservative`` in a row).

        ``entry``: write a ``failure`` record entry (a plugin's exception has its ``plugin_error`` entry instead).
        """
        run, history, options = self.run, self.history, self.run.tolaria
        history.failures += 1
        self._failed_here = True
        events = [Event("decision_failed", reason, WARNING)] if entry else []
        entered = history.failures >= options.failures_to_conservative
        if entered:
            history.conservative_left = options.conservative_for
            history.failures = 0
            events.append(Event("conservative_mode_entered", reason, WARNING))
        epoch = history.epoch + 1
        if entry:
            run.record.append("failure", epoch=epoch, reason=reason, conservative=history.conservative_left > 0)
        if entered:
            run.record.append(
                "conservative_mode", epoch=epoch, reason=reason, failures=options.failures_to_conservative,
                decision_points=options.conservative_for,
            )  # fmt: skip
            self._notice(
                "conservative mode",
                f"{options.failures_to_conservative} failures in a row (the last: {reason}); the controller is not "
                f"consulted at the next {_decision_points(options.conservative_for)}",
            )
        if events:
            self.recorder.publish(history, events)
        if entered:
            failed = f"{options.failures_to_conservative} failed decision points in a row (the last: {reason})"
            self._emergency(self.ladder.signal(ELEVATED, failed, "tolaria"), epoch)

    def _sink_failed(self, error: BaseException, name: str, during: str) -> None:
        """A telemetry sink raised: written down like any plugin's failure; its packets wait and training goes on."""
        failure = failure_of(error, Blame("telemetry sink", name, during))
        if failure is None:
            raise error
        kept = self.run.config.get(SinkOptions).max_queued
        consequence = f"its packets wait (up to {kept}) and are delivered when it works again; training goes on"
        self._plugin_failed(failure, consequence, counts=False)

    # -- emergencies ----------------------------------------------------------------------------------------
    def _heard(self, signal: EmergencySignal) -> None:
        """A signal read from the emergency stream: kept for the next decision point if it is for this run and not
        one this run raised itself (those are published for others, and already handled)."""
        if self.ladder.concerns(signal) and signal.attributes.get(RAISED_BY) != self.run.run_id:
            self.ladder.pending.append(signal)

    def _emergencies(self, epoch: int) -> None:
        """At a decision point: raise what Kasmina measured (new isolation violations), respond to the signals that
        arrived since the last one, or count a calm decision point (and resume what the ladder paused)."""
        self.recorder.relay()  # what arrived on the emergency stream since
        seeds = self.run.executor.export_seed_states()
        violations = sum(seed.isolation_violations for seed in seeds)
        if violations > self._violations_seen:
            reason = f"{violations - self._violations_seen} new isolation violation(s)"
            self.ladder.pending.append(self.ladder.signal(ELEVATED, reason, "kasmina"))
        self._violations_seen = max(self._violations_seen, violations)
        pending, self.ladder.pending = self.ladder.pending, []
        for signal in pending:
            self._emergency(signal, epoch)
        if not pending and self.ladder.calm_point() and self.ladder.paused:
            resumed = [slot for slot in self.ladder.paused if self._pause(slot, resume=True, reason="calm again")]
            self.ladder.paused = []
            self.run.record.append("emergency_over", epoch=epoch, resumed=resumed)

    def _emergency(self, signal: EmergencySignal, epoch: int) -> None:
        """Record ``signal`` with its cause, publish it when this run raised it, and respond by level."""
        run, history = self.run, self.history
        ours = not signal.attributes.get(RAISED_BY) and signal.origin in ("tolaria", "kasmina", "tamiyo")
        if ours:
            signal.attributes[RAISED_BY] = run.run_id
        level = self.ladder.escalated(signal.level)
        response = ""
        if level == HALT:
            repeated = f" ({self.ladder.options.halt_after} emergencies in a row)" if signal.level != HALT else ""
            self.ladder.halt = f"the run halted at epoch {epoch}: emergency from {signal.origin}: {signal.reason}"
            self.ladder.halt += repeated
            self.ladder.count = self.ladder.calm = 0
            response = "halt after this decision point"
        elif level == CONSERVATIVE:
            removal = CommandEmergency(level=CONSERVATIVE, reason=signal.reason)
            command = AdaptationCommand(command_type=CommandType.COMMAND_EMERGENCY, emergency=removal)
            result = self._apply_emergency_command(command)
            self.ladder.paused = []
            history.conservative_left = max(history.conservative_left, run.tolaria.conservative_for)
            response = f"removed every seed not fossilized ({result.detail}); conservative mode"
        elif level == ELEVATED:
            in_flight = [s.slot_id for s in run.executor.export_seed_states()
                         if s.stage in lifecycle.IN_FLIGHT and not s.paused]  # fmt: skip
            paused = [slot for slot in in_flight if self._pause(slot, resume=False, reason=signal.reason)]
            self.ladder.paused.extend(paused)
            history.conservative_left = max(history.conservative_left, run.tolaria.conservative_for)
            response = f"paused {', '.join(paused) or 'no seed'}; conservative mode"
        run.record.append(
            "emergency", epoch=epoch, level=level_name(signal.level), origin=signal.origin, reason=signal.reason,
            response=response or "recorded", escalated_to=level_name(level) if level != signal.level else None,
        )  # fmt: skip
        severity = ERROR if level >= ELEVATED else WARNING
        said = f"{level_name(level)} from {signal.origin}: {signal.reason}; {response or 'recorded'}"
        self.recorder.publish(history, [Event("emergency", said, severity)])
        if ours:
            run.bus.publish(signal, priority=MessagePriority.MESSAGE_PRIORITY_CRITICAL)
        if level >= ELEVATED:
            self._notice("emergency", said)

    def _emergency_of(self, command: AdaptationCommand, epoch: int) -> None:
        """An emergency the controller raised with its decision (the risk engine's): on the ladder at once."""
        raised = parse_emergency(command.annotations.get(EMERGENCY, ""))
        if raised is not None:
            level = EmergencyLevel.Value(f"EMERGENCY_LEVEL_{raised[0]}")
            self._emergency(self.ladder.signal(level, raised[1], "tamiyo"), epoch)

    def _pause(self, slot: str, *, resume: bool, reason: str) -> bool:
        command = AdaptationCommand(
            command_type=CommandType.COMMAND_PAUSE, target_slot_id=slot,
            pause=CommandPause(resume=resume, reason=reason),
        )  # fmt: skip
        return self._apply_emergency_command(command).status == CommandStatus.COMMAND_STATUS_APPLIED

    def _apply_emergency_command(self, command: AdaptationCommand) -> CommandResult:
        command.issued_by = "tolaria"
        command.decision.CopyFrom(DecisionMetadata(policy_name="tolaria", rationale="emergency"))
        signed = self.signer.sign(command)
        result = self.run.executor.apply(signed)
        self._applied.append((signed, result))
        return result

    def _halt_if_asked(self) -> None:
        if self.ladder.halt:
            raise RunHalted(
                f"{self.ladder.halt}. Its checkpoint of epoch {self.history.epoch} is written: find the cause in the "
                f"record's emergency entries, then continue with: esper run --resume {self.run.run_dir}"
            )

    # -- plugin failures --------------------------------------------------------------------------------------
    def _notice(self, what: str, line: str) -> None:
        if self.on_notice is not None:
            self.on_notice(what, line)
        else:
            logger.warning("%s: %s", what, line)

    def _plugin_failed(self, failure: PluginFailure, consequence: str, *, counts: bool = True) -> Reported:
        """Write ``failure`` down (the ledger, telemetry), quarantine the blueprint whose build (or seed module)
        raised, and count it towards conservative mode (``counts``; never a task's: the controller is not to blame
        for it)."""
        failure = self._with_catalog(failure)
        quarantines = (
            failure.kind == "blueprint catalog"
            and failure.during in ("build", "forward")
            and bool(failure.subject)
            and failure.subject not in self.failures.quarantined
        )
        if quarantines:
            consequence += f"; blueprint {failure.subject} is quarantined for the rest of the run"
        reported = self.failures.report(failure, epoch=self.history.epoch + 1, consequence=consequence)
        event = Event(
            "plugin_error", f"{failure.plugin} raised {failure.describe()} in {failure.during}; {consequence}", ERROR,
            {"plugin": failure.key, "error_type": failure.error_type, "traceback": reported.traceback_file},
        )  # fmt: skip
        self.recorder.publish(self.history, [event])
        if quarantines:
            self._quarantine(failure, reported)
        if counts and failure.kind != "task":
            self._failure(f"{failure.plugin} raised {failure.describe()}", entry=False)
        return reported

    def _with_catalog(self, failure: PluginFailure) -> PluginFailure:
        """A seed module's failure names its blueprint, not its catalog (the slot does not know it): find it."""
        if failure.kind != "blueprint catalog" or failure.name or not failure.subject:
            return failure
        for catalog in self.run.catalogs:
            identity = guarded_identity(catalog)
            try:
                offers = any(d.blueprint_id == failure.subject for d in catalog.descriptors())
            except Exception:  # noqa: BLE001 - a catalog that cannot list its blueprints now is not the one
                offers = False
            if offers:
                return attrs.evolve(failure, name=identity[1] if identity else str(getattr(catalog, "name", "?")))
        return attrs.evolve(failure, name="?")

    def _quarantine(self, failure: PluginFailure, reported: Reported) -> None:
        blueprint, epoch = failure.subject, self.history.epoch + 1
        if failure.during == "build":
            reason = f"its build raised {failure.describe()}"
        else:
            reason = f"its seed module raised {failure.describe()} in the forward pass (slot {failure.slot})"
        if not self.failures.quarantine(
            blueprint, catalog=failure.name, reason=reason, epoch=epoch, traceback_file=reported.traceback_file
        ):
            return
        attributes = {"blueprint_id": blueprint, "catalog": failure.name}
        self.recorder.publish(
            self.history, [Event("blueprint_quarantined", f"{blueprint}: {reason}", WARNING, attributes)]
        )
        # The seam for safety data sheets: a store (or catalog) that keeps them hears of it.
        for listener in [self.run.store, *self.run.catalogs]:
            if not isinstance(unguarded(listener), QuarantineListener):
                continue
            try:
                listener.blueprint_quarantined(blueprint, catalog=failure.name, reason=reason)
            except Exception as error:  # noqa: BLE001 - the quarantine stands whatever the listener does
                identity = guarded_identity(listener) or ("plugin", type(unguarded(listener)).__name__)
                default = Blame(identity[0], identity[1], "blueprint_quarantined", module=_module_of(listener))
                told = failure_of(error, default)
                assert told is not None
                self._plugin_failed(told, "the quarantine stands", counts=False)

    def _collect(self, component: Any, consequence: str) -> list[PluginFailure]:
        """Write down the failures ``component`` caught and carried on from (:class:`PluginFailureSource`)."""
        if not isinstance(unguarded(component), PluginFailureSource):
            return []
        drained = list(component.drain_plugin_failures())
        for failure in drained:
            said = "a safe no-op was decided instead" if failure.kind == "policy" else consequence
            self._plugin_failed(failure, said)
        return drained

    def _epoch_failed(self, epoch: int, failure: PluginFailure) -> None:
        """A plugin's exception kept epoch ``epoch`` from finishing: back to the last checkpoint, and train it again,
        or stop (resumable) after ``failed_epochs_to_stop`` such epochs in a row."""
        run = self.run
        failure = self._with_catalog(failure)
        if failure.kind == "blueprint catalog" and failure.slot:  # a seed module raised: cull it, like a divergence
            reason = f"the seed in {failure.slot} ({failure.subject}) raised {failure.describe()}"
            self._roll_back(epoch, reason, only=failure.slot, failure=failure)
            return
        self._failed_epochs += 1
        kept, spent = self.failures.state_dict(), self.history
        loaded = self.restore_last_good()
        if loaded is not None:
            self.failures.load_state_dict(kept)  # what happened since the checkpoint still happened
            self._keep_compute(spent)
        stops = loaded is None or self._failed_epochs >= run.tolaria.failed_epochs_to_stop
        if loaded is None:
            consequence = "the run stops: it has no checkpoint to go back to yet"
        elif stops:
            consequence = (
                f"the run stops at its checkpoint of epoch {self.history.epoch} after {self._failed_epochs} failed "
                "epochs in a row"
            )
        else:
            consequence = f"epoch {epoch} is trained again from the checkpoint of epoch {self.history.epoch}"
        reported = self._plugin_failed(failure, consequence, counts=False)  # after the restore: it stays recorded
        if loaded is not None:
            self.checkpoint()  # the counts and the record up to here survive a resume
        if not stops:
            return
        then = (
            f"continue with: esper run --resume {run.run_dir}"
            if loaded is not None
            else f"start the run again (remove {run.run_dir} or choose another run.name)"
        )
        raise RunError(
            f"epoch {epoch}: {failure.plugin} from {reported.origin.described} raised {failure.describe()} in "
            f"{failure.during}; {consequence}. Traceback: {run.run_dir / reported.traceback_file}. Fix the plugin, "
            f"then {then}"
        )

    def _keep_compute(self, spent: History) -> None:
        """After going back to a checkpoint: the compute of the work thrown away was spent all the same."""
        history = self.history
        history.training_flops, history.validation_flops, history.measurement_flops = (
            spent.training_flops, spent.validation_flops, spent.measurement_flops
        )  # fmt: skip

    # -- rollback ---------------------------------------------------------------------------------------------
    def _divergence(self, stats: EpochStats) -> str | None:
        if not math.isfinite(stats.train_loss):
            return f"the training loss is {stats.train_loss}"
        previous = self.history.train_losses[-1] if self.history.train_losses else None
        factor = self.run.tolaria.loss_spike_factor
        if previous is not None and stats.train_loss > factor * previous:
            return f"the training loss spiked to {stats.train_loss:.4g} (> {factor} x {previous:.4g})"
        return None

    def _roll_back(
        self, epoch: int, reason: str, *, only: str | None = None, failure: PluginFailure | None = None
    ) -> None:
        """Back to the last checkpoint, culling the seeds that were in the forward pass (``only``: that slot's).

        ``failure``: the plugin exception that caused it (a seed module's), written down after the restore.
        """
        run = self.run
        # In the forward pass and still removable (a fossilized seed is part of the host now).
        blamed = [
            s for s in run.executor.export_seed_states()
            if s.stage in lifecycle.IN_FORWARD & lifecycle.IN_FLIGHT and only in (None, s.slot_id)
        ]  # fmt: skip
        if self.history.rollbacks >= run.tolaria.max_rollbacks:
            if failure is not None:
                self._plugin_failed(failure, "the run stops: it has rolled back too often", counts=False)
            raise RunError(
                f"epoch {epoch}: {reason}, and the run has already rolled back {self.history.rollbacks} "
                "times; it stops here (raise tolaria.max_rollbacks, or lower the learning rate)"
            )
        spent = self.history  # the compute of the epoch thrown away was spent all the same
        kept = self.failures.state_dict()  # and plugin failures since the checkpoint still happened
        tier = self.restore_last_good()
        if tier is None:
            if failure is not None:
                self._plugin_failed(failure, "the run stops: it has no checkpoint to roll back to yet", counts=False)
            raise RunError(f"epoch {epoch}: {reason}, and there is no checkpoint to roll back to")
        self.failures.load_state_dict(kept)
        self._keep_compute(spent)
        history = self.history  # the restored one: restore replaces the object
        if failure is not None:
            self._plugin_failed(failure, "the run rolls back to its last checkpoint and culls that seed", counts=False)
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
            "rollback", epoch=epoch, to_epoch=history.epoch, reason=reason, culled=culled, responsible=responsible,
            tier=tier,
        )  # fmt: skip
        self.recorder.transitions(epoch, run.executor.drain_events())
        self.recorder.publish(
            history,
            [Event("rollback", f"epoch {epoch}: {reason}; culled {culled or 'none'}", ERROR)],
            metrics=[Metric("tolaria.rollback.restore_ms", self.last_restore_ms, "ms", {"tier": tier})],
        )
        self._emergency(self.ladder.signal(ELEVATED, f"rollback: {reason}", "tolaria"), epoch)
        if self.ranks.distributed:  # the followers take the state the leader came back to, culls and all
            self._replicate_state()
        # Overwrite the checkpoint we came back to with what we have now: the culls, the rollback count and the
        # record entries above survive the next rollback or a resume (or the same seed would return with them).
        self.checkpoint()

    # -- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        run = self.run
        if self.ranks.distributed:  # every rank's RNG, so that a resume continues each rank exactly
            self._rank_rng = self.ranks.gather(rng_state(), "gathering the ranks' RNG states for a checkpoint")
            if not self.ranks.leads:
                return
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
            "plugin_failures": self.failures.state_dict(),
            "emergency": self.ladder.state_dict(),
            "step": self.step.state_dict(),
            "record_bytes": run.record.end_offset,
        }
        if self._rank_rng is not None:
            state["rank_rng"] = self._rank_rng
        save_checkpoint(run.run_dir, self.history.epoch, state, run.tolaria.keep_checkpoints)
        self._snapshot = MemorySnapshot.take(state, int(run.tolaria.fast_rollback_max_mb * 2**20))

    def restore_last_good(self) -> str | None:
        """Back to the newest checkpoint, from memory when the snapshot is still good (the fast tier), else from disk
        (:meth:`restore_latest`). Returns the tier that restored, ``"memory"`` or ``"disk"``; None: no checkpoint."""
        snapshot = self._snapshot
        if snapshot is not None and self.run.record.check_before(int(snapshot.held["record_bytes"])) is None:
            started = time.perf_counter()
            self.restore(snapshot.state())
            self.last_restore_ms = (time.perf_counter() - started) * 1000.0
            return "memory"
        started = time.perf_counter()
        loaded = self.restore_latest()
        self.last_restore_ms = (time.perf_counter() - started) * 1000.0
        return None if loaded is None else "disk"

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
            # The snapshot first: restoring may keep references into the loaded state, which the run then changes.
            self._snapshot = MemorySnapshot.take(loaded.state, int(self.run.tolaria.fast_rollback_max_mb * 2**20))
            self.restore(loaded.state)
        return loaded

    def restore(self, state: dict[str, Any]) -> None:
        run = self.run
        run.model.load_state_dict(state["model"])
        run.executor.load_state_dict(state["executor"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.controller.load_state_dict(state["controller"])
        restore_rng(state["rng"])
        self._rank_rng = state.get("rank_rng")
        self.history = History(**state["history"])
        self._step_cost = None  # the restored seeds may differ: count again before training
        # Checkpoints written before the recorder existed hold its counters at the top level.
        self.recorder.load_state_dict(
            state.get("recorder") or {"decisions": state["decisions"], "culled": state["culled"]}
        )
        self.failures.load_state_dict(state.get("plugin_failures", {}))
        self.ladder.load_state_dict(state.get("emergency", {}))
        self.step.load_state_dict(state.get("step", {}))
        if "record_bytes" in state:
            run.record.cut_to(int(state["record_bytes"]))
        else:  # written before positions were byte offsets
            run.record.truncate(int(state["record_length"]))
        self._running_since = self.clock()

    # -- the end ----------------------------------------------------------------------------------------------
    def finish(self) -> Summary:
        run = self.run
        seeds = run.executor.export_seed_states()
        self.ranks.align_buffers(run.model, self._optimized_parameters(), "aligning the buffers at the end")
        validation = self.evaluate(run.data.val, 512)
        # The run's compute with the final passes (not kept in the history: a resumed finished run does them again).
        compute = attrs.evolve(self.history)
        compute.add_evaluation(validation)
        test_loss = test_accuracy = None
        if run.data.test is not None:
            test = self.evaluate(run.data.test, 512)
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
            plugin_errors={key: dict(by_type) for key, by_type in sorted(self.failures.counts.items())},
            quarantined=sorted(self.failures.quarantined),
        )
        if self.ranks.distributed:
            self._check_replicas("the end of the run")
            if not self.ranks.leads:
                return summary
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
        self.recorder.close_sinks()
        run.controller.close()
        run.record.close()
        if hasattr(run.store, "close"):
            run.store.close()
        run.bus.close()


def _decision_points(count: int) -> str:
    return "decision point" if count == 1 else f"{count} decision points"


def _module_of(component: Any) -> str:
    """The module of a component's own class (seen through its guard): where its distribution is looked up."""
    return type(unguarded(component)).__module__


def _noop(rationale: str) -> AdaptationCommand:
    return AdaptationCommand(
        version=1, command_type=CommandType.COMMAND_NOOP, issued_by="tolaria",
        decision=DecisionMetadata(policy_name="tolaria", rationale=rationale),
    )  # fmt: skip
