"""Kasmina: owns the seed slots of one host and carries out the controller's commands, safely.

Per run, Tolaria uses it like this::

    kasmina.attach(model, slot_points, example_input)   # DORMANT slots; host output bit-identical
    kasmina.bind_optimizer(optimizer)                    # seeds join as their own parameter groups
    kasmina.set_probe(inputs, targets, loss_fn)          # a fixed batch for gate measurements
    ...train an epoch (Kasmina does nothing per batch but what a seed in the forward pass does)...
    evaluation = kasmina.evaluate(val_batches, loss_fn, correct_fn)   # validation + every contribution, fused
    kasmina.decision_point(epoch, global_step)           # ages, embargoes, watchdog gates, slot statistics
    state.seeds.extend(kasmina.export_seed_states())
    result = kasmina.apply(controller.decide(state))     # verify, check legality and gates, execute

Besides seed operations, Kasmina carries out two commands of the emergency protocol (docs/kasmina.md, "Pause and
emergency"): COMMAND_PAUSE with its payload pauses or resumes one seed (held in place: stage, output, parameters,
optimizer state and alpha), and COMMAND_EMERGENCY culls every seed that is not fossilized, at once.

A command that cannot be verified, is illegal for the slot's stage, or fails a gate changes nothing it should not:
an unverifiable or illegal one changes nothing at all; a failed gate culls the seed and says why.

A plugin that raises while a command is carried out (the artifact store or a catalog building the seed, the task's
loss in a gate's probe, a seed module's forward) is handled so that the slot is left consistent:

- a fetch that raises is a failed G0 check (``artifact_fetch``): the germination is refused, nothing changed. When
  the exception was a plugin's (esper_core.plugin_failures marks it), it is also kept for Tolaria, which drains it
  (``drain_plugin_failures``), writes it down and quarantines a blueprint whose build raised;
- anything else that raises part way through a command puts the slot back as it was before the command (its
  record, seed module, alpha and optimizer group; a group that had to be re-added starts its optimizer state over)
  and drops the transitions the command had made, then re-raises for Tolaria to report: the command failed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.breaker import CircuitBreaker
from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    CircuitBreakerState,
    CommandResult,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    EmergencyLevel,
    GateResult,
    SeedLifecycleEvent,
    SeedOperation,
    SeedState,
    TelemetryPacket,
    lifecycle,
    value_name,
)
from esper_core.leyline.lifecycle import Stage
from esper_core.plugin_failures import PluginFailure, failure_of
from esper_core.protocols import ArtifactStore, BlueprintCatalog, EvaluationShard
from esper_core.signing import CommandVerifier
from esper_core.telemetry import ERROR, INFO, WARNING, Event, Level, Metric, build_telemetry_packet
from esper_kasmina import growth_statistics, probes, schedules
from esper_kasmina.evaluation import CorrectFn, Evaluation, FlopsCache, LossFn, evaluate
from esper_kasmina.gates import GateChecks, describe, first_failure, passed
from esper_kasmina.host import SlotBank, attach_slots, host_parameters
from esper_kasmina.optimizer import SeedParameterGroups
from esper_kasmina.options import KasminaOptions
from esper_kasmina.probes import Probe
from esper_kasmina.slot import SeedRecord, SeedSlot

Status = CommandStatus.ValueType


class KasminaError(RuntimeError):
    """Kasmina was used out of order (no host attached, no probe set)."""


class KasminaSeedExecutor:
    def __init__(
        self,
        *,
        store: ArtifactStore,
        catalogs: Sequence[BlueprintCatalog],
        verifier: CommandVerifier,
        options: KasminaOptions | None = None,
        allowed_tiers: Sequence[str] = ("SAFE",),
        gates: GateChecks | None = None,
        bus: Any = None,
        training_run_id: str = "",
    ) -> None:
        self.options = options or KasminaOptions()
        self.store = store
        self.catalogs = list(catalogs)
        self.verifier = verifier
        self.allowed_tiers = list(allowed_tiers)
        self.gates = gates or GateChecks(self.options)
        self.bus = bus
        self.training_run_id = training_run_id
        self.groups = SeedParameterGroups()
        self.fetch_breaker = CircuitBreaker("kasmina.fetch", failure_threshold=3, open_timeout_s=60.0)
        self.model: nn.Module | None = None
        self.bank: SlotBank | None = None
        self.probe: Probe | None = None
        self.epoch = 0
        self.global_step = 0
        self.last_evaluation: Evaluation | None = None
        #: The counted FLOPs per sample of an evaluation pass, per configuration of seeds (counted once each).
        self._flops_cache: FlopsCache = {}
        #: Validation losses at this and at the previous decision point (the G2 loss-spike check compares them).
        self.last_loss: float | None = None
        self.previous_loss: float | None = None
        self._events: list[SeedLifecycleEvent] = []
        self._telemetry: list[TelemetryPacket] = []
        self._pending: list[Event] = []
        #: Plugins' exceptions caught while carrying out commands, until Tolaria drains them.
        self._plugin_failures: list[PluginFailure] = []
        self.counters = {"commands": 0, "rejected_security": 0, "rejected_illegal": 0, "gate_failures": 0, "culls": 0}

    # -- setup ------------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, slot_points: Sequence[str], example_input: Any) -> SlotBank:
        """Put DORMANT slots at ``slot_points`` in ``model`` (inferring each slot's shape with one probe forward)."""
        self.bank = attach_slots(model, slot_points, example_input, self._rebuild_seed)
        for slot in self.bank.ordered():
            slot.training_curvature = self.options.training_curvature
        self.model = model
        return self.bank

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.groups.bind(optimizer)

    def set_probe(self, inputs: Any, targets: Any, loss_fn: LossFn) -> None:
        """The batch gate measurements use; keep it small (tens of samples) and fixed for reproducible gates."""
        self.probe = Probe(inputs, targets, loss_fn)

    @property
    def slots(self) -> list[SeedSlot]:
        return [] if self.bank is None else self.bank.ordered()

    def host_parameters(self) -> list[nn.Parameter]:
        return host_parameters(self._model())

    def _model(self) -> nn.Module:
        if self.model is None or self.bank is None:
            raise KasminaError("no host attached: call kasmina.attach(model, slot_points, example_input) first")
        return self.model

    def _probe(self) -> Probe:
        if self.probe is None:
            raise KasminaError("no probe batch: call kasmina.set_probe(inputs, targets, loss_fn) first")
        return self.probe

    def _device(self) -> torch.device:
        return next((p.device for p in self._model().parameters()), torch.device("cpu"))

    # -- blueprints -------------------------------------------------------------------------------------------
    def find_blueprint(self, blueprint_id: str) -> tuple[BlueprintCatalog, BlueprintDescriptor] | None:
        for catalog in self.catalogs:
            for descriptor in catalog.descriptors():
                if descriptor.blueprint_id == blueprint_id:
                    return catalog, descriptor
        return None

    def _fetch(self, slot: SeedSlot, blueprint_id: str, parameters: Mapping[str, float]) -> nn.Module:
        shape = slot.shape()
        fetched = self.fetch_breaker.call(lambda: self.store.fetch(blueprint_id, shape, parameters))
        module: nn.Module = fetched.module
        return module.to(self._device())

    def _rebuild_seed(self, slot: SeedSlot, blueprint_id: str, parameters: Mapping[str, float]) -> nn.Module:
        return self._fetch(slot, blueprint_id, parameters)

    # -- decision points --------------------------------------------------------------------------------------
    def evaluate(
        self,
        batches: Iterable[tuple[Any, Any]],
        loss_fn: LossFn,
        correct_fn: CorrectFn,
        *,
        shard: EvaluationShard | None = None,
    ) -> Evaluation:
        """Validation of the host with every measured seed's counterfactual contribution (one fused pass); with
        ``shard``, this process's share of the batches, gathered (every process gets the same evaluation)."""
        if len(self._flops_cache) > 64:  # configurations of seeds come and go; a few are live at a time
            self._flops_cache.clear()
        result = evaluate(
            self._model(),
            self.slots,
            batches,
            loss_fn,
            correct_fn,
            self._flops_cache,
            self.options.max_measurement_passes,
            shard,
        )
        self.previous_loss, self.last_loss = self.last_loss, result.loss
        self.last_evaluation = result
        for slot in self.slots:
            measurement = result.seeds.get(slot.slot_id)
            if measurement is None:
                continue
            record = slot.record
            if record.seed_loss is not None:
                record.seed_loss_delta = measurement.loss_on - record.seed_loss
            record.seed_loss = measurement.loss_on
            record.contribution = measurement.contribution
            record.contribution_accuracy = measurement.contribution_accuracy
            record.contribution_stderr = measurement.contribution_stderr
            if slot.stage == lifecycle.TRAINING and record.seed_loss_at_training_start is None:
                record.seed_loss_at_training_start = measurement.loss_on
            record.measured_in_stage = True
        return result

    def decision_point(self, epoch: int, global_step: int) -> list[SeedLifecycleEvent]:
        """Advance ages and embargoes, run the watchdog gates, refresh slot statistics; return the transitions."""
        self.epoch, self.global_step = epoch, global_step
        before = len(self._events)
        model, probe = self._model(), self._probe()
        host = self.host_parameters()
        for slot in self.slots:
            record = slot.record
            if slot.stage in lifecycle.HAS_SEED:
                record.age += 1
            if not record.paused:  # a paused seed's lifecycle waits: its stage clock and its alpha are held
                record.stage_age += 1
            if slot.stage == lifecycle.BLENDING and record.alpha_per_epoch and not record.paused:
                slot.alpha_steps.add_(1)
            if slot.stage == lifecycle.EMBARGOED:
                record.embargo_remaining = max(record.embargo_remaining - 1, 0)
                if record.embargo_remaining == 0:
                    self._reset(slot, reason="embargo over")
            elif slot.stage in lifecycle.IN_FLIGHT and slot.hooked and not record.paused:
                results = self.gates.watchdog(model, slot, host, probe)
                _count_isolation_failures(slot, results)
                if not passed(results):
                    failure = first_failure(results)
                    assert failure is not None
                    self._cull(slot, f"watchdog: {describe(failure)}", results, cause="watchdog")
        # One probe pass for every slot's statistics and every seed's gradient norm (not one more per seed). A paused
        # seed's parameters take no gradient: its last gradient norm stays in its state.
        seeds = [s for s in self.slots if s.hooked and s.stage in lifecycle.IN_FLIGHT and not s.record.paused]
        statistics = probes.slot_statistics(model, self.slots, probe, seeds)
        for slot in self.slots:
            stats = statistics.get(slot.slot_id)
            if stats is not None:
                slot.record.activation_rms = stats.activation_rms
                slot.record.host_gradient_norm = stats.gradient_norm
                if slot.stage == lifecycle.DORMANT and stats.read is not None and stats.write_gradient is not None:
                    found = growth_statistics.moments(stats.read, stats.write_gradient, slot.shape())
                    slot.record.predicted_decrease = (
                        None if found is None else growth_statistics.predicted_decrease(found)
                    )
            if slot in seeds:
                norm = None if stats is None else stats.seed_gradient_norm
                if norm is None:  # its slot point did not run in the probe pass: measure it on its own
                    norm = probes.seed_health(model, slot, probe).gradient_norm
                slot.record.gradient_norm = norm
        self._flush_telemetry()
        return self._events[before:]

    def export_seed_states(self) -> list[SeedState]:
        """The Leyline state of every slot, dormant ones included."""
        states = []
        for slot in self.slots:
            record = slot.record
            state = SeedState(
                slot_id=slot.slot_id,
                seed_id=record.seed_id,
                stage=record.stage,
                blueprint_id=record.blueprint_id,
                blueprint_parameters=record.parameters,
                slot_kind=slot.slot_kind,
                slot_shape=list(slot.slot_shape),
                read_kind=slot.read_kind,
                read_shape=list(slot.read_shape),
                layer_depth=slot.layer_depth,
                alpha=slot.alpha(),
                alpha_steps=int(slot.alpha_steps.item()) if slot.stage in lifecycle.HAS_SEED else 0,
                alpha_total_steps=record.alpha_total,
                blend_schedule=record.schedule if slot.stage in lifecycle.HAS_SEED else schedules.UNSPECIFIED,
                age_epochs=record.age,
                stage_epochs=record.stage_age,
                risk_score=record.risk,
                parameter_count=record.parameter_count,
                isolation_violations=record.isolation_violations,
                embargo_epochs_remaining=record.embargo_remaining,
                paused=record.paused,
            )
            for name in (
                "gradient_norm",
                "contribution",
                "contribution_accuracy",
                "contribution_stderr",
                "activation_rms",
                "host_gradient_norm",
                "seed_loss_delta",
            ):
                value = getattr(record, name)
                if value is not None:
                    setattr(state, name, value)
            if slot.stage in lifecycle.HAS_SEED and record.learning_rate:
                state.learning_rate = record.learning_rate
            if slot.stage == lifecycle.DORMANT and record.predicted_decrease is not None:
                state.candidate_widths.extend(growth_statistics.CANDIDATE_WIDTHS)
                state.predicted_loss_decrease.extend(record.predicted_decrease)
            states.append(state)
        return states

    # -- commands ---------------------------------------------------------------------------------------------
    def apply(self, command: AdaptationCommand) -> CommandResult:
        """Verify and carry out ``command``; the result says what happened and why."""
        start = time.perf_counter()
        self.counters["commands"] += 1
        result = CommandResult(command_id=command.command_id, slot_id=command.target_slot_id)
        verdict = self.verifier.verify(command)
        if not verdict.accepted:
            self.counters["rejected_security"] += 1
            result.status = CommandStatus.COMMAND_STATUS_REJECTED_SECURITY
            result.security_reason = verdict.reason
            result.detail = f"{verdict.reason_name}: {verdict.detail}"
            self._note(
                "command_rejected", result.detail, ERROR, command_id=command.command_id, reason=verdict.reason_name
            )
        else:
            self._dispatch_or_restore(command, result)
        result.apply_latency_ms = (time.perf_counter() - start) * 1000.0
        self._flush_telemetry()
        return result

    def _dispatch_or_restore(self, command: AdaptationCommand, result: CommandResult) -> None:
        """Carry the command out; if anything raises part way, put the slots it touches (the target slot; every slot
        for an emergency) back as they were and re-raise."""
        if command.command_type == CommandType.COMMAND_EMERGENCY:
            touched = self.slots
        else:
            slot = self.bank.get(command.target_slot_id) if self.bank is not None else None
            touched = [] if slot is None else [slot]
        befores = [(slot, _SlotBefore.of(slot, self.groups)) for slot in touched]
        events, notes, counters = len(self._events), len(self._pending), dict(self.counters)
        try:
            self._dispatch(command, result)
        except Exception:
            for slot, before in befores:
                before.restore(slot, self.groups, self.options.seed_weight_decay)
            # What it did is undone, so it is not reported either (the command itself stays counted).
            del self._events[events:]
            del self._pending[notes:]
            self.counters.update({name: value for name, value in counters.items() if name != "commands"})
            raise

    def drain_plugin_failures(self) -> list[PluginFailure]:
        """Plugins' exceptions caught since the last call, oldest first (esper_core.plugin_failures)."""
        failures, self._plugin_failures = self._plugin_failures, []
        return failures

    def _dispatch(self, command: AdaptationCommand, result: CommandResult) -> None:
        kind = command.command_type
        payload = command.WhichOneof("payload")
        if kind == CommandType.COMMAND_PAUSE and payload == "pause":
            self._pause(command, result)
        elif kind in (CommandType.COMMAND_NOOP, CommandType.COMMAND_PAUSE):
            result.status = CommandStatus.COMMAND_STATUS_NOOP
            result.detail = "nothing to do at this decision point"
        elif kind == CommandType.COMMAND_EMERGENCY and payload == "emergency":
            self._emergency(command, result)
        elif kind == CommandType.COMMAND_EMERGENCY:
            # Like a COMMAND_SEED without its payload: the command does not say what to do, so it is not carried out.
            result.status = CommandStatus.COMMAND_STATUS_UNSUPPORTED
            result.detail = "COMMAND_EMERGENCY needs its emergency payload; nothing was removed"
        elif kind == CommandType.COMMAND_CIRCUIT_BREAKER and command.WhichOneof("payload") == "circuit_breaker":
            self._force_breaker(command, result)
        elif kind == CommandType.COMMAND_SEED and command.WhichOneof("payload") == "seed_operation":
            self._seed_operation(command, result)
        else:
            result.status = CommandStatus.COMMAND_STATUS_UNSUPPORTED
            result.detail = f"Kasmina does not carry out {value_name(CommandType, kind)} commands (Tolaria owns those)"

    def _force_breaker(self, command: AdaptationCommand, result: CommandResult) -> None:
        desired = command.circuit_breaker.desired_state
        if desired == CircuitBreakerState.CIRCUIT_STATE_CLOSED:
            self.fetch_breaker.force(desired, command.circuit_breaker.rationale)
            self.fetch_breaker.release()
        else:
            self.fetch_breaker.force(desired, command.circuit_breaker.rationale)
        result.status = CommandStatus.COMMAND_STATUS_APPLIED
        result.detail = f"fetch breaker {value_name(CircuitBreakerState, desired)}"

    def _target_slot(self, command: AdaptationCommand, result: CommandResult) -> SeedSlot | None:
        """The command's target slot, or None with the command refused as illegal (naming the slots there are)."""
        self._model()
        slot = self.bank.get(command.target_slot_id) if self.bank is not None else None
        if slot is None:
            names = ", ".join(s.slot_id for s in self.slots)
            self._illegal(result, f"no slot {command.target_slot_id!r}; the slots are: {names}")
        return slot

    def _pause(self, command: AdaptationCommand, result: CommandResult) -> None:
        """Pause or resume the target slot's seed. Not a lifecycle transition (the stage stays): it is recorded as a
        ``seed_paused`` / ``seed_resumed`` telemetry event and in ``SeedState.paused``."""
        slot = self._target_slot(command, result)
        if slot is None:
            return
        result.stage_before = result.stage_after = slot.stage
        resume, reason = command.pause.resume, command.pause.reason
        verb = "resume" if resume else "pause"
        stage = lifecycle.stage_name(slot.stage)
        if slot.stage not in lifecycle.IN_FLIGHT:
            what = "is part of the host" if slot.stage == lifecycle.FOSSILIZED else "has no seed"
            self._illegal(result, f"cannot {verb} slot {slot.slot_id!r}: it is {stage} and {what}")
            return
        if slot.record.paused != resume:
            state = "already paused" if slot.record.paused else "not paused"
            self._illegal(result, f"cannot {verb} the seed in slot {slot.slot_id!r}: it is {state}")
            return
        slot.record.paused = not resume
        slot.sync_hook()
        result.status = CommandStatus.COMMAND_STATUS_APPLIED
        result.detail = f"seed {slot.record.seed_id} {verb}d in {stage}" + (f": {reason}" if reason else "")
        self._note(
            "seed_resumed" if resume else "seed_paused",
            f"{slot.slot_id}: {result.detail}",
            slot=slot.slot_id,
            stage=stage,
            command_id=command.command_id,
        )

    def _emergency(self, command: AdaptationCommand, result: CommandResult) -> None:
        """Cull every seed that is not fossilized (paused or not), each exactly as a commanded cull."""
        self._model()
        level = value_name(EmergencyLevel, command.emergency.level)
        reason = f"emergency: {command.emergency.reason or level}"
        culled = []
        before = len(self._events)
        for slot in self.slots:
            if slot.stage in lifecycle.IN_FLIGHT:
                self._cull(slot, reason, [], command.command_id, cause="emergency")
                culled.append(slot.slot_id)
        result.status = CommandStatus.COMMAND_STATUS_APPLIED
        result.detail = f"culled: {', '.join(culled)}" if culled else "nothing to remove"
        result.transitions.extend(self._events[before:])
        self._note(
            "emergency",
            f"{reason} ({level}); {result.detail}",
            ERROR,
            emergency_level=level,
            culled=", ".join(culled),
            command_id=command.command_id,
        )

    def _illegal(self, result: CommandResult, detail: str) -> None:
        self.counters["rejected_illegal"] += 1
        result.status = CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL
        result.detail = detail
        self._note("command_rejected", detail, WARNING, command_id=result.command_id, reason="illegal")

    def _seed_operation(self, command: AdaptationCommand, result: CommandResult) -> None:
        operation = command.seed_operation.operation
        slot = self._target_slot(command, result)
        if slot is None:
            return
        result.stage_before = slot.stage
        before = len(self._events)
        if operation == SeedOperation.SEED_OP_GERMINATE:
            self._germinate(slot, command, result)
        elif operation in lifecycle.ADVANCES:
            self._advance(slot, command, result)
        elif operation in lifecycle.REMOVALS:
            if slot.stage not in lifecycle.IN_FLIGHT:
                self._illegal(
                    result,
                    f"slot {slot.slot_id!r} is {lifecycle.stage_name(slot.stage)}; only an active seed can be culled",
                )
            else:
                self._cull(slot, "commanded", [], command.command_id, cause="commanded")
                result.status = CommandStatus.COMMAND_STATUS_APPLIED
        elif operation == SeedOperation.SEED_OP_FINE_TUNE:
            self._fine_tune(slot, command, result)
        else:
            # An operation this Kasmina does not carry out, or a value from a newer Leyline it does not know.
            result.status = CommandStatus.COMMAND_STATUS_UNSUPPORTED
            result.detail = f"SEED_OP_{lifecycle.operation_name(operation)} is not a seed operation Kasmina carries out"
        result.stage_after = slot.stage
        result.transitions.extend(self._events[before:])

    def _germinate(self, slot: SeedSlot, command: AdaptationCommand, result: CommandResult) -> None:
        operation = command.seed_operation
        if slot.stage != lifecycle.DORMANT:
            self._illegal(
                result, f"slot {slot.slot_id!r} is {lifecycle.stage_name(slot.stage)}; germination needs DORMANT"
            )
            return
        malformed = _bad_learning_rate(operation, "GERMINATE") or _bad_parameters(operation)
        if malformed:
            self._illegal(result, malformed)
            return
        found = self.find_blueprint(operation.blueprint_id)
        catalog, descriptor = found if found is not None else (None, None)
        parameters = dict(operation.parameters)
        count = None
        if catalog is not None:
            try:
                count = catalog.parameter_count(operation.blueprint_id, slot.shape(), parameters)
            except (KeyError, ValueError):
                count = None
        host_count = sum(p.numel() for p in self.host_parameters())
        checks = self.gates.admission(
            slot, descriptor, operation.blueprint_id, parameters, self.allowed_tiers, count, host_count
        )
        module = None
        if passed(checks):
            try:
                module = self._fetch(slot, operation.blueprint_id, parameters)
            except Exception as error:  # noqa: BLE001 - a fetch failure is a failed G0 check, reported
                checks.append(_fetch_failure(error))
                crash = failure_of(error)  # a plugin's crash (a catalog's build), not a refusal with a reason
                if crash is not None:
                    self._plugin_failures.append(crash)
            if module is not None:
                checks += self.gates.probe_output(self._model(), slot, module, self._probe())
        result.gates.extend(checks)
        if not passed(checks):
            failure = first_failure(checks)
            assert failure is not None
            self.counters["gate_failures"] += 1
            result.status = CommandStatus.COMMAND_STATUS_REJECTED_GATE
            result.detail = f"germination refused: {describe(failure)}"
            self._note("gate_failure", result.detail, WARNING, slot=slot.slot_id, gate="G0", check=failure.check)
            return
        assert module is not None and descriptor is not None
        record = slot.record
        record.germinations += 1
        record.seed_id = f"{slot.slot_id}#{record.germinations}"
        record.blueprint_id = operation.blueprint_id
        record.parameters = {name: float(value) for name, value in parameters.items()}
        record.risk = descriptor.risk
        record.schedule = operation.blend_schedule or schedules.BY_NAME[self.options.blend_schedule]
        record.alpha_total = (
            operation.alpha_total_steps if operation.HasField("alpha_total_steps") else self.options.blend_steps
        )
        record.alpha_per_epoch = self.options.alpha_unit == "epoch"
        record.learning_rate = (
            operation.learning_rate
            if operation.HasField("learning_rate")
            else self.options.seed_learning_rate or self.groups.host_learning_rate()
        )
        record.age = 0
        record.val_loss_at_germination = self.last_evaluation.loss if self.last_evaluation else None
        record.predicted_decrease = None
        reason = f"germinated {descriptor.name}"
        if slot.is_width and self.options.width_init != "zero":
            reason += f"; {self._initialise_width(slot, module).describe()}"
        slot.install_seed(module)
        record.parameter_count = sum(p.numel() for p in slot.seed_parameters())
        self.groups.add(slot.slot_id, slot.seed_parameters(), record.learning_rate, self.options.seed_weight_decay)
        self._move(slot, lifecycle.GERMINATED, reason, checks, command.command_id)
        result.status = CommandStatus.COMMAND_STATUS_APPLIED

    def _initialise_width(self, slot: SeedSlot, module: nn.Module) -> growth_statistics.Initialised:
        """Start a width seed's new units from the host's statistics on the probe batch (one probe pass, and one
        probe forward per line-search scale; once per germination)."""
        model, probe = self._model(), self._probe()
        read, gradient = probes.read_and_gradient(model, slot, probe)
        return growth_statistics.initialise(
            module,
            slot.shape(),
            read,
            gradient,
            lambda: probes.loss_with_seed(model, slot, module, probe),
            self.options.width_init,
        )

    def _advance(self, slot: SeedSlot, command: AdaptationCommand, result: CommandResult) -> None:
        operation = command.seed_operation.operation
        source, target = lifecycle.ADVANCES[operation]
        name = lifecycle.operation_name(operation)
        if slot.record.paused:  # its lifecycle waits: no gate is run for a move it is not to make yet
            self._illegal(result, f"{name}: the seed in slot {slot.slot_id!r} is paused; resume it first")
            return
        if slot.stage != source:
            self._illegal(
                result,
                f"{name} needs slot {slot.slot_id!r} in {lifecycle.stage_name(source)}, "
                f"but it is {lifecycle.stage_name(slot.stage)}",
            )
            return
        if slot.stage in lifecycle.MEASURED and not slot.record.measured_in_stage:
            self._illegal(
                result,
                f"no validation measurement of {slot.slot_id!r} since it entered "
                f"{lifecycle.stage_name(slot.stage)}; advance after the next decision point",
            )
            return
        if target == lifecycle.SHADOWING and not slot.ramp_complete():
            steps = int(slot.alpha_steps.item())
            self._illegal(
                result, f"blending of {slot.slot_id!r} is not finished ({steps}/{slot.record.alpha_total} steps)"
            )
            return
        checks = self._entry_gate(slot, target)
        result.gates.extend(checks)
        if not passed(checks):
            failure = first_failure(checks)
            assert failure is not None
            self.counters["gate_failures"] += 1
            result.status = CommandStatus.COMMAND_STATUS_REJECTED_GATE
            result.detail = f"{describe(failure)}; seed culled"
            self._cull(slot, f"failed {describe(failure)}", checks, command.command_id, cause="gate")
            return
        if target in (lifecycle.TRAINING, lifecycle.BLENDING):
            slot.alpha_steps.zero_()
        self._move(slot, target, f"{name.lower()}", checks, command.command_id)
        result.status = CommandStatus.COMMAND_STATUS_APPLIED

    def _entry_gate(self, slot: SeedSlot, target: Stage) -> list[GateResult]:
        model, probe, host = self._model(), self._probe(), self.host_parameters()
        if target == lifecycle.TRAINING:
            with probes.as_stage(slot, lifecycle.TRAINING):
                results = self.gates.training_entry(model, slot, host, probe)
            _count_isolation_failures(slot, results)
            return results
        if target == lifecycle.BLENDING:
            loss = self.last_evaluation.loss if self.last_evaluation else None
            return self.gates.blending_entry(model, slot, probe, loss, self.previous_loss)
        if target == lifecycle.SHADOWING:
            return self.gates.shadowing_entry(model, slot, probe)
        if target == lifecycle.PROBATIONARY:
            loss = self.last_evaluation.loss if self.last_evaluation else None
            # The step's cost is that of everything it trains: the host and the other seeds in the forward pass.
            others = [
                p
                for other in self.slots
                if other is not slot and other.hooked and not other.record.paused  # a paused seed is not trained
                for p in other.seed_parameters()
            ]
            return self.gates.probation_entry(model, slot, [*host, *others], probe, loss)
        return []

    def _fine_tune(self, slot: SeedSlot, command: AdaptationCommand, result: CommandResult) -> None:
        if slot.stage not in lifecycle.HAS_SEED:
            self._illegal(result, f"slot {slot.slot_id!r} has no seed to fine-tune")
            return
        if not command.seed_operation.HasField("learning_rate"):
            self._illegal(result, "FINE_TUNE needs a learning_rate")
            return
        malformed = _bad_learning_rate(command.seed_operation, "FINE_TUNE")
        if malformed:
            self._illegal(result, malformed)
            return
        slot.record.learning_rate = command.seed_operation.learning_rate
        self.groups.set_learning_rate(slot.slot_id, slot.record.learning_rate)
        result.status = CommandStatus.COMMAND_STATUS_APPLIED
        result.detail = f"seed learning rate set to {slot.record.learning_rate:g}"

    # -- lifecycle moves --------------------------------------------------------------------------------------
    def _move(
        self,
        slot: SeedSlot,
        target: Stage,
        reason: str,
        gates: Sequence[GateResult] = (),
        command_id: str = "",
        **attributes: str,
    ) -> None:
        """Move the slot's seed to ``target``; the ``seed_transition`` event carries ``attributes`` beside the slot,
        blueprint and both stages (bounded values only: sinks turn them into labels)."""
        lifecycle.check_transition(slot.stage, target)
        event = SeedLifecycleEvent(
            slot_id=slot.slot_id,
            seed_id=slot.record.seed_id,
            blueprint_id=slot.record.blueprint_id,
            from_stage=slot.stage,
            to_stage=target,
            epoch=self.epoch,
            global_step=self.global_step,
            reason=reason,
            command_id=command_id,
            gates=list(gates),
        )
        event.timestamp.GetCurrentTime()
        slot.record.stage = target
        slot.record.stage_age = 0
        slot.record.measured_in_stage = False
        slot.sync_hook()
        self._events.append(event)
        source, destination = lifecycle.stage_name(event.from_stage), lifecycle.stage_name(target)
        labels = {"slot": slot.slot_id, "blueprint": event.blueprint_id, "from_stage": source, "stage": destination}
        description = f"{slot.slot_id}: {source} -> {destination} ({reason})"
        self._pending.append(Event(name="seed_transition", description=description, attributes=labels | attributes))

    def _cull(
        self, slot: SeedSlot, reason: str, gates: Sequence[GateResult], command_id: str = "", *, cause: str
    ) -> None:
        """Remove the seed. ``cause`` is one of ``gate`` (failed the gate of a commanded move), ``watchdog`` (failed a
        decision point's health check), ``commanded`` (the controller culled it) or ``emergency``."""
        self.counters["culls"] += 1
        self.groups.remove(slot.slot_id)
        slot.record.paused = False  # a paused seed is culled like any other; its frozen parameters go with it
        slot.remove_seed()
        slot.record.parameter_count = 0  # the module is gone; its blueprint id stays visible until the reset
        failed = [g for g in gates if not g.passed]
        gate = {"gate": lifecycle.gate_name(failed[0].gate)} if failed else {}
        self._move(slot, lifecycle.CULLED, reason, failed, command_id, cause=cause, **gate)
        slot.record.embargo_remaining = self.options.embargo_epochs
        self._move(slot, lifecycle.EMBARGOED, f"embargo for {self.options.embargo_epochs} decision points")
        if failed:
            self._note(
                "gate_failure",
                f"{slot.slot_id}: {reason}",
                WARNING,
                slot=slot.slot_id,
                gate=lifecycle.gate_name(failed[0].gate),
                check=failed[0].check,
            )
        if self.options.embargo_epochs == 0:
            self._reset(slot, reason="no embargo configured")

    def _reset(self, slot: SeedSlot, reason: str) -> None:
        self._move(slot, lifecycle.RESETTING, reason)
        slot.record.clear_seed()
        slot.record.stage = lifecycle.RESETTING
        slot.alpha_steps.zero_()
        checks = self.gates.reset(slot, self.groups)
        if not passed(checks):  # a leftover would be a bug in Kasmina: never germinate into an unclean slot
            failure = first_failure(checks)
            assert failure is not None
            raise KasminaError(f"slot {slot.slot_id!r} did not reset cleanly: {describe(failure)}")
        self._move(slot, lifecycle.DORMANT, "reset", checks)

    def terminate(self, slot_id: str) -> SeedLifecycleEvent:
        """Retire a DORMANT or FOSSILIZED slot for good (an administrative action, not a command)."""
        slot = self.bank.get(slot_id) if self.bank is not None else None
        if slot is None:
            raise KeyError(slot_id)
        self._move(slot, lifecycle.TERMINATED, "terminated")
        return self._events[-1]

    # -- events and telemetry ---------------------------------------------------------------------------------
    def drain_events(self) -> list[SeedLifecycleEvent]:
        events, self._events = self._events, []
        return events

    def drain_telemetry(self) -> list[TelemetryPacket]:
        packets, self._telemetry = self._telemetry, []
        return packets

    def _note(self, name: str, description: str, level: Level = INFO, **attributes: str) -> None:
        self._pending.append(Event(name=name, description=description, level=level, attributes=attributes))

    def _flush_telemetry(self) -> None:
        if not self._pending:
            return
        stages = [slot.stage for slot in self.slots]
        metrics = [
            Metric("kasmina.seeds.active", float(sum(s in lifecycle.IN_FLIGHT for s in stages))),
            Metric("kasmina.seeds.fossilized", float(stages.count(lifecycle.FOSSILIZED))),
            Metric("kasmina.seeds.dormant", float(stages.count(lifecycle.DORMANT))),
            *(Metric(f"kasmina.commands.{name}", float(value)) for name, value in self.counters.items()),
        ]
        packet = build_telemetry_packet(
            source="kasmina",
            metrics=metrics,
            events=self._pending,
            training_run_id=self.training_run_id,
            epoch=self.epoch,
            global_step=self.global_step,
        )
        self._pending = []
        if self.bus is not None:
            self.bus.publish(packet, priority=packet.priority)
        else:
            self._telemetry.append(packet)

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Kasmina's own state; the slots' state travels in the model's ``state_dict``."""
        return {
            "groups": self.groups.order(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "counters": dict(self.counters),
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore after ``model.load_state_dict`` and before ``optimizer.load_state_dict``: re-adds the seeds'
        parameter groups in their saved order, so the optimizer's state maps back onto them."""
        self.epoch = int(state.get("epoch", 0))
        self.global_step = int(state.get("global_step", 0))
        self.counters.update(state.get("counters", {}))
        last_loss = state.get("last_loss")
        self.last_loss = None if last_loss is None else float(last_loss)
        for slot_id in self.groups.order():  # a rollback into a live run: the old seeds' groups go first
            self.groups.remove(slot_id)
        for slot_id in state.get("groups", []):
            slot = self.bank.get(slot_id) if self.bank is not None else None
            if slot is None or slot.seed is None:
                raise KasminaError(f"the checkpoint has a parameter group for slot {slot_id!r}, which has no seed")
            self.groups.add(slot_id, slot.seed_parameters(), slot.record.learning_rate, self.options.seed_weight_decay)


def _bad_learning_rate(operation: CommandSeedOperation, name: str) -> str:
    """Why the operation's learning rate cannot go into an optimizer group, or "" if it can (or is absent).

    The command is signed, so it comes from a key holder, but a policy can still compute NaN: a NaN, infinite, zero
    or negative rate put into the seed's group would silently wreck (or freeze) the seed's training, so the command
    is refused as illegal and changes nothing.
    """
    if not operation.HasField("learning_rate"):
        return ""
    rate = operation.learning_rate
    if math.isfinite(rate) and rate > 0:
        return ""
    return f"{name} learning_rate must be a finite number above 0, got {rate}; the command changes nothing"


def _bad_parameters(operation: CommandSeedOperation) -> str:
    """The blueprint parameters that are not finite numbers, or "" when all are (their bounds are G0's to check)."""
    bad = {name: value for name, value in sorted(operation.parameters.items()) if not math.isfinite(value)}
    if not bad:
        return ""
    listed = ", ".join(f"{name} = {value}" for name, value in bad.items())
    return f"GERMINATE parameters must be finite numbers, got {listed}; the command changes nothing"


def _count_isolation_failures(slot: SeedSlot, results: list[GateResult]) -> None:
    """Count a failed isolation check on the slot (``SeedState.isolation_violations``, read by the risk engine),
    whether G1 found it on entry to TRAINING or the watchdog at a later decision point."""
    if any(result.check == "isolation" and not result.passed for result in results):
        slot.record.isolation_violations += 1


@attrs.frozen
class _SlotBefore:
    """A slot as it was before a command: enough to put it back if the command raises part way."""

    record: dict[str, Any]
    seed: nn.Module | None
    alpha_steps: int
    grouped: bool

    @classmethod
    def of(cls, slot: SeedSlot, groups: SeedParameterGroups) -> _SlotBefore:
        record = copy.deepcopy(slot.record.to_state())
        return cls(record, slot.seed, int(slot.alpha_steps.item()), groups.has(slot.slot_id))

    def restore(self, slot: SeedSlot, groups: SeedParameterGroups, weight_decay: float) -> None:
        """The slot, its seed, its hook and its optimizer group as they were. A group the command removed comes back
        with fresh optimizer state (its moments were deleted with it)."""
        same_seed = slot.seed is self.seed
        if groups.has(slot.slot_id) and not (self.grouped and same_seed):
            groups.remove(slot.slot_id)
        slot.seed = self.seed
        slot.record = SeedRecord.from_state(self.record)
        slot.alpha_steps.fill_(self.alpha_steps)
        if self.grouped and not groups.has(slot.slot_id):
            groups.add(slot.slot_id, slot.seed_parameters(), slot.record.learning_rate, weight_decay)
        elif self.grouped:
            groups.set_learning_rate(slot.slot_id, slot.record.learning_rate)
        slot.sync_hook()


def _fetch_failure(error: Exception) -> GateResult:
    from esper_kasmina.gates import check

    return check(lifecycle.G0, "artifact_fetch", False, detail=f"{type(error).__name__}: {error}")
