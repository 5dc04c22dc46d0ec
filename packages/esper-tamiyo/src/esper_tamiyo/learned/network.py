"""The learned policy's network: shared encoders and factored action heads, small enough for sub-millisecond CPU use.

::

    global features ─ MLP ──────────────────────────────────────────────┐
    slot features ⊕ emb(slot's blueprint) ─ MLP ─ messages ×2 ─ s_i ─┼─ mean, max ─┐
    blueprint features ⊕ emb(blueprint) ─ MLP ─ b_j ───┴─ mean ──────┴─ trunk ─ c ─┬─ operation head  → [O]
                                                                                 └─ value head      → []
    z_i = MLP(s_i ⊕ c):  slot head → [O] per slot (a slot logit for each operation),
                         blueprint head  q(z_i) · (k(b_j) + P p_ij) / √K + v · p_ij,  schedule head → [3] per slot
    width head:  Linear(SiLU(A z_i + B b_j)) + u_w · (width features of (i, j, w)) → [W] per (slot, blueprint)

The slots are a graph: each slot is joined to its neighbours in the host's forward order (the packet lists slots in
that order). Two rounds of message passing let every slot's encoding see the slots before and after it, two hops
each way, with separate weights for upstream and downstream; the pooled trunk context ``c`` then adds the whole
host. Any number of slots works, since every layer is shared across slots and masked at the padding.

All heads read from one forward pass; masking and decoding live in :mod:`esper_tamiyo.learned.policy`. The operation
head starts with zero weights and a strong NOOP bias, so an untrained network prefers NOOP whatever it sees. The
width head reads the slot context and the blueprint together, because how wide to grow depends on both (what the slot
predicts for each width, what the blueprint costs there), plus each class's own cost over the budget left through
per-class weights ``u`` (zero when untrained). The blueprint head reads what Urabrask measured about blueprint j at
slot i (the pair features ``p_ij``: measured risk, latency, FLOPs) twice: through the key, so that how much they
matter can depend on the slot's context, and through a weight per feature ``v``; ``P`` and ``v`` start at zero, so
an untrained network's blueprint choice ignores them.

``architecture_digest`` is the SHA-256 of the architecture's name, version, configuration, :data:`STRUCTURE` and every
parameter's name, shape and dtype: two networks with equal digests accept each other's ``state_dict``.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

import attrs
import torch
from torch import nn

from esper_core.config.validators import at_least
from esper_tamiyo.learned.actions import NOOP, NUM_OPERATIONS, NUM_SCHEDULES, NUM_WIDTHS
from esper_tamiyo.learned.encoder import EncodedBatch
from esper_tamiyo.learned.schema import (
    BLUEPRINT_DIM,
    DEFAULT_BLUEPRINT_VOCABULARY,
    GLOBAL_DIM,
    PAIR_DIM,
    SLOT_DIM,
    WIDTH_DIM,
)

ARCHITECTURE_NAME = "esper.tamiyo.learned.factored-mlp"
#: Bump whenever the module structure changes in a way parameter names and shapes might not reveal.
#: 2: the width head. 3: message passing between neighbouring slots. 4: the pair features in the blueprint head.
ARCHITECTURE_VERSION = 4
DEFAULT_NOOP_BIAS = 8.0
#: What parameter names and shapes do not show; part of ``architecture_digest``. Keep in step with the code.
STRUCTURE = {
    "activation": "SiLU",
    "slot_messages": "per round: LayerNorm(s_i + SiLU(Linear(s_i, s_(i-1), s_(i+1)))), masked; neighbours in packet "
    "order, absent ones zero",
    "slot_pooling": "masked mean and max",
    "blueprint_pooling": "masked mean",
    "trunk_norm": "LayerNorm after the trunk",
    "blueprint_logits": "query(slot context) . (key(blueprint) + pair_key(pair features)) / sqrt(key) "
    "+ pair weights . pair features",
    "width_logits": "Linear(SiLU(Linear(slot context) + Linear(blueprint))) + per-class weights . width features",
    "embedding_padding_index": 0,
}


@attrs.frozen
class NetworkConfig:
    """Everything that shapes the network. Part of ``architecture_digest``."""

    hidden: int = attrs.field(default=64, validator=at_least(1))
    embedding: int = attrs.field(default=16, validator=at_least(1))
    #: Width of the slot-query / blueprint-key space of the blueprint head.
    key: int = attrs.field(default=32, validator=at_least(1))
    #: Rounds of message passing between neighbouring slots (0: each slot encoded on its own).
    message_rounds: int = attrs.field(default=0, validator=at_least(0))
    vocabulary: int = attrs.field(default=DEFAULT_BLUEPRINT_VOCABULARY, validator=at_least(1))
    global_dim: int = GLOBAL_DIM
    slot_dim: int = SLOT_DIM
    blueprint_dim: int = BLUEPRINT_DIM
    operations: int = NUM_OPERATIONS
    schedules: int = NUM_SCHEDULES
    widths: int = NUM_WIDTHS
    width_dim: int = WIDTH_DIM
    pair_dim: int = PAIR_DIM

    def as_json(self) -> dict[str, int]:
        return attrs.asdict(self)


class PolicyOutput(NamedTuple):
    """Raw (unmasked) outputs for a batch of N decision points with S slots and B blueprints."""

    operation_logits: torch.Tensor  # [N, O]
    slot_logits: torch.Tensor  # [N, O, S]
    blueprint_logits: torch.Tensor  # [N, S, B]
    schedule_logits: torch.Tensor  # [N, S, K]
    value: torch.Tensor  # [N]
    width_logits: torch.Tensor  # [N, S, B, W]


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], x.shape[2])
    filled = x.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)
    return torch.where(torch.isfinite(filled), filled, torch.zeros_like(filled))


class SlotMessages(nn.Module):
    """One round of message passing along the host's slots in forward order: each slot's encoding is updated from
    itself and its two neighbours (the one before it and the one after it, zero where there is none), with separate
    weights for the two directions, because what lies upstream of a slot (what it reads) and what lies downstream
    (what reads it) are different things. Padding slots stay zero and send nothing."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.update = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU())
        self.norm = nn.LayerNorm(hidden)

    def forward(self, s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        live = valid.unsqueeze(-1).to(s.dtype)
        s = s * live
        before = torch.nn.functional.pad(s, (0, 0, 1, 0))[:, :-1]  # slot i-1 (zero before the first)
        after = torch.nn.functional.pad(s, (0, 0, 0, 1))[:, 1:]  # slot i+1 (zero after the last; padding is zero)
        updated: torch.Tensor = self.norm(s + self.update(torch.cat([s, before, after], dim=-1)))
        return updated * live


class PolicyNetwork(nn.Module):
    """Encoders shared by every head; heads for operation, slot, blueprint, blending schedule, width and value."""

    def __init__(self, config: NetworkConfig, *, noop_bias: float = DEFAULT_NOOP_BIAS) -> None:
        super().__init__()
        self.config = config
        h, e = config.hidden, config.embedding
        self.blueprint_embedding = nn.Embedding(config.vocabulary, e, padding_idx=0)
        self.global_encoder = nn.Sequential(nn.Linear(config.global_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.slot_encoder = nn.Sequential(nn.Linear(config.slot_dim + e, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.slot_messages = nn.ModuleList(SlotMessages(h) for _ in range(config.message_rounds))
        self.blueprint_encoder = nn.Sequential(nn.Linear(config.blueprint_dim + e, h), nn.SiLU())
        self.trunk = nn.Sequential(nn.Linear(4 * h, h), nn.SiLU(), nn.LayerNorm(h))
        self.slot_context = nn.Sequential(nn.Linear(2 * h, h), nn.SiLU())
        self.operation_head = nn.Linear(h, config.operations)
        self.slot_head = nn.Linear(h, config.operations)
        self.blueprint_query = nn.Linear(h, config.key)
        self.blueprint_key = nn.Linear(h, config.key)
        self.schedule_head = nn.Linear(h, config.schedules)
        self.value_head = nn.Linear(h, 1)
        self.width_slot = nn.Linear(h, config.key)
        self.width_blueprint = nn.Linear(h, config.key, bias=False)
        self.width_head = nn.Linear(config.key, config.widths)
        #: How each width class's logit moves with its width features (its cost over the budget left).
        self.width_feature_weight = nn.Parameter(torch.zeros(config.widths, config.width_dim))
        #: How a blueprint's logit in a slot moves with what was measured about it there: through the key (in the
        #: slot's context) and directly. Created last, so the other layers start as they did before it existed.
        self.pair_key = nn.Linear(config.pair_dim, config.key, bias=False)
        self.pair_weight = nn.Parameter(torch.zeros(config.pair_dim))
        self._scale = float(config.key) ** -0.5
        with torch.no_grad():
            # Safe when untrained: the operation logits ignore the input and NOOP wins by exp(noop_bias).
            self.operation_head.weight.zero_()
            self.operation_head.bias.zero_()
            self.operation_head.bias[NOOP] = noop_bias
            self.value_head.weight.zero_()
            self.value_head.bias.zero_()
            self.pair_key.weight.zero_()

    def forward(
        self,
        global_features: torch.Tensor,
        slot_features: torch.Tensor,
        slot_blueprint_index: torch.Tensor,
        slot_valid: torch.Tensor,
        blueprint_features: torch.Tensor,
        blueprint_index: torch.Tensor,
        blueprint_valid: torch.Tensor,
        width_features: torch.Tensor,
        pair_features: torch.Tensor,
    ) -> PolicyOutput:
        g = self.global_encoder(global_features)  # [N, H]
        s = self.slot_encoder(torch.cat([slot_features, self.blueprint_embedding(slot_blueprint_index)], dim=-1))
        for messages in self.slot_messages:
            s = messages(s, slot_valid)  # [N, S, H]
        b = self.blueprint_encoder(
            torch.cat([blueprint_features, self.blueprint_embedding(blueprint_index)], dim=-1)
        )  # [N, B, H]
        pooled = [g, _masked_mean(s, slot_valid), _masked_max(s, slot_valid), _masked_mean(b, blueprint_valid)]
        c = self.trunk(torch.cat(pooled, dim=-1))  # [N, H]
        z = self.slot_context(torch.cat([s, c.unsqueeze(1).expand(-1, s.shape[1], -1)], dim=-1))  # [N, S, H]
        query = self.blueprint_query(z)  # [N, S, K]
        key = self.blueprint_key(b)  # [N, B, K]
        # What was measured about each blueprint in each slot, [N, S, B, P]: through the key and directly.
        measured = (query.unsqueeze(2) * self.pair_key(pair_features)).sum(dim=-1) * self._scale
        measured = measured + (pair_features * self.pair_weight).sum(dim=-1)
        pair = torch.nn.functional.silu(self.width_slot(z).unsqueeze(2) + self.width_blueprint(b).unsqueeze(1))
        width_logits = self.width_head(pair) + (width_features * self.width_feature_weight).sum(dim=-1)
        return PolicyOutput(
            operation_logits=self.operation_head(c),
            slot_logits=self.slot_head(z).transpose(1, 2),
            blueprint_logits=torch.matmul(query, key.transpose(1, 2)) * self._scale + measured,
            schedule_logits=self.schedule_head(z),
            value=self.value_head(c).squeeze(-1),
            width_logits=width_logits,  # [N, S, B, W]
        )

    def forward_batch(self, batch: EncodedBatch) -> PolicyOutput:
        output: PolicyOutput = self(
            batch.global_features,
            batch.slot_features,
            batch.slot_blueprint_index,
            batch.slot_valid,
            batch.blueprint_features,
            batch.blueprint_index,
            batch.blueprint_valid,
            batch.width_features,
            batch.pair_features,
        )
        return output


def build_network(config: NetworkConfig, *, seed: int = 0, noop_bias: float = DEFAULT_NOOP_BIAS) -> PolicyNetwork:
    """A fresh network, initialised from ``seed`` without touching the global RNG (the same in every process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = PolicyNetwork(config, noop_bias=noop_bias)
    return network.eval()


def parameter_shapes(network: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every entry of ``network.state_dict()``: its shape and dtype."""
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in network.state_dict().items()}


def architecture_digest(network: PolicyNetwork) -> str:
    """SHA-256 (hex) of the architecture's name, version, config, structure and every state-dict entry's name, shape
    and dtype."""
    description = {
        "architecture": ARCHITECTURE_NAME,
        "version": ARCHITECTURE_VERSION,
        "config": network.config.as_json(),
        "structure": STRUCTURE,
        "parameters": [
            [name, list(shape), str(dtype)] for name, (shape, dtype) in sorted(parameter_shapes(network).items())
        ],
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())
