"""What each plugin point's factory returns. Subsystems meet only through these protocols and Leyline messages.

torch appears only in annotations, so importing this module stays cheap; a plugin that provides torch modules
depends on torch itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from esper_core.leyline import SeedState, SlotKind

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from esper_core.leyline import (
        AdaptationCommand,
        BlueprintDescriptor,
        CommandResult,
        FieldReport,
        PolicyUpdate,
        SeedLifecycleEvent,
        SystemStatePacket,
        TelemetryPacket,
    )


@attrs.frozen
class SlotShape:
    """The activation a seed slot carries: its kind and its shape without the batch dimension.

    A width slot also reads an earlier activation (``read_kind``, ``read_shape``): its seed maps that to the slot's
    shape. A residual slot leaves them empty and its seed maps the slot's shape to itself.
    """

    kind: SlotKind.ValueType
    shape: tuple[int, ...]
    read_kind: SlotKind.ValueType = attrs.field(default=SlotKind.SLOT_KIND_UNSPECIFIED, kw_only=True)
    read_shape: tuple[int, ...] = attrs.field(default=(), kw_only=True)

    @property
    def is_width(self) -> bool:
        return bool(self.read_shape)

    @property
    def input(self) -> SlotShape:
        """The activation the seed reads, as a slot shape of its own (the slot itself for a residual slot)."""
        return SlotShape(self.read_kind, self.read_shape) if self.is_width else self

    @classmethod
    def of(cls, state: SeedState) -> SlotShape:
        read_shape = tuple(int(size) for size in state.read_shape)
        return cls(state.slot_kind, tuple(state.slot_shape), read_kind=state.read_kind, read_shape=read_shape)

    def describe(self) -> str:
        written = f"{SlotKind.Name(self.kind).removeprefix('SLOT_KIND_').lower()}{list(self.shape)}"
        if not self.is_width:
            return written
        return f"{self.input.describe()} -> {written}"


@runtime_checkable
class TamiyoPolicy(Protocol):
    """Decides what to do at one decision point. Pure decision-making: signing, risk rules and field reports are
    the controller's job, so a third-party policy needs none of them."""

    name: str

    def decide(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> AdaptationCommand:
        """Return one command for ``state``: a seed operation on one of ``state.seeds``' slots, or a no-op.

        ``blueprints`` are the descriptors the policy may germinate (already filtered to what the run allows).
        """
        ...


class UpdateOutcome(Protocol):
    """What a policy says about an update it was handed: whether it is live now, and why not."""

    accepted: bool
    reason: str
    detail: str


@runtime_checkable
class TrainablePolicy(TamiyoPolicy, Protocol):
    """A policy whose weights a learner (Simic) trains and ships back as Leyline ``PolicyUpdate``s.

    The learner reaches it only through the registry (``registry.build(registry.policy(name), ...)``), so it trains
    exactly the encoding and network the controller serves, never a copy of its own. The encoded states, batches and
    actions are the policy's own types; the learner only passes them back. Tamiyo's ``learned`` policy implements it
    (docs/learned-policy.md, "How Simic trains exactly this network").
    """

    @property
    def feature_schema_digest(self) -> str:
        """SHA-256 of the feature encoding: experience encoded under another digest must not be mixed in."""
        ...

    @property
    def architecture_digest(self) -> str:
        """SHA-256 of the network's architecture: updates for another architecture are refused."""
        ...

    @property
    def policy_version(self) -> str:
        """The version the live weights report in each decision's metadata."""
        ...

    def encode(self, state: SystemStatePacket, blueprints: Sequence[BlueprintDescriptor]) -> Any:
        """The encoding of one decision point, exactly as :meth:`decide` sees it."""
        ...

    def collate(self, states: Sequence[Any]) -> Any:
        """A padded batch of encoded decision points."""
        ...

    def action_from_command(self, command: AdaptationCommand, encoded: Any) -> Any:
        """The action a recorded command stands for (any policy's command); ``ValueError`` when it does not fit."""
        ...

    def clone_network(self) -> torch.nn.Module:
        """A trainable copy of the live network (the live one is never trained in place)."""
        ...

    def new_network(self) -> torch.nn.Module:
        """A fresh, untrained network of the same architecture."""
        ...

    def evaluate_actions(self, batch: Any, actions: Sequence[Any], network: torch.nn.Module | None = None) -> Any:
        """``(log_prob, value, entropy)`` tensors of recorded ``actions`` under ``network``, with gradients."""
        ...

    def export_update(
        self,
        *,
        policy_version: str,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        policy_id: str = "",
        training_run_id: str = "",
        training_metrics: Mapping[str, float] | None = None,
    ) -> PolicyUpdate:
        """A signed ``PolicyUpdate`` carrying ``state_dict`` for this policy's schema and architecture."""
        ...

    def load_update(self, update: PolicyUpdate, *, allow_rollback: bool = False) -> UpdateOutcome:
        """Check ``update`` and make it live if it passes; a refused update changes nothing."""
        ...


@attrs.frozen
class DecisionStep:
    """One recorded decision point as a trainable policy encodes it: what a Simic trainer learns from."""

    #: The policy's encoding of the state packet (its ``encode``), and the action the command stands for.
    encoded: Any
    action: Any
    #: Log-probability the deciding policy gave the action (0 for a deterministic policy such as the heuristic).
    behaviour_log_prob: float
    #: What the decision earned until the next decision point (Simic's rewards: validation accuracy gained less
    #: the costs of parameters and compute).
    reward: float
    #: Decided by another policy: a demonstration a trainer may imitate.
    demonstrated: bool


@attrs.frozen
class DecisionEpisode:
    """One run's decision points in order."""

    episode_id: str
    steps: tuple[DecisionStep, ...]


@attrs.frozen
class TrainingOutcome:
    """What a Simic trainer returns: new weights for the policy, its learning curves, and why it stopped early."""

    state_dict: Mapping[str, Any]
    #: One row per pass (numbers only): what ``esper simic train`` saves and plots.
    curves: list[dict[str, float]]
    #: Why training stopped before its end with the last good weights (a non-finite loss), or None.
    stopped: str | None = None


@runtime_checkable
class SimicTrainer(Protocol):
    """A training algorithm for Simic: new weights for a trainable policy from episodes of its encoded decisions.

    The trainer trains a copy (``policy.clone_network()`` or ``policy.new_network()``), never the live network,
    scores recorded actions with ``policy.evaluate_actions``, and returns finite weights of the policy's
    architecture. Given the same inputs it returns the same weights. With ``checkpoint`` it saves its state after
    each pass and resumes from it. ``progress(phase, done, total, row)`` is called after each pass.
    """

    name: str

    def train(
        self,
        policy: TrainablePolicy,
        episodes: Sequence[DecisionEpisode],
        *,
        checkpoint: Path | None = None,
        progress: Callable[[str, int, int, Mapping[str, float]], None] | None = None,
    ) -> TrainingOutcome: ...


@runtime_checkable
class Controller(Protocol):
    """Turns each state packet into one signed command and judges the outcomes of its decisions."""

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        """A signed command for ``state`` (a signed no-op when nothing should change)."""
        ...

    def observe(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> list[FieldReport]:
        """Record what the executor did with ``command``; return the field reports whose windows closed now."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the controller exactly (saved in checkpoints)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BlueprintCatalog(Protocol):
    """A set of blueprints: descriptors plus builders of modules that map a slot's shape to itself."""

    name: str

    def descriptors(self) -> Sequence[BlueprintDescriptor]: ...

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> torch.nn.Module:
        """A fresh module for ``slot`` whose output starts at (near) zero; raises ``KeyError`` for an unknown id and
        ``ValueError`` for parameters outside the declared bounds or a slot kind the blueprint does not support."""
        ...

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        """The exact number of trainable parameters ``build`` would create, without building it."""
        ...


@runtime_checkable
class WidthSeed(Protocol):
    """The structure of a width blueprint's module (``z_B <- z_B + s(a_A)``): new units between two host layers.

    Why a protocol: a width seed *is* the host with more channels or neurons in one layer, so an executor can
    initialise its new units the way the host's own were (from the activations and gradients it measures, as in
    GROWTH-METHODS.md) only if it can find them. ``grow_in`` is the first convolution or linear layer, which computes
    the new units from the read activation ``a_A`` (its output channels or features are the new units); ``grow_out``
    is the last one, which maps the new units into the written activation and starts at exactly zero (so the host's
    function is preserved at the graft). :meth:`hidden` is what ``grow_out`` reads: the new units after their
    activation function, any resampling to the written activation's grid and any flattening, so that
    ``module(a) == grow_out(hidden(a))``.

    A catalog's width modules need not satisfy it (the seed contract is only the mapping and the zero start), but
    an executor can initialise only those that do. Karn's width blueprints all do.
    """

    grow_in: torch.nn.Module
    grow_out: torch.nn.Module

    def hidden(self, a: torch.Tensor) -> torch.Tensor:
        """The new units' values for the read activation ``a`` (batch first): what ``grow_out`` reads."""
        ...


@attrs.frozen
class FetchedSeed:
    """A ready-to-use seed module from an artifact store, and where it came from."""

    module: Any
    descriptor: Any
    artifact_sha256: str
    fetch_latency_ms: float
    #: ``"memory"`` (warm cache hit), ``"disk"`` (loaded from the library) or ``"built"`` (built on a miss).
    source: str


@runtime_checkable
class ArtifactStore(Protocol):
    """Serves checked blueprint artifacts for a slot shape, building them on a miss."""

    def fetch(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> FetchedSeed: ...

    def close(self) -> None: ...


@runtime_checkable
class QuarantineListener(Protocol):
    """An artifact store or catalog that wants to know when a run quarantines a blueprint (optional).

    A run quarantines a blueprint whose ``build`` raised: it is never offered or germinated again in that run.
    Tolaria tells the run's artifact store and catalogs that implement this, once per blueprint, right after it is
    recorded; this is where a store can mark the blueprint's safety data sheet (Urabrask). What this method raises
    is reported as the listener's own failure and changes nothing else.
    """

    def blueprint_quarantined(self, blueprint_id: str, *, catalog: str, reason: str) -> None: ...


@runtime_checkable
class TelemetrySink(Protocol):
    """Receives every telemetry packet of a run; must accept any valid packet."""

    def emit(self, packet: TelemetryPacket) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ResumableSink(Protocol):
    """A telemetry sink that can go back to where it stood at a checkpoint (optional for sinks).

    A run killed after its last checkpoint repeats the epochs since; a sink that keeps what it received (a file)
    would then hold those packets twice. Tolaria saves ``state_dict()`` with every checkpoint (plain data: it is
    loaded with ``weights_only``) and calls ``load_state_dict()`` on resume and on rollback, before anything is
    emitted again, so the sink can drop what came after (the jsonl sink truncates its file). Sinks that only
    forward packets elsewhere need not implement it.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@attrs.frozen(kw_only=True)
class TaskData:
    """A task's data as tensors: training examples, and optionally its own validation and test sets.

    Without validation data Tolaria holds out ``run.validation_fraction`` of the training set (seeded).
    """

    train_inputs: Any
    train_targets: Any
    val_inputs: Any = None
    val_targets: Any = None
    test_inputs: Any = None
    test_targets: Any = None


@runtime_checkable
class Task(Protocol):
    """A host model, its data, its loss and its metric."""

    name: str

    def build_model(self) -> torch.nn.Module:
        """A fresh, untrained host."""
        ...

    def slot_points(self) -> Sequence[str]:
        """Module paths in the model where seed slots go (``"features.3"``)."""
        ...

    def data(self) -> TaskData: ...

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The mean loss of a batch."""
        ...

    def correct(self, outputs: Any, targets: Any) -> torch.Tensor:
        """How many examples of a batch are right (a tensor, so that it can stay on the device)."""
        ...


class Validation(Protocol):
    """What a validation pass reports: the host as it is (seed contributions are the executor's business)."""

    loss: float
    accuracy: float
    samples: int


#: The key of a seed's parameter group in the run's optimizer that names the seed's slot (``group[SEED_GROUP_KEY] =
#: slot_id``); the host's group, the optimizer's first, has none. Tolaria reads it to tell the seeds' gradients from
#: the host's at decision points.
SEED_GROUP_KEY = "esper_slot"
#: A parameter group's base learning rate under Tolaria's learning-rate schedule (``tolaria.lr_schedule``, absent
#: without one): at every optimizer step the schedule sets ``lr`` to it times the schedule's factor. An executor that
#: wants the host's rate (a seed's default rate) reads this key when the host's group has it, ``lr`` otherwise.
BASE_LR_KEY = "esper_base_lr"
#: The ``lr`` the schedule last wrote into a group. A group whose ``lr`` differs from it, or that lacks it (a new
#: seed's group, a rate an executor set on purpose), has its ``lr`` taken as its new base at the next optimizer
#: step; an executor that sets a group's rate (a FINE_TUNE) writes ``lr`` and removes this key, so that even a rate
#: equal to the last scheduled one becomes the base.
SCHEDULED_LR_KEY = "esper_scheduled_lr"


@runtime_checkable
class EvaluationShard(Protocol):
    """This process's share of a validation pass that several data-parallel processes run together
    (``esper_core.tolaria.ranks.Ranks``): it evaluates the batches whose number modulo ``world`` is ``rank``."""

    rank: int
    world: int

    def gather(self, value: Any, what: str) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order; ``what`` names the collective in errors."""
        ...


@runtime_checkable
class SeedExecutor(Protocol):
    """Owns the seed slots of a host and applies commands to them (Kasmina).

    Setup: ``attach`` the slots, ``bind_optimizer``, ``set_probe``. At each decision point: ``evaluate`` (the
    validation pass, with every seed's counterfactual contribution), ``decision_point``, ``export_seed_states``,
    then ``apply`` the controller's command. Between decision points the executor does nothing per batch except
    what its seeds do inside the host's forward pass.
    """

    def attach(self, model: torch.nn.Module, slot_points: Sequence[str], example_input: Any) -> Any:
        """Put a DORMANT seed slot at each module path; the host's outputs stay bit-identical."""
        ...

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Seeds join this optimizer as their own parameter groups (each marked with :data:`SEED_GROUP_KEY`), and
        leave it when culled."""
        ...

    def set_probe(self, inputs: Any, targets: Any, loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        """A small fixed batch and the task loss, for the gates' measurements."""
        ...

    def host_parameters(self) -> list[torch.nn.Parameter]: ...

    def evaluate(
        self,
        batches: Iterable[tuple[Any, Any]],
        loss_fn: Callable[[Any, Any], torch.Tensor],
        correct_fn: Callable[[Any, Any], torch.Tensor],
        *,
        shard: EvaluationShard | None = None,
    ) -> Validation:
        """The validation pass of a decision point. With ``shard`` (a data-parallel run), this process evaluates
        only the batches numbered ``rank``, ``rank + world``, ... of ``batches`` and the per-batch results are
        gathered, so that every process returns the same validation, as if it had evaluated every batch. An
        executor without the parameter is given every batch on every process instead."""
        ...

    def decision_point(self, epoch: int, global_step: int) -> list[SeedLifecycleEvent]:
        """Advance ages and embargoes and run the health checks; return the transitions that happened."""
        ...

    def apply(self, command: AdaptationCommand) -> CommandResult: ...

    def export_seed_states(self) -> list[SeedState]: ...

    def drain_events(self) -> list[SeedLifecycleEvent]:
        """Every lifecycle transition since the last call."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The executor's own state (the slots' state travels in the model's ``state_dict``)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore after the model's state and before the optimizer's."""
        ...


@runtime_checkable
class Service(Protocol):
    """A long-lived worker that ``esper serve`` runs and Weatherlight supervises."""

    name: str

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; raise to be restarted with backoff."""
        ...
