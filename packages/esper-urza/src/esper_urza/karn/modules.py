# mypy: disable-error-code="no-any-return"
# (nn.Module.__call__ is typed as returning Any; every forward here returns a Tensor.)
"""The seed modules Karn's blueprints build. Each computes only a residual DELTA: the slot adds its output to the
host activation, so there is no identity path inside, and the last projection (or a final scale) starts at zero so a
freshly grafted seed changes nothing until it has learned something.

Width modules (the last section) serve width slots, ``z_B <- z_B + s(a_A)``: they read an earlier activation and
write into a later one, computing exactly what ``width`` more channels or neurons in the host layer between the two
would add, and start at exactly zero. Each has the :class:`esper_core.protocols.WidthSeed` structure (``grow_in``,
``grow_out``, ``hidden``), so that an executor can initialise the new units from the host's statistics.

Shapes (batch first): conv2d ``(N, C, H, W)``, vector ``(N, D)``, sequence ``(N, L, D)``. "Features" means ``C`` for
conv2d slots and ``D`` otherwise. Every constructor takes already-resolved sizes (see :mod:`esper_urza.karn.table`,
which computes the same sizes to count parameters without building).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn
from torch.nn import functional


def zero_(layer: nn.Module) -> nn.Module:
    """Zero every parameter of ``layer`` in place (the output projection of a seed)."""
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
    return layer


def pointwise(conv: bool, features_in: int, features_out: int, *, bias: bool = True, zero: bool = False) -> nn.Module:
    """A linear map over the feature dimension: a 1x1 convolution for conv2d slots, ``nn.Linear`` otherwise."""
    layer: nn.Module = (
        nn.Conv2d(features_in, features_out, 1, bias=bias) if conv else nn.Linear(features_in, features_out, bias=bias)
    )
    return zero_(layer) if zero else layer


def _channels_last(x: Tensor, conv: bool) -> Tensor:
    return x.permute(0, 2, 3, 1) if conv else x


def _channels_first(x: Tensor, conv: bool) -> Tensor:
    return x.permute(0, 3, 1, 2) if conv else x


# -- any slot kind --------------------------------------------------------------------------------------------------
class LinearProjection(nn.Module):
    """``scale * (W x + b)`` over the features, ``W`` and ``b`` starting at zero."""

    def __init__(self, conv: bool, features: int, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.projection = pointwise(conv, features, features, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.projection(x)


class FeatureLayerNorm(nn.Module):
    """Layer normalization over the features at each position, with gain and shift starting at zero."""

    def __init__(self, conv: bool, features: int, epsilon: float) -> None:
        super().__init__()
        self.conv = conv
        self.epsilon = float(epsilon)
        self.weight = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        y = functional.layer_norm(
            _channels_last(x, self.conv), (self.weight.numel(),), self.weight, self.bias, self.epsilon
        )
        return _channels_first(y, self.conv)


class LayerScale(nn.Module):
    """A learned per-feature gain on the activation itself, starting at zero (CaiT's layer scale as a delta)."""

    def __init__(self, conv: bool, features: int) -> None:
        super().__init__()
        self.conv = conv
        self.gamma = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.gamma.view(1, -1, 1, 1) if self.conv else self.gamma
        return x * gamma


class HighwayGate(nn.Module):
    """``sigmoid(W_t x + b_t) * (W_h x + b_h)``: a learned gate over a learned transform (which starts at zero)."""

    def __init__(self, conv: bool, features: int, gate_bias: float) -> None:
        super().__init__()
        self.gate = pointwise(conv, features, features)
        with torch.no_grad():
            bias = self.gate.bias
            assert isinstance(bias, Tensor)
            bias.fill_(float(gate_bias))
        self.transform = pointwise(conv, features, features, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.gate(x)) * self.transform(x)


class LowRankAdapter(nn.Module):
    """LoRA-style ``(alpha / r) * B A x`` over the features: A projects down to rank r, B (zero) back up."""

    def __init__(self, conv: bool, features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scale = float(alpha) / rank
        self.down = pointwise(conv, features, rank, bias=False)
        self.up = pointwise(conv, rank, features, bias=False, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.up(self.down(x))


# -- conv2d slots ---------------------------------------------------------------------------------------------------
class ConvStack(nn.Module):
    """``depth`` 3x3 convolutions with ReLU between them; the last one starts at zero (a plain residual block)."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        zero_(layers[-1])
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class GroupedConv(nn.Module):
    """A grouped 3x3 convolution (ResNeXt-style cardinality) and a zero-initialized 1x1 that mixes the groups."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        self.mix = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(functional.relu(self.grouped(x)))


class DepthwiseSeparable(nn.Module):
    """A depthwise k x k convolution, GELU, and a zero-initialized pointwise convolution (MobileNet v1)."""

    def __init__(self, channels: int, radius: int) -> None:
        super().__init__()
        kernel = 2 * radius + 1
        self.depthwise = nn.Conv2d(channels, channels, kernel, padding=radius, groups=channels)
        self.pointwise = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(functional.gelu(self.depthwise(x)))


class InvertedResidual(nn.Module):
    """MobileNet v2's block: 1x1 expansion, depthwise 3x3, zero-initialized 1x1 projection back to C."""

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(channels, expanded, 1)
        self.depthwise = nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded)
        self.project = zero_(nn.Conv2d(expanded, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(functional.relu6(self.depthwise(functional.relu6(self.expand(x)))))


class WideResidual(nn.Module):
    """A 3x3 convolution out to ``width`` channels (an absolute width, not a multiple of C), ReLU, and a
    zero-initialized 1x1 back to C: grows capacity at a narrow slot, where multiples of C stay small."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.widen = nn.Conv2d(channels, width, 3, padding=1)
        self.project = zero_(nn.Conv2d(width, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(functional.relu(self.widen(x)))


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1 reduction to ``inner`` channels, 3x3, zero-initialized 1x1 expansion."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, inner, 1)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1)
        self.expand = zero_(nn.Conv2d(inner, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(functional.relu(self.conv(functional.relu(self.reduce(x)))))


class DilatedConv(nn.Module):
    """A dilated 3x3 convolution (a wider receptive field at the same cost) and a zero-initialized 1x1."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.mix = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(functional.relu(self.dilated(x)))


class SqueezeExcitation(nn.Module):
    """Channel gates from globally pooled features through a bottleneck MLP: ``x * tanh(MLP(avgpool(x)))``.

    ``tanh`` (not the sigmoid of SENet) so that a zero-initialized last layer gives a zero delta.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, hidden)
        self.expand = zero_(nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.tanh(self.expand(functional.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ChannelAttention(nn.Module):
    """ECA-style channel attention: a 1-D convolution across the channel axis of the average- and max-pooled
    descriptors gives each channel a gate (no bottleneck MLP; a handful of parameters)."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.conv = zero_(nn.Conv1d(2, 1, 2 * radius + 1, padding=radius))

    def forward(self, x: Tensor) -> Tensor:
        descriptor = torch.stack((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)  # (N, 2, C)
        gate = torch.tanh(self.conv(descriptor))  # (N, 1, C)
        return x * gate.squeeze(1)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: a k x k convolution over the channel-mean and channel-max maps gives each
    position a gate shared by all channels."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.conv = zero_(nn.Conv2d(2, 1, 2 * radius + 1, padding=radius))

    def forward(self, x: Tensor) -> Tensor:
        maps = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        return x * torch.tanh(self.conv(maps))


class DynamicConv(nn.Module):
    """Dynamic convolution (CondConv): each sample's 3x3 kernel is a softmax-weighted mixture of ``experts`` kernels,
    the weights routed from its pooled features. The expert kernels start at zero."""

    def __init__(self, channels: int, experts: int) -> None:
        super().__init__()
        self.router = nn.Linear(channels, experts)
        self.weight = nn.Parameter(torch.zeros(experts, channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(experts, channels))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        mixture = torch.softmax(self.router(x.mean(dim=(2, 3))), dim=-1)  # (N, E)
        kernels = torch.einsum("ne,eoikl->noikl", mixture, self.weight).reshape(batch * channels, channels, 3, 3)
        bias = (mixture @ self.bias).reshape(batch * channels)
        out = functional.conv2d(x.reshape(1, batch * channels, height, width), kernels, bias, padding=1, groups=batch)
        return out.view(batch, channels, height, width)


class PooledContext(nn.Module):
    """Context at a coarser scale: adaptive average pooling to ``size x size``, a two-layer 1x1 MLP (the last layer
    zero), and bilinear upsampling back to the slot's resolution."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.hidden = nn.Conv2d(channels, channels, 1)
        self.out = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pooled = functional.adaptive_avg_pool2d(x, (min(self.size, height), min(self.size, width)))
        context = self.out(functional.relu(self.hidden(pooled)))
        return functional.interpolate(context, size=(height, width), mode="bilinear", align_corners=False)


class DenseConnection(nn.Module):
    """A two-layer DenseNet block: each 3x3 layer sees the concatenation of everything before it and adds
    ``growth`` channels; a zero-initialized 1x1 fuses the concatenation back to C."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, growth, 3, padding=1)
        self.second = nn.Conv2d(channels + growth, growth, 3, padding=1)
        self.fuse = zero_(nn.Conv2d(channels + 2 * growth, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        first = functional.relu(self.first(x))
        features = torch.cat((x, first), dim=1)
        second = functional.relu(self.second(features))
        return self.fuse(torch.cat((features, second), dim=1))


class NonLocalBlock(nn.Module):
    """A non-local (embedded Gaussian) block: every position attends to every other over the whole feature map,
    through ``inner``-channel embeddings; the output 1x1 starts at zero."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = zero_(nn.Conv2d(inner, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, m)
        key = self.phi(x).flatten(2).transpose(1, 2)
        value = self.g(x).flatten(2).transpose(1, 2)
        attended = functional.scaled_dot_product_attention(query, key, value)  # (N, HW, m)
        return self.out(attended.transpose(1, 2).reshape(batch, -1, height, width))


class MixedOperation(nn.Module):
    """A DARTS-style mixed operation: candidate operations (3x3 conv, depthwise 5x5, dilated depthwise 3x3,
    3x3 average pooling) blended by a softmax over learned architecture weights at a temperature, then a
    zero-initialized 1x1 projection."""

    def __init__(self, channels: int, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.depthwise5 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.dilated3 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2, groups=channels)
        self.architecture = nn.Parameter(torch.zeros(4))
        self.project = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.architecture / self.temperature, dim=0)
        candidates = (
            self.conv3(x),
            self.depthwise5(x),
            self.dilated3(x),
            functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),
        )
        mixed = (weights.view(-1, 1, 1, 1, 1) * torch.stack(candidates)).sum(dim=0)
        return self.project(functional.relu(mixed))


# -- vector and sequence slots --------------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """Linear, GELU, zero-initialized linear."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = zero_(nn.Linear(hidden, features))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(functional.gelu(self.fc1(x)))


class GatedFeedForward(nn.Module):
    """SwiGLU feed-forward: ``W_out (silu(W_gate x) * W_value x)``, no biases, ``W_out`` starting at zero."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.gate_value = nn.Linear(features, 2 * hidden, bias=False)
        self.out = zero_(nn.Linear(hidden, features, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.gate_value(x).chunk(2, dim=-1)
        return self.out(functional.silu(gate) * value)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over a sequence; the output projection starts at zero."""

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(features, 3 * features)
        self.out = zero_(nn.Linear(features, features))

    def forward(self, x: Tensor) -> Tensor:
        batch, length, features = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, features // self.heads).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, L, d)
        return self.out(attended.transpose(1, 2).reshape(batch, length, features))


class TransformerLayer(nn.Module):
    def __init__(self, features: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(features)
        self.attention = MultiHeadSelfAttention(features, heads)
        self.norm2 = nn.LayerNorm(features)
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = zero_(nn.Linear(hidden, features))

    def forward(self, x: Tensor, delta: Tensor) -> Tensor:
        delta = delta + self.attention(self.norm1(x + delta))
        return delta + self.fc2(functional.gelu(self.fc1(self.norm2(x + delta))))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layers (self-attention and a GELU MLP, each a residual branch whose last projection
    starts at zero). Returns only what the layers add to the input."""

    def __init__(self, features: int, heads: int, layers: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(features, heads, hidden) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        delta = torch.zeros_like(x)
        for layer in self.layers:
            delta = layer(x, delta)
        return delta


class CausalTemporalConv(nn.Module):
    """A causal, dilated depthwise convolution along the sequence (a TCN layer: position t sees t, t-d, t-2d),
    GELU, and a zero-initialized linear mixing of the features."""

    def __init__(self, features: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.temporal = nn.Conv1d(features, features, 3, dilation=dilation, groups=features)
        self.mix = zero_(nn.Linear(features, features))

    def forward(self, x: Tensor) -> Tensor:
        sequence = functional.pad(x.transpose(1, 2), (2 * self.dilation, 0))
        return self.mix(functional.gelu(self.temporal(sequence).transpose(1, 2)))


class TokenMixingMLP(nn.Module):
    """MLP-Mixer's token mixing: an MLP across the sequence positions (shared by all features)."""

    def __init__(self, length: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(length, hidden)
        self.fc2 = zero_(nn.Linear(hidden, length))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(functional.gelu(self.fc1(x.transpose(1, 2)))).transpose(1, 2)


class LearnedPositional(nn.Module):
    """A learned embedding per sequence position, added to every sample (starts at zero)."""

    def __init__(self, length: int, features: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(length, features))

    def forward(self, x: Tensor) -> Tensor:
        return self.table.expand_as(x)


class MixtureOfExperts(nn.Module):
    """A mixture of ``experts`` two-layer MLPs with a learned top-k router (softmax over the chosen experts).
    Every expert is computed (the slots are small); the experts' output layers start at zero."""

    def __init__(self, features: int, experts: int, top_k: int, hidden: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(features, experts)
        bound = 1.0 / math.sqrt(features)
        self.w1 = nn.Parameter(torch.empty(experts, features, hidden).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(experts, hidden))
        self.w2 = nn.Parameter(torch.zeros(experts, hidden, features))
        self.b2 = nn.Parameter(torch.zeros(experts, features))

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.router(tokens)
        chosen, index = logits.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, index, torch.softmax(chosen, dim=-1))
        hidden = functional.gelu(torch.einsum("tf,efh->teh", tokens, self.w1) + self.b1)
        outputs = torch.einsum("teh,ehf->tef", hidden, self.w2) + self.b2
        return torch.einsum("te,tef->tf", weights, outputs).reshape(x.shape)


class MemoryAugmented(nn.Module):
    """Attention from each input to ``slots`` learned memory entries (keys and values); the values start at zero."""

    def __init__(self, features: int, slots: int) -> None:
        super().__init__()
        self.query = nn.Linear(features, features)
        self.keys = nn.Parameter(torch.randn(slots, features) / math.sqrt(features))
        self.values = nn.Parameter(torch.zeros(slots, features))

    def forward(self, x: Tensor) -> Tensor:
        scores = self.query(x) @ self.keys.t() / math.sqrt(x.shape[-1])
        return torch.softmax(scores, dim=-1) @ self.values


class NeuralODE(nn.Module):
    """The change of an ODE ``dh/dt = f(h)`` integrated from the input over unit time with ``steps`` Euler steps;
    ``f`` is a tanh MLP whose output layer starts at zero (weights shared by every step)."""

    def __init__(self, features: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(features, 2 * features)
        self.fc2 = zero_(nn.Linear(2 * features, features))

    def forward(self, x: Tensor) -> Tensor:
        delta = torch.zeros_like(x)
        for _ in range(self.steps):
            delta = delta + self.fc2(torch.tanh(self.fc1(x + delta))) / self.steps
        return delta


# -- width slots: new channels or neurons between two layers --------------------------------------------------------
def resample_max(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` max-pooled onto a ``size`` grid: by the integer factor when both sides divide (what a host's max-pool
    between two blocks does; a factor of 1 leaves ``x`` as it is), by adaptive max pooling otherwise (any sizes,
    a larger grid included)."""
    height, width = x.shape[-2:]
    out_height, out_width = size
    if height % out_height == 0 and width % out_width == 0:
        factor = (height // out_height, width // out_width)
        return x if factor == (1, 1) else functional.max_pool2d(x, factor)
    return functional.adaptive_max_pool2d(x, size)


class ChannelGrowth(nn.Module):
    """``width`` new channels between two conv layers: ``grow_in`` computes them from the read feature map as a host
    conv layer would (k x k, padding k // 2), ReLU, max-pooling onto the written map's grid, and ``grow_out``, a 3x3
    convolution (padding 1) from them into the written channels, starting at zero (weights and bias): the host with
    ``width`` more channels in that layer, its function unchanged."""

    def __init__(self, channels_in: int, width: int, kernel: int, channels_out: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.grow_in = nn.Conv2d(channels_in, width, kernel, padding=kernel // 2)
        self.grow_out = zero_(nn.Conv2d(width, channels_out, 3, padding=1))

    def hidden(self, a: Tensor) -> Tensor:
        return resample_max(functional.relu(self.grow_in(a)), self.size)

    def forward(self, a: Tensor) -> Tensor:
        return self.grow_out(self.hidden(a))


class HeadChannelGrowth(nn.Module):
    """``width`` new channels in the last conv block, feeding a linear head: ``grow_in`` (k x k conv, padding k // 2),
    ReLU, then what the host's head does to its channels (``pool`` 0: a global average over space, as a ``gap``
    head; ``pool`` p > 0: a p x p max-pool, as the pool ending a block before a ``flatten`` head; 1: no pool), a
    flatten, and ``grow_out``, a linear map into the written features, starting at zero."""

    def __init__(self, channels_in: int, width: int, kernel: int, pool: int, cells: int, features_out: int) -> None:
        super().__init__()
        self.pool = pool
        self.grow_in = nn.Conv2d(channels_in, width, kernel, padding=kernel // 2)
        self.grow_out = zero_(nn.Linear(width * cells, features_out))

    def hidden(self, a: Tensor) -> Tensor:
        units = functional.relu(self.grow_in(a))
        if self.pool == 0:
            return units.mean(dim=(2, 3))
        if self.pool > 1:
            units = functional.max_pool2d(units, self.pool)
        return units.flatten(1)

    def forward(self, a: Tensor) -> Tensor:
        return self.grow_out(self.hidden(a))


class NeuronGrowth(nn.Module):
    """``width`` new neurons between two linear layers: ``grow_in`` (linear), ReLU, ``grow_out`` (linear into the
    written features, starting at zero). Applied to the last dimension, so a sequence is grown token by token."""

    def __init__(self, features_in: int, width: int, features_out: int, activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self.grow_in = nn.Linear(features_in, width)
        self.grow_out = zero_(nn.Linear(width, features_out))

    def hidden(self, a: Tensor) -> Tensor:
        units = self.grow_in(a)
        return functional.gelu(units) if self.activation == "gelu" else functional.relu(units)

    def forward(self, a: Tensor) -> Tensor:
        return self.grow_out(self.hidden(a))


class FeedForwardGrowth(NeuronGrowth):
    """``width`` new feed-forward neurons of a sequence model: per token, ``grow_in`` (linear), GELU, ``grow_out``
    (linear into the written features, starting at zero); the sequence keeps its length."""

    def __init__(self, features_in: int, width: int, features_out: int) -> None:
        super().__init__(features_in, width, features_out, activation="gelu")


# -- HIGH_RISK stressors --------------------------------------------------------------------------------------------
class _AmplifyGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None  # type: ignore[attr-defined]


class ExplodingGradient(nn.Module):
    """STRESSOR. A zero-initialized projection whose backward multiplies the gradient of its output by
    ``10 ** log10_factor``, so its own parameters' gradients and the gradient it passes on to the host explode
    (at 10^39 and beyond, float32 gradients overflow to inf)."""

    def __init__(self, conv: bool, features: int, log10_factor: float) -> None:
        super().__init__()
        self.factor = 10.0 ** float(log10_factor)
        self.projection = pointwise(conv, features, features, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return _AmplifyGradient.apply(self.projection(x), self.factor)  # type: ignore[no-untyped-call]


class NaNInjection(nn.Module):
    """STRESSOR. A zero-initialized projection whose output has NaN in a ``frequency`` share of its elements
    (every ``round(1 / frequency)``-th, counting from the first, so there is always at least one)."""

    def __init__(self, conv: bool, features: int, frequency: float) -> None:
        super().__init__()
        self.stride = max(1, round(1.0 / float(frequency)))
        self.projection = pointwise(conv, features, features, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.projection(x)
        positions = torch.arange(out.numel(), device=out.device).view(out.shape)
        return out.masked_fill(positions % self.stride == 0, float("nan"))


class SlowForward(nn.Module):
    """STRESSOR. A zero-initialized projection whose forward first sleeps ``delay_ms`` (a bounded stand-in for
    the prototype's infinite loop)."""

    def __init__(self, conv: bool, features: int, delay_ms: float) -> None:
        super().__init__()
        self.delay_s = float(delay_ms) / 1000.0
        self.projection = pointwise(conv, features, features, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(self.delay_s)
        return self.projection(x)
