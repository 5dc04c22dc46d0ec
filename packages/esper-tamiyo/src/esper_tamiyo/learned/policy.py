"""``LearnedPolicy``: the learned Tamiyo policy, its masked decoding, and what a trainer (Simic) needs to improve it.

Decoding is factored and masked, so the policy cannot produce an illegal command whatever its weights:

1. the **operation** is drawn among those some slot allows (NOOP always is);
2. the **slot** among those that allow the chosen operation (none for NOOP);
3. for GERMINATE, the **blueprint** among the offered ones that fit the slot and the parameter budget, and the
   **blending schedule**;
4. for a blueprint with a width factor (an integer ``width`` parameter), the **width** class among those inside its
   bounds whose catalog cost fits the budget left and the per-seed cap.

So no weights can make it propose a germination over its budget: an RL trainer compares it with the heuristic at
equal budgets, and the budget is a mask, not a penalty it could learn to ignore.

The joint log-probability of those choices is the command's ``action_log_prob``; :meth:`LearnedPolicy.evaluate_actions`
computes exactly the same quantity (same masks, same code) for a batch of recorded decisions, with gradients, so
Simic can re-score them under new weights (PPO ratios) and train the very network this policy serves.

Weights change only through :meth:`LearnedPolicy.load_update`, which checks a Leyline ``PolicyUpdate``, builds a new
network and swaps it in under a lock; a decision already running finishes on the network it started with.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import attrs
import torch

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    CommandSeedOperation,
    CommandType,
    DecisionMetadata,
    PolicyUpdate,
    SystemStatePacket,
)
from esper_core.protocols import BlueprintCatalog
from esper_core.signing import SigningKey
from esper_tamiyo.learned.actions import (
    ACTION_COLUMNS,
    GERMINATE,
    MAX_BLUEPRINTS,
    MAX_SLOTS,
    NOOP,
    NUM_OPERATIONS,
    NUM_SCHEDULES,
    OPERATION_NAMES,
    SCHEDULES,
    SEED_OPERATIONS,
    WIDTH_PARAMETER,
    PolicyAction,
    germination_parameters,
    nearest_width_class,
)
from esper_tamiyo.learned.encoder import EncodedBatch, EncodedState, FeatureEncoder, collate
from esper_tamiyo.learned.network import (
    NetworkConfig,
    PolicyNetwork,
    PolicyOutput,
    architecture_digest,
    build_network,
    parameter_shapes,
)
from esper_tamiyo.learned.options import LearnedPolicyOptions
from esper_tamiyo.learned.updates import (
    POLICY_NAME,
    SWAP_FAILED,
    UpdateVerdict,
    check_update,
    make_update,
    read_update,
)

#: Logit given to illegal choices before the softmax: exp(-1e9) is exactly 0 in float32, and it stays finite, so a
#: row with no legal entry gives finite (unused) values instead of NaN.
MASKED_LOGIT = -1e9


class ActionDistributions(NamedTuple):
    """Masked log-probabilities of every factor, for a batch: ``[N, O]``, ``[N, O, S]``, ``[N, S, B]``, ``[N, S, K]``,
    ``[N, S, B, W]``.

    ``slot[n, o]`` is the distribution over slots given operation ``o``; ``blueprint[n, s]`` and ``schedule[n, s]``
    are the distributions given slot ``s``, ``width[n, s, b]`` the one given slot ``s`` and blueprint ``b`` (used by
    GERMINATE only; a blueprint without a width factor has no legal width and its row is unused).
    """

    operation: torch.Tensor
    slot: torch.Tensor
    blueprint: torch.Tensor
    schedule: torch.Tensor
    width: torch.Tensor


class ActionEvaluation(NamedTuple):
    """What a trainer needs per recorded decision: joint log-probability, value estimate, entropy (all ``[N]``)."""

    log_prob: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


def masked_distributions(output: PolicyOutput, batch: EncodedBatch) -> ActionDistributions:
    """Apply the legality masks of ``batch`` to the raw ``output`` and normalise each factor."""
    slot_mask = batch.slot_mask & batch.slot_valid.unsqueeze(1)
    noop = torch.zeros(NUM_OPERATIONS, dtype=torch.bool)
    noop[NOOP] = True
    operation_mask = slot_mask.any(dim=-1) | noop
    fit = batch.fit_mask & batch.blueprint_valid.unsqueeze(1) & batch.slot_valid.unsqueeze(2)
    widths = batch.width_mask & fit.unsqueeze(-1)
    return ActionDistributions(
        operation=torch.log_softmax(output.operation_logits.masked_fill(~operation_mask, MASKED_LOGIT), dim=-1),
        slot=torch.log_softmax(output.slot_logits.masked_fill(~slot_mask, MASKED_LOGIT), dim=-1),
        blueprint=torch.log_softmax(output.blueprint_logits.masked_fill(~fit, MASKED_LOGIT), dim=-1),
        schedule=torch.log_softmax(output.schedule_logits, dim=-1),
        width=torch.log_softmax(output.width_logits.masked_fill(~widths, MASKED_LOGIT), dim=-1),
    )


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    if log_probs.shape[-1] == 0:
        return log_probs.new_zeros(log_probs.shape[:-1])
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _pick(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[n, index[n]]`` (0 where a row is empty)."""
    if rows.shape[-1] == 0:
        return rows.new_zeros(rows.shape[0])
    return rows.gather(1, index.clamp(min=0, max=rows.shape[-1] - 1).unsqueeze(1)).squeeze(1)


