"""A seed slot: where a seed can grow at one module of the host.

The slot does not wrap the host module (that would rename the host's parameters and break its checkpoints). It
lives in the model's slot bank and, only while its seed is part of the forward pass, holds a forward hook on the
host module that rewrites the module's output:

======================  ==============================================================================
stage                   output of the host module at this point
======================  ==============================================================================
DORMANT, GERMINATED     the host activation ``h``, untouched (there is no hook at all)
TRAINING                ``h + (s - s.detach())`` with ``s = seed(h.detach())`` (computed as a straight-through
                        function): the value is ``h``, but the seed receives the task loss's gradient (plus a
                        pull towards zero, see below); no gradient reaches the host through it
BLENDING                ``h + alpha * seed(h.detach())``, alpha ramping 0 → 1 on a schedule
SHADOWING               ``h + seed(h.detach())`` (alpha 1; still removable)
PROBATIONARY, FOSSILIZED  ``h + seed(h)`` (isolation lifted: joint training)
======================  ==============================================================================

A *width* slot reads at an earlier point of the host than the module it rewrites (``read_point``: the input or the
output of another module) and adds ``seed(a)`` to the module's output, ``a`` being the activation read there in the
same forward pass: new channels or neurons between two layers. Everything above holds with ``seed(a)`` in place of
``seed(h)`` (``a`` is detached until PROBATIONARY, exactly as ``h`` is); while the seed is in the forward pass the
slot also holds a hook on the read module that keeps ``a`` for the rewrite.

Why the pull towards zero in TRAINING: the straight-through gradient is the loss's gradient at ``h``, not at
``h + s``, so it never tells the seed it has gone far enough. Followed alone, it drives ``s`` further along the
same direction at every step, and after an epoch the seed overshoots: at full strength it makes the loss worse.
Each sample's gradient gets ``curvature * s_i`` added (``kasmina.training_curvature``), the gradient of a
quadratic model of the loss around ``h``; the seed then settles at ``s_i ≈ -grad_i / curvature``, a bounded
Newton-like step that a later BLENDING stage, with real feedback, refines.

A *paused* seed (``SeedRecord.paused``, COMMAND_PAUSE) keeps its stage's formula above, with its output held: its
parameters stop requiring gradients (so no backward pass gives them a gradient and every ``torch.optim`` optimizer
skips them, state and all), it runs in eval mode (no batch-norm statistics move, no dropout is drawn), and a
BLENDING seed's alpha stops advancing. Gradients still flow *through* it where its stage lets them (PROBATIONARY).

Everything the slot knows (stage, blueprint, alpha, embargo, counters, pause) is saved in the model's ``state_dict``
(as the slot's extra state and its ``alpha_steps`` buffer), and loading a state dict rebuilds the seed module from
its blueprint id before its weights are loaded, so a restored model computes exactly what the saved one did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from esper_core.leyline import BlendSchedule, SlotKind, lifecycle
from esper_core.leyline.lifecycle import Stage
from esper_core.loss_weight import loss_weight
from esper_core.plugin_failures import Blame, blame
from esper_core.protocols import SlotShape
from esper_kasmina import schedules


class _StraightThrough(torch.autograd.Function):
    """``host`` in value; in the backward pass the incoming gradient goes to ``host``, and to ``seed`` with
    ``curvature * seed / batch`` added (the per-sample gradient of ``curvature / 2 * |seed_i|^2`` under a mean loss),
    times the weight of the loss (:mod:`esper_core.loss_weight`: a micro-batch's share of its batch, fp16's scale),
    so that the pull is the same with gradient accumulation and gradient scaling as without.

    With curvature 0, the same as ``host + (seed - seed.detach())`` without its two activation-sized temporaries,
    and exact in value (no ``-0.0 + 0.0`` rounding).
    """

    @staticmethod
    def forward(ctx: Any, host: torch.Tensor, seed: torch.Tensor, curvature: float) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        ctx.curvature = curvature
        if curvature:
            ctx.weight = loss_weight()
            ctx.save_for_backward(seed)
        return host.view_as(host)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override, unused-ignore]
        if not ctx.curvature:
            return grad, grad, None
        (seed,) = ctx.saved_tensors
        pull, weight = ctx.curvature / seed.shape[0], ctx.weight
        if isinstance(weight, torch.Tensor):
            return grad, grad + seed * (weight * pull), None
        return grad, torch.add(grad, seed, alpha=pull * weight if weight != 1.0 else pull), None


#: Builds a seed module for a slot: (slot, blueprint id, parameters) -> module. Provided by Kasmina.
SeedBuilder = Callable[["SeedSlot", str, Mapping[str, float]], nn.Module]


@attrs.define
class SeedRecord:
    """The bookkeeping of one slot; plain data, saved as the slot's extra state."""

    stage: Stage = lifecycle.DORMANT
    seed_id: str = ""
    blueprint_id: str = ""
    parameters: dict[str, float] = attrs.Factory(dict)
    risk: float = 0.0
    schedule: BlendSchedule.ValueType = BlendSchedule.BLEND_SCHEDULE_TANH
    alpha_total: int = 0
    alpha_per_epoch: bool = False
    learning_rate: float = 0.0
    parameter_count: int = 0
    age: int = 0
    stage_age: int = 0
    embargo_remaining: int = 0
    germinations: int = 0
    isolation_violations: int = 0
    #: Whether a validation measurement has been taken since the seed entered its current stage.
    measured_in_stage: bool = False
    # Measurements (None until measured).
    val_loss_at_germination: float | None = None
    seed_loss_at_training_start: float | None = None
    seed_loss: float | None = None
    seed_loss_delta: float | None = None
    contribution: float | None = None
    contribution_accuracy: float | None = None
    contribution_stderr: float | None = None
    gradient_norm: float | None = None
    activation_rms: float | None = None
    host_gradient_norm: float | None = None
    #: A DORMANT width slot's predicted loss decrease for each of growth_statistics.CANDIDATE_WIDTHS new units.
    predicted_decrease: list[float] | None = None
    #: The seed is paused (COMMAND_PAUSE): its output is held and its lifecycle waits until it is resumed.
    paused: bool = False

    def to_state(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SeedRecord:
        known = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in known})

    def clear_seed(self) -> None:
        """Forget everything about the seed, keeping the slot's counters."""
        germinations, violations = self.germinations, self.isolation_violations
        activation_rms, host_gradient_norm = self.activation_rms, self.host_gradient_norm
        fresh = SeedRecord(
            germinations=germinations,
            isolation_violations=violations,
            activation_rms=activation_rms,
            host_gradient_norm=host_gradient_norm,
        )
        for field in attrs.fields(SeedRecord):
            setattr(self, field.name, getattr(fresh, field.name))


