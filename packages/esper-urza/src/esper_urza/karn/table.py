"""Karn's blueprints: descriptors, builders and exact parameter counts.

This module imports no torch: listing blueprints and counting their parameters (``esper blueprints``) stays cheap.
Builders import :mod:`esper_urza.karn.modules` when they run. Each blueprint derives its sizes (groups dividing C,
heads dividing D, hidden widths of at least 1) with the same helper for building and for counting, so the count is
exact by construction; the conformance suite checks it anyway.

Ids keep the prototype's scheme and, where the prototype named the same idea, its id, name, tier, risk and
curriculum stage (BP009 is still ``residual_block``). Prototype ids whose idea is not offered (identity, dropout,
plain activations, cross-attention without a second input, ...) stay unused; blueprints the prototype lacked start
at BP051, and the width blueprints (new channels or neurons between two layers, for width slots) at BP057.

A width blueprint's sizes come from both sides of its slot: what it reads (``slot.input``, the earlier activation)
and what it writes (``slot``). Its ``width`` is the number of new units, an absolute count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import attrs

from esper_core.leyline import BlueprintDescriptor, BlueprintParameterBounds, BlueprintTier, GrowthMode, SlotKind
from esper_core.protocols import SlotShape

if TYPE_CHECKING:
    from torch import nn

CONV = SlotKind.SLOT_KIND_CONV2D
VECTOR = SlotKind.SLOT_KIND_VECTOR
SEQUENCE = SlotKind.SLOT_KIND_SEQUENCE
ALL_KINDS = (CONV, VECTOR, SEQUENCE)
TOKENS = (VECTOR, SEQUENCE)

SAFE = BlueprintTier.BLUEPRINT_TIER_SAFE
EXPERIMENTAL = BlueprintTier.BLUEPRINT_TIER_EXPERIMENTAL
HIGH_RISK = BlueprintTier.BLUEPRINT_TIER_HIGH_RISK

RESIDUAL = GrowthMode.GROWTH_MODE_RESIDUAL
WIDTH = GrowthMode.GROWTH_MODE_WIDTH

Parameters = Mapping[str, float]
Builder = Callable[[SlotShape, Parameters], "nn.Module"]
Counter = Callable[[SlotShape, Parameters], int]


@attrs.frozen(eq=False)
class Blueprint:
    """A descriptor with its builder and its parameter counter. Both receive resolved parameters (every declared
    name present, integer ones rounded; see :func:`esper_urza.parameters.resolve_parameters`) and a slot that
    :func:`esper_urza.parameters.check_slot` accepted (its growth mode, kinds the descriptor lists, well-formed
    shapes)."""

    descriptor: BlueprintDescriptor
    builder: Builder
    counter: Counter


# -- sizes shared by builders and counters --------------------------------------------------------------------------
def features(slot: SlotShape) -> int:
    """The feature width a pointwise map acts on: C for conv2d slots, D for vector and sequence slots."""
    return int(slot.shape[0] if slot.kind == CONV else slot.shape[-1])


def is_conv(slot: SlotShape) -> bool:
    return slot.kind == CONV


def divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    for candidate in range(max(1, min(n, limit)), 0, -1):
        if n % candidate == 0:
            return candidate
    return 1


def whole(parameters: Parameters, name: str) -> int:
    return round(parameters[name])


def _modules() -> ModuleType:
    """The torch-dependent module library, imported on the first build."""
    from esper_urza.karn import modules

    return modules


def linear_count(features_in: int, features_out: int, *, bias: bool = True) -> int:
    return features_in * features_out + (features_out if bias else 0)


def conv_count(channels_in: int, channels_out: int, kernel: int, *, groups: int = 1, bias: bool = True) -> int:
    return channels_out * (channels_in // groups) * kernel * kernel + (channels_out if bias else 0)


# -- descriptor helpers ---------------------------------------------------------------------------------------------
def bound(
    low: float, high: float, default: float, description: str, *, integer: bool = False
) -> BlueprintParameterBounds:
    return BlueprintParameterBounds(
        min_value=float(low),
        max_value=float(high),
        default_value=float(default),
        integer=integer,
        description=description,
    )


def blueprint(
    blueprint_id: str,
    name: str,
    *,
    tier: BlueprintTier.ValueType,
    risk: float,
    stage: int,
    kinds: tuple[SlotKind.ValueType, ...],
    description: str,
    builder: Builder,
    counter: Counter,
    parameters: Mapping[str, BlueprintParameterBounds] | None = None,
    reads: tuple[SlotKind.ValueType, ...] = (),
) -> Blueprint:
    """A Karn blueprint. ``kinds`` are the kinds it writes into; ``reads``, given only for a width blueprint, the
    kinds it reads (a blueprint with ``reads`` is a width blueprint, any other a residual one)."""
    descriptor = BlueprintDescriptor(
        blueprint_id=blueprint_id,
        name=name,
        tier=tier,
        risk=risk,
        stage=stage,
        quarantine_only=tier == HIGH_RISK,
        approval_required=tier != SAFE,
        description=description,
        slot_kinds=list(kinds),
        catalog="karn",
        growth_mode=WIDTH if reads else RESIDUAL,
        read_kinds=list(reads),
    )
    for key, value in (parameters or {}).items():
        descriptor.allowed_parameters[key].CopyFrom(value)
    return Blueprint(descriptor, builder, counter)


# -- the catalog ----------------------------------------------------------------------------------------------------
def _groups(slot: SlotShape, p: Parameters) -> int:
    return divisor_at_most(features(slot), whole(p, "groups"))


def _inner(slot: SlotShape, p: Parameters) -> int:
    return max(1, features(slot) // whole(p, "reduction"))


def _heads(slot: SlotShape, p: Parameters) -> int:
    return divisor_at_most(features(slot), whole(p, "heads"))


def _rank(slot: SlotShape, p: Parameters) -> int:
    return min(whole(p, "rank"), features(slot))


def _transformer_count(slot: SlotShape, p: Parameters) -> int:
    d = features(slot)
    per_layer = 2 * d + 4 * d * d + 4 * d + 2 * d + linear_count(d, 2 * d) + linear_count(2 * d, d)
    return whole(p, "layers") * per_layer


def _dense_count(slot: SlotShape, p: Parameters) -> int:
    c, g = features(slot), whole(p, "growth_rate")
    return conv_count(c, g, 3) + conv_count(c + g, g, 3) + conv_count(c + 2 * g, c, 1)


def _moe_count(slot: SlotShape, p: Parameters) -> int:
    f, e = features(slot), whole(p, "experts")
    h = 2 * f
    return linear_count(f, e) + e * (f * h + h + h * f + f)


def _nas_count(slot: SlotShape, p: Parameters) -> int:
    c = features(slot)
    return conv_count(c, c, 3) + conv_count(c, c, 5, groups=c) + conv_count(c, c, 3, groups=c) + 4 + conv_count(c, c, 1)


def _stressor_count(slot: SlotShape, p: Parameters) -> int:
    return linear_count(features(slot), features(slot))


# -- width sizes: both sides of the slot -----------------------------------------------------------------------------
def read_features(slot: SlotShape) -> int:
    """The feature width of what a width slot reads (C or D)."""
    return features(slot.input)


def _kernel(p: Parameters) -> int:
    """The conv kernel's side: odd, so that padding k // 2 keeps the map's size (an even value means the next odd)."""
    kernel = whole(p, "kernel")
    return kernel if kernel % 2 else kernel + 1


def _pool(slot: SlotShape, p: Parameters) -> int:
    """The head pool's side: 0 (a global average) or ``pool`` lowered to the read map's smaller side."""
    pool = whole(p, "pool")
    _, height, width = slot.read_shape
    return 0 if pool == 0 else min(pool, height, width)


def _cells(slot: SlotShape, p: Parameters) -> int:
    """Positions per new channel after the head pool (1 for a global average; a p x p max-pool floors, as
    ``nn.MaxPool2d`` does)."""
    pool = _pool(slot, p)
    _, height, width = slot.read_shape
    return 1 if pool == 0 else (height // pool) * (width // pool)


def _tokens(slot: SlotShape) -> int:
    """Feature dimensions of a sequence width slot, whose two sides must have one length (the growth is per token)."""
    read_length, length = int(slot.read_shape[0]), int(slot.shape[0])
    if read_length != length:
        raise ValueError(
            f"BP060 (feedforward_growth) grows feed-forward neurons token by token, so it reads and writes sequences "
            f"of one length; {slot.describe()} reads {read_length} tokens and writes {length}: choose a width slot "
            "within one sequence length"
        )
    return length


def _channel_growth(slot: SlotShape, p: Parameters) -> nn.Module:
    _, height, width = slot.shape
    module: nn.Module = _modules().ChannelGrowth(
        read_features(slot), whole(p, "width"), _kernel(p), features(slot), (int(height), int(width))
    )
    return module


def _channel_growth_count(slot: SlotShape, p: Parameters) -> int:
    grown = whole(p, "width")
    return conv_count(read_features(slot), grown, _kernel(p)) + conv_count(grown, features(slot), 3)


def _head_growth(slot: SlotShape, p: Parameters) -> nn.Module:
    module: nn.Module = _modules().HeadChannelGrowth(
        read_features(slot), whole(p, "width"), _kernel(p), _pool(slot, p), _cells(slot, p), features(slot)
    )
    return module


def _head_growth_count(slot: SlotShape, p: Parameters) -> int:
    grown = whole(p, "width")
    return conv_count(read_features(slot), grown, _kernel(p)) + linear_count(grown * _cells(slot, p), features(slot))


def _neuron_count(slot: SlotShape, p: Parameters) -> int:
    return linear_count(read_features(slot), whole(p, "width")) + linear_count(whole(p, "width"), features(slot))


def _feedforward_growth(slot: SlotShape, p: Parameters) -> nn.Module:
    _tokens(slot)
    module: nn.Module = _modules().FeedForwardGrowth(read_features(slot), whole(p, "width"), features(slot))
    return module


def _feedforward_count(slot: SlotShape, p: Parameters) -> int:
    _tokens(slot)
    return _neuron_count(slot, p)


def _width(default: int, unit: str) -> BlueprintParameterBounds:
    return bound(1, 256, default, f"new {unit} (an absolute count)", integer=True)


_KERNEL = bound(
    1, 5, 3, "side of the new channels' convolution: 1, 3 or 5 (an even value means the next odd)", integer=True
)


def default_blueprints() -> list[Blueprint]:
    """Every blueprint Karn offers, in id order."""
    m = _modules
    f = features
    return [
        blueprint(
            "BP002",
            "linear_projection",
            tier=SAFE,
            risk=0.1,
            stage=0,
            kinds=ALL_KINDS,
            description=(
                "A learned linear map of the features (1x1 convolution on conv2d slots), scaled; starts at zero."
            ),
            builder=lambda s, p: m().LinearProjection(is_conv(s), f(s), p["scale"]),
            counter=lambda s, p: linear_count(f(s), f(s)),
            parameters={
                "scale": bound(0.5, 2.0, 1.0, "multiplier of the projection's output (an effective learning-rate knob)")
            },
        ),
        blueprint(
            "BP003",
            "layer_norm_basic",
            tier=SAFE,
            risk=0.1,
            stage=0,
            kinds=ALL_KINDS,
            description="Layer normalization over the features at each position, with gain and shift starting at zero.",
            builder=lambda s, p: m().FeatureLayerNorm(is_conv(s), f(s), p["epsilon"]),
            counter=lambda s, p: 2 * f(s),
            parameters={"epsilon": bound(1e-6, 1e-3, 1e-5, "added to the variance for numerical stability")},
        ),
        blueprint(
            "BP009",
            "residual_block",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(CONV,),
            description=(
                "A residual stack of 3x3 convolutions with ReLU between them; the last convolution starts at zero."
            ),
            builder=lambda s, p: m().ConvStack(f(s), whole(p, "depth")),
            counter=lambda s, p: whole(p, "depth") * conv_count(f(s), f(s), 3),
            parameters={"depth": bound(1, 4, 2, "number of 3x3 convolutions", integer=True)},
        ),
        blueprint(
            "BP012",
            "layer_scaling",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=ALL_KINDS,
            description="Layer scale: a learned per-feature gain on the activation, starting at zero.",
            builder=lambda s, p: m().LayerScale(is_conv(s), f(s)),
            counter=lambda s, p: f(s),
        ),
        blueprint(
            "BP013",
            "grouped_conv",
            tier=SAFE,
            risk=0.4,
            stage=1,
            kinds=(CONV,),
            description=(
                "A grouped 3x3 convolution (ResNeXt cardinality) and a zero-initialized 1x1 that mixes the groups."
            ),
            builder=lambda s, p: m().GroupedConv(f(s), _groups(s, p)),
            counter=lambda s, p: conv_count(f(s), f(s), 3, groups=_groups(s, p)) + conv_count(f(s), f(s), 1),
            parameters={
                "groups": bound(2, 8, 4, "groups of the 3x3 convolution (lowered to a divisor of C)", integer=True)
            },
        ),
        blueprint(
            "BP014",
            "highway_gate",
            tier=SAFE,
            risk=0.4,
            stage=1,
            kinds=ALL_KINDS,
            description=(
                "A highway layer's gated path: sigmoid(W_t x + b_t) * (W_h x + b_h), the transform starting at zero."
            ),
            builder=lambda s, p: m().HighwayGate(is_conv(s), f(s), p["gate_bias"]),
            counter=lambda s, p: 2 * linear_count(f(s), f(s)),
            parameters={"gate_bias": bound(-3.0, 3.0, -1.0, "initial bias of the gate (negative: mostly closed)")},
        ),
        blueprint(
            "BP015",
            "depthwise_separable",
            tier=SAFE,
            risk=0.4,
            stage=2,
            kinds=(CONV,),
            description=(
                "A depthwise (2r+1)² convolution, GELU, and a zero-initialized pointwise convolution (MobileNet v1)."
            ),
            builder=lambda s, p: m().DepthwiseSeparable(f(s), whole(p, "radius")),
            counter=lambda s, p: (
                conv_count(f(s), f(s), 2 * whole(p, "radius") + 1, groups=f(s)) + conv_count(f(s), f(s), 1)
            ),
            parameters={
                "radius": bound(1, 3, 1, "kernel radius: the depthwise kernel is (2r+1) x (2r+1)", integer=True)
            },
        ),
        blueprint(
            "BP016",
            "squeeze_excitation",
            tier=SAFE,
            risk=0.4,
            stage=2,
            kinds=(CONV,),
            description="Squeeze-and-excitation: channel gates from globally pooled features through a bottleneck MLP.",
            builder=lambda s, p: m().SqueezeExcitation(f(s), _inner(s, p)),
            counter=lambda s, p: linear_count(f(s), _inner(s, p)) + linear_count(_inner(s, p), f(s)),
            parameters={
                "reduction": bound(4, 16, 4, "bottleneck reduction: hidden width max(1, C // reduction)", integer=True)
            },
        ),
        blueprint(
            "BP017",
            "channel_attention",
            tier=SAFE,
            risk=0.4,
            stage=2,
            kinds=(CONV,),
            description=(
                "ECA-style channel attention: a 1-D convolution across channels of avg- and max-pooled descriptors."
            ),
            builder=lambda s, p: m().ChannelAttention(whole(p, "radius")),
            counter=lambda s, p: 2 * (2 * whole(p, "radius") + 1) + 1,
            parameters={
                "radius": bound(1, 3, 1, "neighbouring channels each side that inform a channel's gate", integer=True)
            },
        ),
        blueprint(
            "BP018",
            "spatial_attention",
            tier=SAFE,
            risk=0.4,
            stage=2,
            kinds=(CONV,),
            description=(
                "CBAM-style spatial attention: a (2r+1)² convolution over channel-mean and channel-max maps "
                "gates positions."
            ),
            builder=lambda s, p: m().SpatialAttention(whole(p, "radius")),
            counter=lambda s, p: conv_count(2, 1, 2 * whole(p, "radius") + 1),
            parameters={"radius": bound(1, 3, 3, "kernel radius: the gate's kernel is (2r+1) x (2r+1)", integer=True)},
        ),
        blueprint(
            "BP021",
            "feedforward_gated",
            tier=SAFE,
            risk=0.5,
            stage=2,
            kinds=TOKENS,
            description="A SwiGLU feed-forward: W_out (silu(W_gate x) * W_value x), without biases.",
            builder=lambda s, p: m().GatedFeedForward(f(s), f(s) * whole(p, "hidden_multiple")),
            counter=lambda s, p: 3 * f(s) * f(s) * whole(p, "hidden_multiple"),
            parameters={"hidden_multiple": bound(2, 6, 2, "hidden width as a multiple of D", integer=True)},
        ),
        blueprint(
            "BP022",
            "multi_head_attention",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(SEQUENCE,),
            description="Multi-head scaled dot-product self-attention over the sequence.",
            builder=lambda s, p: m().MultiHeadSelfAttention(f(s), _heads(s, p)),
            counter=lambda s, p: linear_count(f(s), 3 * f(s)) + linear_count(f(s), f(s)),
            parameters={"heads": bound(1, 8, 4, "attention heads (lowered to a divisor of D)", integer=True)},
        ),
        blueprint(
            "BP023",
            "transformer_block",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(SEQUENCE,),
            description=(
                "Pre-norm transformer layers: self-attention and a GELU MLP (2 x D hidden), each a residual branch."
            ),
            builder=lambda s, p: m().TransformerBlock(f(s), _heads(s, p), whole(p, "layers"), 2 * f(s)),
            counter=_transformer_count,
            parameters={
                "layers": bound(1, 3, 1, "transformer layers", integer=True),
                "heads": bound(1, 8, 4, "attention heads (lowered to a divisor of D)", integer=True),
            },
        ),
        blueprint(
            "BP025",
            "dynamic_conv",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(CONV,),
            description="Dynamic convolution: each sample's 3x3 kernel is a routed mixture of expert kernels.",
            builder=lambda s, p: m().DynamicConv(f(s), whole(p, "experts")),
            counter=lambda s, p: (
                linear_count(f(s), whole(p, "experts")) + whole(p, "experts") * conv_count(f(s), f(s), 3)
            ),
            parameters={"experts": bound(2, 8, 4, "expert kernels mixed per sample", integer=True)},
        ),
        blueprint(
            "BP026",
            "adaptive_pooling",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(CONV,),
            description=(
                "Coarse context: adaptive average pooling, a 1x1 MLP, bilinear upsampling back to the slot's size."
            ),
            builder=lambda s, p: m().PooledContext(f(s), whole(p, "output_size")),
            counter=lambda s, p: 2 * conv_count(f(s), f(s), 1),
            parameters={"output_size": bound(1, 4, 2, "side of the pooled grid (1: global context)", integer=True)},
        ),
        blueprint(
            "BP028",
            "dense_connection",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(CONV,),
            description=(
                "A two-layer DenseNet block: each 3x3 layer sees all earlier features and adds growth_rate channels."
            ),
            builder=lambda s, p: m().DenseConnection(f(s), whole(p, "growth_rate")),
            counter=_dense_count,
            parameters={"growth_rate": bound(4, 32, 8, "channels each dense layer adds", integer=True)},
        ),
        blueprint(
            "BP031",
            "temporal_conv",
            tier=SAFE,
            risk=0.5,
            stage=4,
            kinds=(SEQUENCE,),
            description=(
                "A causal, dilated depthwise convolution along the sequence (a TCN layer) and a feature mixing."
            ),
            builder=lambda s, p: m().CausalTemporalConv(f(s), whole(p, "dilation")),
            counter=lambda s, p: 4 * f(s) + linear_count(f(s), f(s)),
            parameters={"dilation": bound(1, 5, 1, "gap between the three taps (t, t-d, t-2d)", integer=True)},
        ),
        blueprint(
            "BP032",
            "dilated_conv",
            tier=SAFE,
            risk=0.5,
            stage=4,
            kinds=(CONV,),
            description=(
                "A dilated 3x3 convolution (a wider receptive field at the same cost) and a zero-initialized 1x1."
            ),
            builder=lambda s, p: m().DilatedConv(f(s), whole(p, "dilation")),
            counter=lambda s, p: conv_count(f(s), f(s), 3) + conv_count(f(s), f(s), 1),
            parameters={"dilation": bound(1, 8, 2, "dilation of the 3x3 kernel", integer=True)},
        ),
        blueprint(
            "BP034",
            "non_local_block",
            tier=SAFE,
            risk=0.5,
            stage=4,
            kinds=(CONV,),
            description="A non-local block: every position attends to every other over the whole feature map.",
            builder=lambda s, p: m().NonLocalBlock(f(s), _inner(s, p)),
            counter=lambda s, p: 3 * conv_count(f(s), _inner(s, p), 1) + conv_count(_inner(s, p), f(s), 1),
            parameters={"reduction": bound(1, 4, 2, "embedding width max(1, C // reduction)", integer=True)},
        ),
        blueprint(
            "BP035",
            "learned_positional",
            tier=SAFE,
            risk=0.5,
            stage=4,
            kinds=(SEQUENCE,),
            description="A learned embedding per sequence position, added to every sample.",
            builder=lambda s, p: m().LearnedPositional(int(s.shape[0]), f(s)),
            counter=lambda s, p: int(s.shape[0]) * f(s),
        ),
        blueprint(
            "BP036",
            "mixture_of_experts",
            tier=EXPERIMENTAL,
            risk=0.7,
            stage=5,
            kinds=TOKENS,
            description="A mixture of two-layer MLP experts (2 x D hidden) behind a learned top-k router.",
            builder=lambda s, p: m().MixtureOfExperts(f(s), whole(p, "experts"), whole(p, "top_k"), 2 * f(s)),
            counter=_moe_count,
            parameters={
                "experts": bound(2, 8, 4, "expert MLPs", integer=True),
                "top_k": bound(1, 2, 2, "experts each input is routed to", integer=True),
            },
        ),
        blueprint(
            "BP038",
            "memory_augmented",
            tier=EXPERIMENTAL,
            risk=0.8,
            stage=5,
            kinds=TOKENS,
            description="Attention from each input to a learned key-value memory.",
            builder=lambda s, p: m().MemoryAugmented(f(s), whole(p, "memory_slots")),
            counter=lambda s, p: linear_count(f(s), f(s)) + 2 * whole(p, "memory_slots") * f(s),
            parameters={"memory_slots": bound(8, 64, 16, "learned memory entries", integer=True)},
        ),
        blueprint(
            "BP039",
            "neural_ode_block",
            tier=EXPERIMENTAL,
            risk=0.8,
            stage=5,
            kinds=TOKENS,
            description=(
                "A neural ODE: dh/dt = f(h) integrated over unit time with Euler steps (weights shared across steps)."
            ),
            builder=lambda s, p: m().NeuralODE(f(s), whole(p, "steps")),
            counter=lambda s, p: linear_count(f(s), 2 * f(s)) + linear_count(2 * f(s), f(s)),
            parameters={"steps": bound(1, 8, 4, "Euler steps", integer=True)},
        ),
        blueprint(
            "BP040",
            "differentiable_nas",
            tier=EXPERIMENTAL,
            risk=0.8,
            stage=5,
            kinds=(CONV,),
            description="A DARTS mixed operation: conv, depthwise and pooling candidates blended by learned weights.",
            builder=lambda s, p: m().MixedOperation(f(s), p["temperature"]),
            counter=_nas_count,
            parameters={"temperature": bound(0.5, 2.0, 1.0, "softmax temperature of the architecture weights")},
        ),
        blueprint(
            "BP043",
            "exploding_gradient",
            tier=HIGH_RISK,
            risk=0.9,
            stage=6,
            kinds=ALL_KINDS,
            description=(
                "STRESSOR: multiplies the gradient of its output by 10^log10_factor (inf in float32 from 10^39)."
            ),
            builder=lambda s, p: m().ExplodingGradient(is_conv(s), f(s), p["log10_factor"]),
            counter=_stressor_count,
            parameters={"log10_factor": bound(3.0, 40.0, 40.0, "log10 of the gradient multiplier")},
        ),
        blueprint(
            "BP045",
            "nan_injection",
            tier=HIGH_RISK,
            risk=1.0,
            stage=6,
            kinds=ALL_KINDS,
            description="STRESSOR: emits NaN in a share of its output elements (at least one).",
            builder=lambda s, p: m().NaNInjection(is_conv(s), f(s), p["frequency"]),
            counter=_stressor_count,
            parameters={"frequency": bound(0.01, 0.5, 0.1, "share of output elements that are NaN (at most half)")},
        ),
        blueprint(
            "BP046",
            "slow_forward",
            tier=HIGH_RISK,
            risk=1.0,
            stage=6,
            kinds=ALL_KINDS,
            description=(
                "STRESSOR: a pathologically slow forward (sleeps delay_ms first); the prototype's infinite "
                "loop, bounded."
            ),
            builder=lambda s, p: m().SlowForward(is_conv(s), f(s), p["delay_ms"]),
            counter=_stressor_count,
            parameters={"delay_ms": bound(5, 500, 100, "sleep before every forward, in milliseconds", integer=True)},
        ),
        blueprint(
            "BP051",
            "bottleneck",
            tier=SAFE,
            risk=0.3,
            stage=2,
            kinds=(CONV,),
            description="ResNet's bottleneck: 1x1 reduction, 3x3, and a zero-initialized 1x1 expansion.",
            builder=lambda s, p: m().Bottleneck(f(s), _inner(s, p)),
            counter=lambda s, p: (
                conv_count(f(s), _inner(s, p), 1)
                + conv_count(_inner(s, p), _inner(s, p), 3)
                + conv_count(_inner(s, p), f(s), 1)
            ),
            parameters={"reduction": bound(2, 8, 4, "inner width max(1, C // reduction)", integer=True)},
        ),
        blueprint(
            "BP052",
            "residual_mlp",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=TOKENS,
            description="A residual MLP: linear, GELU, zero-initialized linear.",
            builder=lambda s, p: m().ResidualMLP(f(s), f(s) * whole(p, "hidden_multiple")),
            counter=lambda s, p: (
                linear_count(f(s), f(s) * whole(p, "hidden_multiple"))
                + linear_count(f(s) * whole(p, "hidden_multiple"), f(s))
            ),
            parameters={"hidden_multiple": bound(1, 4, 2, "hidden width as a multiple of D", integer=True)},
        ),
        blueprint(
            "BP053",
            "lora_adapter",
            tier=SAFE,
            risk=0.2,
            stage=1,
            kinds=ALL_KINDS,
            description="A low-rank (LoRA-style) adapter: (alpha / r) B A x with rank r, B starting at zero.",
            builder=lambda s, p: m().LowRankAdapter(is_conv(s), f(s), _rank(s, p), p["alpha"]),
            counter=lambda s, p: 2 * f(s) * _rank(s, p),
            parameters={
                "rank": bound(1, 16, 4, "rank r of the update (lowered to the feature width)", integer=True),
                "alpha": bound(1.0, 32.0, 8.0, "scale numerator: the update is multiplied by alpha / r"),
            },
        ),
        blueprint(
            "BP054",
            "inverted_residual",
            tier=SAFE,
            risk=0.4,
            stage=2,
            kinds=(CONV,),
            description=(
                "MobileNet v2's inverted residual: 1x1 expansion, depthwise 3x3, zero-initialized 1x1 projection."
            ),
            builder=lambda s, p: m().InvertedResidual(f(s), f(s) * whole(p, "expansion")),
            counter=lambda s, p: (
                conv_count(f(s), f(s) * whole(p, "expansion"), 1)
                + conv_count(
                    f(s) * whole(p, "expansion"), f(s) * whole(p, "expansion"), 3, groups=f(s) * whole(p, "expansion")
                )
                + conv_count(f(s) * whole(p, "expansion"), f(s), 1)
            ),
            parameters={"expansion": bound(2, 6, 4, "expanded width as a multiple of C", integer=True)},
        ),
        blueprint(
            "BP056",
            "wide_residual",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(CONV,),
            description=(
                "A 3x3 convolution out to an absolute width, ReLU, zero-initialized 1x1 back: capacity at narrow slots."
            ),
            builder=lambda s, p: m().WideResidual(f(s), whole(p, "width")),
            counter=lambda s, p: conv_count(f(s), whole(p, "width"), 3) + conv_count(whole(p, "width"), f(s), 1),
            parameters={
                "width": bound(4, 128, 32, "channels of the hidden layer (absolute, not a multiple of C)", integer=True)
            },
        ),
        blueprint(
            "BP055",
            "token_mixing_mlp",
            tier=SAFE,
            risk=0.5,
            stage=3,
            kinds=(SEQUENCE,),
            description="MLP-Mixer token mixing: an MLP across sequence positions, shared by all features.",
            builder=lambda s, p: m().TokenMixingMLP(int(s.shape[0]), int(s.shape[0]) * whole(p, "hidden_multiple")),
            counter=lambda s, p: (
                linear_count(int(s.shape[0]), int(s.shape[0]) * whole(p, "hidden_multiple"))
                + linear_count(int(s.shape[0]) * whole(p, "hidden_multiple"), int(s.shape[0]))
            ),
            parameters={"hidden_multiple": bound(1, 4, 2, "hidden width as a multiple of L", integer=True)},
        ),
        # -- width blueprints: z_B <- z_B + s(a_A), new units between two layers -----------------------------------
        blueprint(
            "BP057",
            "channel_growth",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(CONV,),
            reads=(CONV,),
            description=(
                "New channels in a conv layer: a kxk conv of the read map, ReLU, max-pooled onto the written map, "
                "and a zero-initialized 3x3 conv into it."
            ),
            builder=_channel_growth,
            counter=_channel_growth_count,
            parameters={"width": _width(8, "channels"), "kernel": _KERNEL},
        ),
        blueprint(
            "BP058",
            "head_channel_growth",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(VECTOR,),
            reads=(CONV,),
            description=(
                "New channels in the last conv block: a kxk conv, ReLU, a pool (global average, or pxp max), flattened "
                "into a zero-initialized linear map."
            ),
            builder=_head_growth,
            counter=_head_growth_count,
            parameters={
                "width": _width(8, "channels"),
                "kernel": _KERNEL,
                "pool": bound(
                    0,
                    8,
                    2,
                    "0: global average over space (a gap head); p: p x p max-pool before the flatten (lowered to the "
                    "map's side)",
                    integer=True,
                ),
            },
        ),
        blueprint(
            "BP059",
            "neuron_growth",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(VECTOR,),
            reads=(VECTOR,),
            description=(
                "New neurons in a linear layer: a linear map of the read vector, ReLU, and a zero-initialized linear."
            ),
            builder=lambda s, p: m().NeuronGrowth(read_features(s), whole(p, "width"), f(s)),
            counter=_neuron_count,
            parameters={"width": _width(32, "neurons")},
        ),
        blueprint(
            "BP060",
            "feedforward_growth",
            tier=SAFE,
            risk=0.3,
            stage=1,
            kinds=(SEQUENCE,),
            reads=(SEQUENCE,),
            description=(
                "New feed-forward neurons of a sequence model: per token, linear, GELU, a zero-initialized linear."
            ),
            builder=_feedforward_growth,
            counter=_feedforward_count,
            parameters={"width": _width(64, "feed-forward neurons")},
        ),
    ]
