"""Simic's built-in trainer: behaviour cloning from the heuristic, then PPO with V-trace-corrected advantages, on the
very network Tamiyo serves.

Episodes from the replay store are re-encoded by the policy itself (:class:`esper_core.protocols.TrainablePolicy`,
built through the registry), so the learner sees exactly what the controller saw and trains exactly its network.

- **Preparation** (:func:`prepare`): each step's recorded ``SystemStatePacket`` and ``AdaptationCommand`` are
  decoded, the packet becomes the one the policy decided on (with the measured blueprints the command says the
  controller filled in: ``esper_core.leyline.annotations.as_decided``), the offered blueprints are looked up in the
  catalog by the ids the command names, the state is encoded and the command becomes the policy's action. A decision
  of the learned policy under the same feature schema keeps the log-probability it was sampled with; any other
  decision (the heuristic's, a fixed schedule's) was deterministic, so its behaviour probability is 1 and it is also
  a demonstration for cloning.
- **Cloning** (``clone_epochs``): the negative log-likelihood of the demonstrated decisions, so PPO starts from a
  policy that decides like the heuristic instead of from random growth.
- **PPO** (``iterations``): at each iteration the network scores every step without gradients; per episode, V-trace
  (:mod:`esper_simic.vtrace`) turns rewards, values and the ratio of the network's probability to the behaviour
  policy's into value targets and advantages (on-policy data gets plain returns); then the clipped update
  (:mod:`esper_simic.ppo`) improves the network, its ratio taken against the network before the update.

Deterministic given ``seed``: minibatch order comes from a seeded generator and nothing else is random. A NaN or
infinite loss stops training with the last good weights kept (and says so in the result); with a checkpoint path,
each iteration is saved atomically and a killed training resumes from the last one.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from esper_core.leyline import AdaptationCommand, BlueprintDescriptor, SystemStatePacket
from esper_core.leyline.annotations import OFFERED_BLUEPRINTS, as_decided
from esper_core.protocols import DecisionEpisode, DecisionStep, TrainablePolicy, TrainingOutcome
from esper_core.storage.atomic import atomic_write_bytes
from esper_core.tolaria.record import decode_message
from esper_simic.cloning import clone_behaviour
from esper_simic.experience import rewards_of
from esper_simic.options import TrainOptions
from esper_simic.ppo import NonFiniteLoss, Rollout, ppo_update
from esper_simic.replay import Episode
from esper_simic.rewards import RewardWeights
from esper_simic.scoring import Scores
from esper_simic.vtrace import vtrace

__all__ = ["PPOTrainer", "TrainOptions", "UnusableEpisode", "prepare", "train"]

#: The learned policy's own annotations (docs/learned-policy.md): the blueprints it encoded, and its schema digest.
LEARNED_BLUEPRINTS = "learned.blueprints"
LEARNED_SCHEMA = "learned.feature_schema_digest"


class UnusableEpisode(ValueError):
    """An episode the policy cannot re-encode; the message names the episode, the step and why."""


def _blueprints(command: AdaptationCommand, catalog: Mapping[str, BlueprintDescriptor], where: str) -> list[Any]:
    text = command.annotations.get(LEARNED_BLUEPRINTS) or command.annotations.get(OFFERED_BLUEPRINTS)
    if text is None:
        raise UnusableEpisode(
            f"{where}: the command does not name the blueprints on offer (recorded before Tamiyo annotated "
            f"{OFFERED_BLUEPRINTS!r}); collect it again"
        )
    ids = json.loads(text)
    missing = [blueprint for blueprint in ids if blueprint not in catalog]
    if missing:
        raise UnusableEpisode(
            f"{where}: blueprints {', '.join(missing)} are not in the catalogs Simic was given (urza.catalogs)"
        )
    return [catalog[blueprint] for blueprint in ids]


def prepare(
    episode: Episode,
    policy: TrainablePolicy,
    catalog: Mapping[str, BlueprintDescriptor],
    weights: RewardWeights | None = None,
) -> DecisionEpisode:
    """Re-encode ``episode`` with ``policy`` (see the module), its rewards charged with ``weights`` (default: those
    it was collected with). Raises :class:`UnusableEpisode` naming the step."""
    charged = rewards_of(episode, weights) if weights is not None and "host_epoch_flops" in episode.outcome else None
    steps = []
    for number, step in enumerate(episode.steps):
        where = f"episode {episode.episode_id}, decision point {number} (epoch {step.get('epoch')})"
        try:
            command = decode_message(step["command"], AdaptationCommand)
            state = as_decided(decode_message(step["packet"], SystemStatePacket), command)
        except (KeyError, ValueError) as error:
            raise UnusableEpisode(f"{where}: {error}") from None
        encoded = policy.encode(state, _blueprints(command, catalog, where))
        try:
            action = policy.action_from_command(command, encoded)
        except ValueError as error:
            raise UnusableEpisode(f"{where}: the command does not fit the encoding ({error})") from None
        sampled = (
            command.decision.policy_name == policy.name
            and command.decision.HasField("action_log_prob")
            and command.annotations.get(LEARNED_SCHEMA) == policy.feature_schema_digest
        )
        steps.append(
            DecisionStep(
                encoded=encoded,
                action=action,
                behaviour_log_prob=float(command.decision.action_log_prob) if sampled else 0.0,
                reward=charged[number] if charged is not None else float(step["reward"]),
                demonstrated=not sampled,
            )
        )
    return DecisionEpisode(episode.episode_id, tuple(steps))


class _Scoring:
    """Scores of chosen steps under a network, batching through the policy's own collate and evaluate_actions."""

    def __init__(self, policy: TrainablePolicy, network: torch.nn.Module, steps: Sequence[DecisionStep]) -> None:
        self.policy, self.network, self.steps = policy, network, steps

    def of(self, indices: Sequence[int]) -> Scores:
        chosen = [self.steps[i] for i in indices]
        batch = self.policy.collate([step.encoded for step in chosen])
        log_prob, value, entropy = self.policy.evaluate_actions(batch, [step.action for step in chosen], self.network)
        return Scores(log_prob, value, entropy)

    def scorer(self, subset: Sequence[int]) -> Callable[[torch.Tensor], Scores]:
        return lambda index: self.of([subset[int(i)] for i in index])

    def everything(self, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and values of every step, without gradients."""
        parts = []
        with torch.no_grad():
            for start in range(0, len(self.steps), chunk):
                scores = self.of(range(start, min(start + chunk, len(self.steps))))
                parts.append((scores.log_prob, scores.value))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _save_checkpoint(
    path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    buffer = io.BytesIO()
    torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def train(
    policy: TrainablePolicy,
    episodes: Sequence[DecisionEpisode],
    options: TrainOptions | None = None,
    *,
    checkpoint: Path | None = None,
    progress: Callable[[str, int, int, Mapping[str, float]], None] | None = None,
) -> TrainingOutcome:
    """Clone, then improve with PPO (see the module); ``progress(phase, done, total, row)`` after each pass."""
    options = options or TrainOptions()
    steps = [step for episode in episodes for step in episode.steps]
    if not steps:
        raise ValueError("there is nothing to train on: no episode has a decision point")
    network = policy.clone_network() if options.start == "live" else policy.new_network()
    network.requires_grad_(True)
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    curves: list[dict[str, float]] = []
    phase_done = {"clone": 0, "ppo": 0}
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        curves = json.loads(saved["curves"])
        phase_done = json.loads(saved["phase_done"])
    scoring = _Scoring(policy, network, steps)
    demonstrated = [i for i, step in enumerate(steps) if step.demonstrated]

    def after(phase: str, total: int, row: dict[str, float]) -> None:
        phase_done[phase] += 1
        curves.append({"phase": 0.0 if phase == "clone" else 1.0, **row})
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                network,
                optimizer,
                {
                    "generator": generator.get_state(),
                    "curves": json.dumps(curves),
                    "phase_done": json.dumps(phase_done),
                },
            )
        if progress is not None:
            progress(phase, phase_done[phase], total, row)

    stopped: str | None = None
    try:
        if demonstrated and options.clone_epochs:
            while phase_done["clone"] < options.clone_epochs:
                cloned = clone_behaviour(
                    network,
                    optimizer,
                    len(demonstrated),
                    scoring.scorer(demonstrated),
                    epochs=1,
                    minibatch=options.minibatch,
                    generator=generator,
                )
                after(
                    "clone",
                    options.clone_epochs,
                    {"clone_loss": cloned.loss, "likelihood": cloned.likelihood, "agreement": cloned.agreement},
                )
        for group in optimizer.param_groups:
            group["lr"] = options.ppo_learning_rate
        everything = list(range(len(steps)))
        while phase_done["ppo"] < options.iterations:
            rollout, row = _rollout(scoring, episodes, options)
            stats = ppo_update(network, optimizer, rollout, options.ppo(), generator, scoring.scorer(everything))
            row.update(
                policy_loss=stats.policy_loss,
                value_loss=stats.value_loss,
                entropy=stats.entropy,
                approx_kl=stats.approx_kl,
                clip_fraction=stats.clip_fraction,
                ppo_epochs=float(stats.epochs),
            )
            after("ppo", options.iterations, row)
    except NonFiniteLoss as error:
        stopped = f"{error}; training stopped with the last good weights"
    network.eval()
    state = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}
    return TrainingOutcome(state, curves, stopped)


class PPOTrainer:
    """The built-in :class:`esper_core.protocols.SimicTrainer` (``simic.trainer = "ppo"``): :func:`train`."""

    name = "ppo"

    def __init__(self, options: TrainOptions | None = None) -> None:
        self.options = options or TrainOptions()

    def train(
        self,
        policy: TrainablePolicy,
        episodes: Sequence[DecisionEpisode],
        *,
        checkpoint: Path | None = None,
        progress: Callable[[str, int, int, Mapping[str, float]], None] | None = None,
    ) -> TrainingOutcome:
        return train(policy, episodes, self.options, checkpoint=checkpoint, progress=progress)


def _rollout(
    scoring: _Scoring, episodes: Sequence[DecisionEpisode], options: TrainOptions
) -> tuple[Rollout, dict[str, float]]:
    """V-trace targets and advantages of every episode under the network as it is now."""
    log_probs, values = scoring.everything()
    targets, advantages = [], []
    start = 0
    returns = []
    for episode in episodes:
        end = start + len(episode.steps)
        rewards = [step.reward * options.reward_scale for step in episode.steps]
        behaviour = [step.behaviour_log_prob for step in episode.steps]
        target, advantage = vtrace(
            rewards,
            values[start:end],
            behaviour,
            log_probs[start:end],
            gamma=options.gamma,
            rho_bar=options.rho_bar,
            c_bar=options.c_bar,
        )
        targets.append(target)
        advantages.append(advantage)
        returns.append(sum(step.reward for step in episode.steps))
        start = end
    row = {
        "return": sum(returns) / len(returns),
        "value": float(values.mean()),
        "behaviour_probability": float(
            torch.tensor([s.behaviour_log_prob for e in episodes for s in e.steps]).exp().mean()
        ),
    }
    if not all(math.isfinite(v) for v in row.values()):
        raise NonFiniteLoss("the network's values are not finite")
    return Rollout(log_probs.detach(), torch.cat(advantages), torch.cat(targets)), row