@attrs.define
class Measurement:
    """Per-sample alphas for one fused counterfactual forward (see :mod:`esper_kasmina.evaluation`).

    The batch is replicated ``variants`` times at ``expansion_slot``; chunk ``v`` of every later activation belongs
    to variant ``v``, whose alpha for each measured slot is ``alphas[slot_id][v]``.
    """

    variants: int
    expansion_slot: str
    alphas: dict[str, torch.Tensor]
    batch: int = 0


@attrs.frozen
class ReadPoint:
    """Where a width slot reads: the input or the output of a module that runs before the one it writes."""

    path: str
    side: str  # "input" or "output"
    kind: SlotKind.ValueType
    shape: tuple[int, ...]


class SeedSlot(nn.Module):
    def __init__(
        self,
        slot_id: str,
        kind: SlotKind.ValueType,
        shape: tuple[int, ...],
        depth: int,
        read: ReadPoint | None = None,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.slot_kind = kind
        self.slot_shape = tuple(shape)
        self.layer_depth = depth
        #: For a width slot, where it reads (``None``: a residual slot reads the output it rewrites).
        self.read = read
        self._source: nn.Module | None = None
        self._read_handle: RemovableHandle | None = None
        self._read_value: torch.Tensor | None = None
        self.record = SeedRecord()
        self.register_buffer("alpha_steps", torch.zeros((), dtype=torch.long))
        self.register_module("seed", None)
        self._target: nn.Module | None = None
        self._handle: RemovableHandle | None = None
        self._builder: SeedBuilder | None = None
        self.measurement: Measurement | None = None
        #: TRAINING's pull of the seed's output towards zero (``kasmina.training_curvature``; set by Kasmina).
        self.training_curvature = 0.0
        #: While paused: the seed module that was frozen and the parameters the pause took out of training.
        self._held: tuple[nn.Module, tuple[nn.Parameter, ...]] | None = None
        self.register_load_state_dict_pre_hook(_rebuild_before_load)  # type: ignore[no-untyped-call]

    alpha_steps: torch.Tensor
    seed: nn.Module | None

    # -- wiring -----------------------------------------------------------------------------------------------
    def bind(self, target: nn.Module, builder: SeedBuilder, source: nn.Module | None = None) -> None:
        """Attach to the host module this slot rewrites (and, for a width slot, the one it reads), and to the builder
        that restores seeds."""
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_builder", builder)
        object.__setattr__(self, "_source", source)
        self.sync_hook()

    @property
    def is_width(self) -> bool:
        return self.read is not None

    @property
    def read_kind(self) -> SlotKind.ValueType:
        return self.read.kind if self.read is not None else SlotKind.SLOT_KIND_UNSPECIFIED

    @property
    def read_shape(self) -> tuple[int, ...]:
        return self.read.shape if self.read is not None else ()

    def shape(self) -> SlotShape:
        """What a blueprint is built for here: the activation the seed writes and, for a width slot, the one it
        reads."""
        return SlotShape(self.slot_kind, self.slot_shape, read_kind=self.read_kind, read_shape=self.read_shape)

    def tap_input(self, callback: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call ``callback`` with the seed's input (the host activation it reads) in each forward, before any seed
        changes it; for probes. Remove the returned handle when done."""
        if self.read is None:
            assert self._target is not None
            return self._target.register_forward_hook(lambda _m, _i, out: callback(out), prepend=True)
        assert self._source is not None
        if self.read.side == "input":
            return self._source.register_forward_pre_hook(lambda _m, inputs: callback(inputs[0]), prepend=True)
        return self._source.register_forward_hook(lambda _m, _i, out: callback(out), prepend=True)

    @property
    def stage(self) -> Stage:
        return self.record.stage

    @property
    def hooked(self) -> bool:
        return self._handle is not None

    def sync_hook(self) -> None:
        """Hold a forward hook on the host module exactly while the seed is part of the forward pass, and keep the
        seed's parameters frozen exactly while it is paused."""
        self._sync_pause()
        wanted = self.stage in lifecycle.IN_FORWARD and self.seed is not None and self._target is not None
        if wanted and self._handle is None:
            assert self._target is not None
            if self.read is not None:
                object.__setattr__(self, "_read_handle", self.tap_input(self._keep_read))
            object.__setattr__(self, "_handle", self._target.register_forward_hook(self._rewrite))
        elif not wanted and self._handle is not None:
            self._handle.remove()
            object.__setattr__(self, "_handle", None)
            if self._read_handle is not None:
                self._read_handle.remove()
                object.__setattr__(self, "_read_handle", None)
            object.__setattr__(self, "_read_value", None)

    def _sync_pause(self) -> None:
        """Freeze the seed's trainable parameters while the record says it is paused, and give them back after.

        Freezing is ``requires_grad = False`` with the gradient cleared, not a learning rate of 0: a parameter
        without a gradient is skipped by every ``torch.optim`` optimizer, so its value *and* its optimizer state
        (Adam's moments and step count, momentum) stay bit-identical, even with weight decay, which a zero learning
        rate would not guarantee for the state. Its parameter group stays where it is, so a checkpoint taken while
        paused holds the seed's optimizer state in the usual place.
        """
        seed = self.seed if self.record.paused else None
        if self._held is not None and self._held[0] is not seed:
            for parameter in self._held[1]:
                parameter.requires_grad_(True)
            object.__setattr__(self, "_held", None)
        if seed is not None and self._held is None:
            trainable = tuple(p for p in seed.parameters() if p.requires_grad)
            for parameter in trainable:
                parameter.requires_grad_(False)
                parameter.grad = None
            object.__setattr__(self, "_held", (seed, trainable))

    def install_seed(self, module: nn.Module) -> None:
        self.seed = module

    def remove_seed(self) -> None:
        self.seed = None
        self.sync_hook()

    def seed_parameters(self) -> list[nn.Parameter]:
        """The seed's trainable parameters (those of its optimizer group), including the ones a pause froze."""
        if self.seed is None:
            return []
        if self._held is not None and self._held[0] is self.seed:
            return list(self._held[1])
        return [p for p in self.seed.parameters() if p.requires_grad]

    # -- alpha ------------------------------------------------------------------------------------------------
    def alpha(self) -> float:
        """The blend weight now (reads the step counter: call at decision points, not per batch)."""
        if self.stage == lifecycle.BLENDING:
            total = max(self.record.alpha_total, 1)
            return schedules.alpha_at(self.record.schedule, int(self.alpha_steps.item()) / total)
        return 1.0 if self.stage in (lifecycle.SHADOWING, lifecycle.PROBATIONARY, lifecycle.FOSSILIZED) else 0.0

    def ramp_complete(self) -> bool:
        return int(self.alpha_steps.item()) >= self.record.alpha_total

    # -- the hooks --------------------------------------------------------------------------------------------
    def _keep_read(self, value: torch.Tensor) -> None:
        object.__setattr__(self, "_read_value", value)

    def _seed_input(self, host: torch.Tensor) -> torch.Tensor:
        """What the seed reads in this forward: the host activation it rewrites, or (width) the one kept earlier,
        repeated when a fused counterfactual measurement replicated the batch between the two points."""
        if self.read is None:
            return host
        value = self._read_value
        object.__setattr__(self, "_read_value", None)
        if value is None:
            raise RuntimeError(
                f"width slot {self.slot_id!r}: its read point {self.read.path!r} did not run before the module it "
                "writes in this forward pass"
            )
        if value.shape[0] != host.shape[0]:
            value = value.repeat(host.shape[0] // value.shape[0], *([1] * (value.dim() - 1)))
        return value

    def _rewrite(self, module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
        seed = self.seed
        assert seed is not None
        paused = self.record.paused
        training = module.training and not paused  # a paused seed is held: eval mode, no state moves
        if seed.training != training:  # the seed is outside the host's module tree: follow its mode
            seed.train(training)
        host: torch.Tensor = output
        if self.measurement is not None:
            return self._measured(host, seed, self.measurement)
        source = self._seed_input(host)
        stage = self.record.stage
        if stage == lifecycle.TRAINING:
            contribution: torch.Tensor = self._run_seed(seed, source.detach())
            straight: torch.Tensor = _StraightThrough.apply(host, contribution, self.training_curvature)  # type: ignore[no-untyped-call, unused-ignore]
            return straight
        if stage == lifecycle.BLENDING:
            if module.training and torch.is_grad_enabled() and not self.record.alpha_per_epoch and not paused:
                self.alpha_steps.add_(1)
            alpha = schedules.alpha_tensor(self.record.schedule, self.alpha_steps, self.record.alpha_total, host.dtype)
            blended: torch.Tensor = host + alpha * self._run_seed(seed, source.detach())
            return blended
        detached = stage == lifecycle.SHADOWING  # PROBATIONARY and FOSSILIZED train jointly with the host
        joined: torch.Tensor = host + self._run_seed(seed, source.detach() if detached else source)
        return joined

    def _run_seed(self, seed: nn.Module, source: torch.Tensor) -> torch.Tensor:
        """The seed's output for ``source``. What the seed module raises is its blueprint's catalog's doing: it is
        marked so (esper_core.plugin_failures), with the blueprint and this slot, for Tolaria to roll back, cull
        the seed and quarantine the blueprint. A try costs nothing until something raises."""
        try:
            output: torch.Tensor = seed(source)
        except Exception as error:
            blame(
                error,
                Blame(
                    "blueprint catalog", "", "forward", subject=self.record.blueprint_id, slot=self.slot_id,
                    module=type(seed).__module__,
                ),
            )  # fmt: skip
            raise
        return output

    def _measured(self, host: torch.Tensor, seed: nn.Module, measurement: Measurement) -> torch.Tensor:
        if measurement.expansion_slot == self.slot_id:
            measurement.batch = host.shape[0]
            host = host.repeat(measurement.variants, *([1] * (host.dim() - 1)))
        alphas = measurement.alphas.get(self.slot_id)
        contribution: torch.Tensor = self._run_seed(seed, self._seed_input(host))
        if alphas is None:  # a fossilized seed: the same in every variant
            return host + contribution
        per_sample = alphas.to(host.dtype).repeat_interleave(measurement.batch)
        return host + per_sample.view(-1, *([1] * (host.dim() - 1))) * contribution

    # -- state ------------------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return self.record.to_state()

    def set_extra_state(self, state: Any) -> None:
        self.record = SeedRecord.from_state(state)
        self.sync_hook()

    def extra_repr(self) -> str:
        kind = SlotKind.Name(self.slot_kind).removeprefix("SLOT_KIND_").lower()
        shape = f"{kind}{list(self.slot_shape)}"
        if self.read is not None:
            read_kind = SlotKind.Name(self.read.kind).removeprefix("SLOT_KIND_").lower()
            shape = f"{read_kind}{list(self.read.shape)} -> {shape}"
        text = f"{self.slot_id!r}, {shape}, {lifecycle.stage_name(self.stage)}"
        return f"{text}, {self.record.blueprint_id}" if self.record.blueprint_id else text


def _rebuild_before_load(
    slot: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    _local_metadata: Any,
    _strict: bool,
    _missing: list[str],
    _unexpected: list[str],
    _errors: list[str],
) -> None:
    """Give the slot the seed module the saved state describes, so that the seed's weights load into it."""
    assert isinstance(slot, SeedSlot)
    saved = state_dict.get(prefix + "_extra_state")
    if saved is None:
        return
    record = SeedRecord.from_state(saved)
    has_weights = any(key.startswith(prefix + "seed.") for key in state_dict)
    if record.stage in lifecycle.HAS_SEED and has_weights:
        if slot._builder is None:
            raise RuntimeError(f"slot {slot.slot_id!r} cannot rebuild its seed: it is not bound to a Kasmina")
        slot.record = record
        slot.install_seed(slot._builder(slot, record.blueprint_id, record.parameters))
    else:
        slot.seed = None