def evaluate_actions(output: PolicyOutput, batch: EncodedBatch, actions: torch.Tensor) -> ActionEvaluation:
    """Joint log-probability, value and entropy of ``actions`` (``[N, 5]``: operation, slot, blueprint, schedule,
    width, as :meth:`PolicyAction.as_row`).

    log p = log p(op) + [op ≠ NOOP] log p(slot | op) + [op = GERMINATE] (log p(blueprint | slot) + log p(schedule |
    slot)) + [op = GERMINATE and width ≠ -1] log p(width | slot, blueprint); the entropy is that of each factor at the
    recorded choices, summed the same way.
    """
    if actions.dim() != 2 or actions.shape[1] != len(ACTION_COLUMNS):
        raise ValueError(
            f"actions must be [N, {len(ACTION_COLUMNS)}] ({', '.join(ACTION_COLUMNS)}: PolicyAction.as_row), "
            f"got a tensor of shape {tuple(actions.shape)}"
        )
    d = masked_distributions(output, batch)
    rows = torch.arange(actions.shape[0])
    operation, slot, blueprint, schedule, width = actions.unbind(dim=1)
    slot_index = slot.clamp(min=0)
    uses_slot = operation != NOOP
    germinates = operation == GERMINATE
    sized = germinates & (width >= 0)
    slots = d.slot[rows, operation]  # [N, S]
    slot_count, blueprint_count = d.blueprint.shape[1], d.blueprint.shape[2]
    has_slots = slot_count > 0
    at_slot = slot_index.clamp(max=max(slot_count - 1, 0))
    blueprints = d.blueprint[rows, at_slot] if has_slots else None
    schedules = d.schedule[rows, at_slot] if has_slots else None
    has_pairs = has_slots and blueprint_count > 0
    widths = d.width[rows, at_slot, blueprint.clamp(min=0, max=max(blueprint_count - 1, 0))] if has_pairs else None
    zero = output.value.new_zeros(actions.shape[0])
    blueprint_lp = _pick(blueprints, blueprint) if blueprints is not None else zero
    schedule_lp = _pick(schedules, schedule) if schedules is not None else zero
    width_lp = _pick(widths, width) if widths is not None else zero
    log_prob = (
        _pick(d.operation, operation)
        + torch.where(uses_slot, _pick(slots, slot), zero)
        + torch.where(germinates, blueprint_lp + schedule_lp, zero)
        + torch.where(sized, width_lp, zero)
    )
    blueprint_h = _entropy(blueprints) if blueprints is not None else zero
    schedule_h = _entropy(schedules) if schedules is not None else zero
    width_h = _entropy(widths) if widths is not None else zero
    entropy = (
        _entropy(d.operation)
        + torch.where(uses_slot, _entropy(slots), zero)
        + torch.where(germinates, blueprint_h + schedule_h, zero)
        + torch.where(sized, width_h, zero)
    )
    return ActionEvaluation(log_prob=log_prob, value=output.value, entropy=entropy)


def check_action(action: PolicyAction, encoded: EncodedState) -> None:
    """Raise ``ValueError`` unless ``action`` is legal under ``encoded``'s masks (what decoding could have chosen)."""
    op, slot, blueprint = action.operation, action.slot, action.blueprint
    if not 0 <= op < NUM_OPERATIONS:
        raise ValueError(f"operation class {op} is outside the action space")
    if op == NOOP:
        return
    name = OPERATION_NAMES[op]
    if not 0 <= slot < len(encoded.slot_ids):
        raise ValueError(f"slot index {slot} is outside the encoded {len(encoded.slot_ids)} slots")
    if not bool(encoded.slot_mask[op, slot]):
        raise ValueError(f"{name} is not legal on slot {encoded.slot_ids[slot]!r} (see the masks)")
    if op != GERMINATE:
        return
    if not 0 <= blueprint < len(encoded.blueprints):
        raise ValueError(f"blueprint index {blueprint} is outside the encoded {len(encoded.blueprints)}")
    blueprint_id = encoded.blueprints[blueprint].blueprint_id
    if not bool(encoded.fit_mask[slot, blueprint]):
        raise ValueError(
            f"{blueprint_id} is not legal in slot {encoded.slot_ids[slot]!r}: it does not fit the slot, or no "
            "germination of it is within the parameter budget"
        )
    if not 0 <= action.schedule < NUM_SCHEDULES:
        raise ValueError(f"schedule index {action.schedule} is outside the {NUM_SCHEDULES} schedules")
    legal = [index for index, _ in encoded.width_candidates(slot, blueprint)]
    if legal and action.width not in legal:
        raise ValueError(
            f"width class {action.width} is not legal for {blueprint_id} in slot {encoded.slot_ids[slot]!r} "
            f"(legal: {legal})"
        )
    if not legal and action.width != -1:
        raise ValueError(f"{blueprint_id} has no width factor, yet the action names width class {action.width}")


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads (0: unchanged), then restore the previous count.

    With torch's OpenMP backend the count is per calling thread, so other threads (training) are unaffected.
    """
    previous = torch.get_num_threads()
    if threads <= 0 or previous == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@attrs.frozen
class _Live:
    network: PolicyNetwork
    version: str
    payload_sha256: str
    #: ``issued_at`` of the update that made this network live (None while untrained); later updates must be newer.
    issued_at_ns: int | None = None


class LearnedPolicy:
    """A :class:`esper_core.protocols.TamiyoPolicy` backed by :class:`PolicyNetwork`.

    For trainers (Simic reaches these through the plugin registry; it must not import this package):

    - :attr:`network` (the live module; read it, do not train it in place), :meth:`new_network`,
      :meth:`clone_network`;
    - :meth:`encode`, :meth:`collate`, :meth:`action_from_command`, :meth:`evaluate_actions`,
      :meth:`log_prob_and_value`;
    - :attr:`feature_schema_digest`, :attr:`architecture_digest`, :meth:`export_update`, :meth:`load_update`.
    """

    name = POLICY_NAME

    def __init__(
        self,
        options: LearnedPolicyOptions | None = None,
        *,
        signing_key: SigningKey | None = None,
        catalogs: Sequence[BlueprintCatalog] = (),
    ) -> None:
        """``catalogs`` price germinations (``parameter_count``) so that none exceeds the budget of ``options``;
        a blueprint no catalog knows can only germinate at its default width (docs/learned-policy.md)."""
        self.options = options or LearnedPolicyOptions()
        self.signing_key = signing_key
        self.catalogs = tuple(catalogs)
        self.encoder = FeatureEncoder(
            self.options.blueprint_vocabulary,
            catalogs=self.catalogs,
            max_added_parameter_fraction=self.options.max_added_parameter_fraction,
            max_seed_parameter_fraction=self.options.max_seed_parameter_fraction,
        )
        self.network_config = NetworkConfig(
            hidden=self.options.hidden_size,
            embedding=self.options.embedding_size,
            key=self.options.key_size,
            message_rounds=self.options.message_rounds,
            vocabulary=self.options.blueprint_vocabulary,
        )
        network = self.new_network()
        self._architecture_digest = architecture_digest(network)
        self._expected = parameter_shapes(network)
        self._lock = threading.Lock()
        self._rng_lock = threading.Lock()
        self._verdict_lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._rng = random.Random(self.options.seed)
        self._live = _Live(network, f"untrained-{self._architecture_digest[:12]}", "")
        #: The most recent update verdict, and counts of verdicts by reason.
        self.last_verdict: UpdateVerdict | None = None
        self.verdicts: dict[str, int] = {}

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def feature_schema_digest(self) -> str:
        return self.encoder.digest

    @property
    def architecture_digest(self) -> str:
        return self._architecture_digest

    @property
    def network(self) -> PolicyNetwork:
        """The live network. Decisions use it; never train it in place (train :meth:`clone_network`)."""
        with self._lock:
            return self._live.network

    @property
    def policy_version(self) -> str:
        with self._lock:
            return self._live.version

    def new_network(self) -> PolicyNetwork:
        """A fresh, untrained network of this policy's architecture (the same weights in every process)."""
        return build_network(self.network_config, seed=self.options.seed, noop_bias=self.options.noop_bias)

    def clone_network(self) -> PolicyNetwork:
        """A trainable copy of the live network."""
        clone = copy.deepcopy(self.network)
        clone.requires_grad_(True)
        return clone

    # -- deciding ---------------------------------------------------------------------------------------------
    def encode(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> EncodedState:
        return self.encoder.encode(state, blueprints)

    @staticmethod
    def collate(states: Sequence[EncodedState]) -> EncodedBatch:
        return collate(states)

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        started = time.perf_counter()
        with self._lock:
            live = self._live  # a swap during this decision does not affect it
        encoded = self.encoder.encode(state, blueprints)
        batch = collate([encoded])
        with torch.inference_mode(), intra_op_threads(self.options.inference_threads):
            output = live.network.forward_batch(batch)
            finite = all(bool(torch.isfinite(tensor).all()) for tensor in output)
            d = masked_distributions(output, batch)
            operation_lp = d.operation[0].tolist()
            value = float(output.value[0])
        legal = encoded.operation_mask()
        if not finite:
            action = PolicyAction(NOOP)
            command = self._command(state, encoded, action, live, 0.0, None, (1.0, None, None, None))
            command.decision.rationale = "NOOP: the network's output is not finite"
            return self._finish(command, started)
        operation = self._choose(operation_lp, [i for i, ok in enumerate(legal) if ok])
        log_prob = operation_lp[operation]
        slot = blueprint = schedule = width = -1
        slot_p: float | None = None
        blueprint_p: float | None = None
        width_p: float | None = None
        if operation != NOOP:
            slot_lp = d.slot[0, operation].tolist()
            candidates = encoded.slot_mask[operation].nonzero().flatten().tolist()
            slot = self._choose(slot_lp, candidates)
            log_prob += slot_lp[slot]
            slot_p = math.exp(slot_lp[slot])
            if operation == GERMINATE:
                blueprint_lp = d.blueprint[0, slot].tolist()
                blueprint = self._choose(blueprint_lp, encoded.fit_mask[slot].nonzero().flatten().tolist())
                schedule_lp = d.schedule[0, slot].tolist()
                schedule = self._choose(schedule_lp, list(range(NUM_SCHEDULES)))
                log_prob += blueprint_lp[blueprint] + schedule_lp[schedule]
                blueprint_p = math.exp(blueprint_lp[blueprint])
                widths = [index for index, _ in encoded.width_candidates(slot, blueprint)]
                if widths:  # a blueprint with a width factor
                    width_lp = d.width[0, slot, blueprint].tolist()
                    width = self._choose(width_lp, widths)
                    log_prob += width_lp[width]
                    width_p = math.exp(width_lp[width])
        action = PolicyAction(operation, slot, blueprint, schedule, width)
        scores = (math.exp(operation_lp[operation]), slot_p, blueprint_p, width_p)
        command = self._command(state, encoded, action, live, log_prob, value, scores)
        return self._finish(command, started)

    def _choose(self, log_probs: Sequence[float], candidates: Sequence[int]) -> int:
        """The most probable candidate (greedy), or one drawn in proportion to its probability (sample)."""
        if not candidates:
            raise RuntimeError("no legal candidate: the masks and the encoding disagree (a bug)")
        if self.options.decoding == "greedy":
            return max(candidates, key=lambda i: (log_probs[i], -i))
        weights = [math.exp(log_probs[i]) for i in candidates]
        with self._rng_lock:
            draw = self._rng.random() * sum(weights)
        for candidate, weight in zip(candidates, weights, strict=True):
            draw -= weight
            if draw < 0:
                return candidate
        return candidates[-1]

    def _command(
        self,
        state: SystemStatePacket,
        encoded: EncodedState,
        action: PolicyAction,
        live: _Live,
        log_prob: float,
        value: float | None,
        scores: tuple[float, float | None, float | None, float | None],
    ) -> AdaptationCommand:
        """The command for ``action``; ``scores`` are the probabilities of the operation, slot, blueprint and width."""
        confidence, slot_p, blueprint_p, width_p = scores
        command = AdaptationCommand(
            version=1,
            training_run_id=state.training_run_id,
            decision_epoch=state.current_epoch,
            decision_step=state.global_step,
        )
        name = OPERATION_NAMES[action.operation]
        if action.operation == NOOP:
            command.command_type = CommandType.COMMAND_NOOP
            rationale = f"NOOP (p={confidence:.3f})"
        else:
            slot_id = encoded.slot_ids[action.slot]
            command.command_type = CommandType.COMMAND_SEED
            command.target_slot_id = slot_id
            operation = CommandSeedOperation(operation=SEED_OPERATIONS[action.operation])
            rationale = f"{name} {slot_id} (p={confidence:.3f}, slot p={slot_p or 0.0:.3f}"
            if action.operation == GERMINATE:
                descriptor = encoded.blueprints[action.blueprint]
                operation.blueprint_id = descriptor.blueprint_id
                parameters = germination_parameters(descriptor)
                width = ""
                if action.width >= 0:
                    parameters[WIDTH_PARAMETER] = float(
                        encoded.width_values[action.slot, action.blueprint, action.width]
                    )
                    width = f", width {parameters[WIDTH_PARAMETER]:g} p={width_p or 0.0:.3f}"
                operation.parameters.update(parameters)
                operation.blend_schedule = SCHEDULES[action.schedule]
                schedule = ("linear", "cosine", "tanh")[action.schedule]
                rationale += (
                    f", blueprint {descriptor.blueprint_id} p={blueprint_p or 0.0:.3f}{width}, {schedule} blend"
                )
                rationale += f", budget left {encoded.budget_left:.0f} parameters"
            command.seed_operation.CopyFrom(operation)
            rationale += ")"
        legal = [OPERATION_NAMES[i] for i, ok in enumerate(encoded.operation_mask()) if ok]
        rationale += f"; legal: {', '.join(legal)}"
        if value is not None:
            rationale += f"; value {value:.3f}"
        if encoded.truncated_slots or encoded.truncated_blueprints:
            rationale += (
                f"; not encoded: {encoded.truncated_slots} slots over {MAX_SLOTS}, "
                f"{encoded.truncated_blueprints} blueprints over {MAX_BLUEPRINTS}"
            )
        decision = DecisionMetadata(
            policy_name=POLICY_NAME,
            policy_version=live.version,
            confidence=confidence,
            action_index=action.index,
            action_log_prob=log_prob,
            feature_coverage=encoded.coverage,
            rationale=rationale,
        )
        if value is not None:
            decision.value_estimate = value
        if slot_p is not None:
            decision.selected_slot_score = slot_p
        if blueprint_p is not None:
            decision.blueprint_score = blueprint_p
        command.decision.CopyFrom(decision)
        command.annotations["learned.feature_schema_digest"] = self.encoder.digest
        command.annotations["learned.blueprints"] = json.dumps(list(encoded.blueprint_ids), separators=(",", ":"))
        return command

    @staticmethod
    def _finish(command: AdaptationCommand, started: float) -> AdaptationCommand:
        command.decision.decision_latency_ms = (time.perf_counter() - started) * 1000.0
        return command

    # -- re-scoring recorded decisions (what Simic trains with) -------------------------------------------------
    @staticmethod
    def action_from_command(command: AdaptationCommand, encoded: EncodedState) -> PolicyAction:
        """The :class:`PolicyAction` a command stands for, against the encoding of its decision point.

        Prefers ``decision.action_index``; falls back to reading the command (operation, slot id, blueprint id,
        schedule, and ``parameters["width"]`` read as the nearest legal width class) when the index is absent, which
        is how another policy's decisions (the heuristic's, for behaviour cloning) become actions of this one. Raises
        ``ValueError`` when the command does not fit the encoding or is not legal under its masks (for example a
        germination over this policy's parameter budget): this policy could never have taken it.
        """
        if command.decision.HasField("action_index"):
            action = PolicyAction.from_index(command.decision.action_index)
        elif command.command_type != CommandType.COMMAND_SEED:
            action = PolicyAction(NOOP)
        else:
            try:
                operation = SEED_OPERATIONS.index(command.seed_operation.operation)
                slot = encoded.slot_ids.index(command.target_slot_id)
                blueprint = schedule = width = -1
                if operation == GERMINATE:
                    blueprint = encoded.blueprint_ids.index(command.seed_operation.blueprint_id)
                    schedule = SCHEDULES.index(command.seed_operation.blend_schedule)
                    candidates = encoded.width_candidates(slot, blueprint)
                    if candidates:
                        given = command.seed_operation.parameters
                        chosen = given.get(WIDTH_PARAMETER)
                        if chosen is None:  # left out: the executor builds the default
                            chosen = germination_parameters(encoded.blueprints[blueprint])[WIDTH_PARAMETER]
                        width = nearest_width_class(chosen, candidates)
            except ValueError as error:
                raise ValueError(f"the command does not fit the encoding: {error}") from None
            action = PolicyAction(operation, slot, blueprint, schedule, width)
        check_action(action, encoded)
        return action

    def evaluate_actions(
        self, batch: EncodedBatch, actions: torch.Tensor | Sequence[PolicyAction], network: PolicyNetwork | None = None
    ) -> ActionEvaluation:
        """Joint log-probabilities, values and entropies of recorded ``actions`` under ``network`` (default: the
        live one), with gradients when ``network`` requires them. ``actions`` is ``[N, 5]`` (rows of
        :meth:`PolicyAction.as_row`) or a list of :class:`PolicyAction`."""
        if not isinstance(actions, torch.Tensor):
            rows = [action.as_row() for action in actions]
            actions = torch.tensor(rows, dtype=torch.int64).reshape(-1, len(ACTION_COLUMNS))
        model = network if network is not None else self.network
        return evaluate_actions(model.forward_batch(batch), batch, actions)

    def log_prob_and_value(
        self, encoded: EncodedState, action: PolicyAction, network: PolicyNetwork | None = None
    ) -> tuple[float, float]:
        """The joint log-probability of ``action`` and the value estimate for one decision point (no gradients)."""
        with torch.inference_mode(), intra_op_threads(self.options.inference_threads):
            result = self.evaluate_actions(collate([encoded]), [action], network)
        return float(result.log_prob[0]), float(result.value[0])

    # -- updates ------------------------------------------------------------------------------------------------
    def export_update(
        self,
        *,
        policy_version: str,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        policy_id: str = "",
        training_run_id: str = "",
        training_metrics: Mapping[str, float] | None = None,
    ) -> PolicyUpdate:
        """A ``PolicyUpdate`` carrying ``state_dict`` (default: the live network's) for this policy's schema and
        architecture, signed with this policy's key when it has one."""
        weights = state_dict if state_dict is not None else self.network.state_dict()
        return make_update(
            weights,
            feature_schema_digest=self.feature_schema_digest,
            architecture_digest=self.architecture_digest,
            policy_version=policy_version,
            signing_key=self.signing_key,
            policy_id=policy_id,
            training_run_id=training_run_id,
            training_metrics=training_metrics,
        )

    def load_update(self, update: PolicyUpdate, *, allow_rollback: bool = False) -> UpdateVerdict:
        """Check ``update`` and, if it passes, swap its weights in atomically; a rejected update changes nothing.

        Versions only move forward: once an update is live, one issued no later than it (``issued_at``) is refused as
        ``stale_update``, so a captured older update replayed on the bus cannot take the policy back. Roll back on
        purpose with ``allow_rollback=True``, or by exporting the older weights again as a new update.
        """
        with self._update_lock:  # two updates checked at once must not both pass the issue-time check
            with self._lock:
                live_issued_at = self._live.issued_at_ns
            verdict, tensors = check_update(
                update,
                feature_schema_digest=self.feature_schema_digest,
                architecture_digest=self.architecture_digest,
                expected=self._expected,
                signing_key=self.signing_key,
                max_payload_bytes=self.options.max_update_bytes,
                live_issued_at_ns=live_issued_at,
                allow_rollback=allow_rollback,
            )
            if verdict.accepted:
                assert tensors is not None
                try:
                    network = PolicyNetwork(self.network_config, noop_bias=self.options.noop_bias)
                    network.load_state_dict(tensors, strict=True)
                    network.eval()
                except (RuntimeError, ValueError) as error:
                    verdict = UpdateVerdict(False, SWAP_FAILED, f"{type(error).__name__}: {error}")
                else:
                    version = update.tamiyo_policy_version or f"sha256-{update.payload_sha256[:12]}"
                    issued_at = update.issued_at.ToNanoseconds() if update.HasField("issued_at") else 0
                    with self._lock:
                        self._live = _Live(network, version, update.payload_sha256, issued_at)
        verdict = attrs.evolve(verdict, policy_version=self.policy_version)
        with self._verdict_lock:
            self.last_verdict = verdict
            self.verdicts[verdict.reason] = self.verdicts.get(verdict.reason, 0) + 1
        return verdict

    def load_update_file(self, path: str | Path, *, allow_rollback: bool = False) -> UpdateVerdict:
        """Load an update saved with :func:`esper_tamiyo.learned.save_update`."""
        return self.load_update(read_update(path), allow_rollback=allow_rollback)
