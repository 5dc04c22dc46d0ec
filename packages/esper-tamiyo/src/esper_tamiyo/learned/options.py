"""Options of the learned policy: ``[tamiyo.learned]``.

::

    [tamiyo]
    policy = "learned"

    [tamiyo.learned]
    hidden_size = 64
    embedding_size = 16
    message_rounds = 0         # message passing between neighbouring slots (2: two hops each way)
    blueprint_vocabulary = 1024
    decoding = "greedy"        # or "sample" (seeded, reproducible)
    seed = 0
    max_added_parameter_fraction = 0.5   # all seeds together: at most this fraction of the host's parameters
    max_seed_parameter_fraction = 1.0    # one seed: at most this fraction of the host's parameters
    initial_update = "policies/latest.update"   # optional: a saved PolicyUpdate to load at start

The sizes shape the network, so they are part of its ``architecture_digest`` (and the vocabulary also of the
``feature_schema_digest``): an update trained with other sizes is refused. The budget fractions are not: they mask
choices and scale budget features, so one trained policy can be served (and compared with the heuristic) at any
budget. This module imports no torch, so a plugin can name the options class without paying for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative, positive

# Literal copies of the defaults in schema.py, network.py and updates.py (a test keeps them equal), so that this
# module, which the plugin imports at discovery, does not import torch.
DEFAULT_BLUEPRINT_VOCABULARY = 1024
DEFAULT_NOOP_BIAS = 8.0
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


def finite(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """A finite number: an infinite budget would make every "fraction of the budget" feature 0/0."""
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value}")


@section("tamiyo.learned")
@attrs.frozen
class LearnedPolicyOptions:
    """The learned policy: network sizes, decoding, and the weights to start from."""

    #: Width of every hidden layer.
    hidden_size: int = attrs.field(default=64, validator=at_least(8))
    #: Width of the learned blueprint embedding.
    embedding_size: int = attrs.field(default=16, validator=at_least(2))
    #: Width of the slot-query / blueprint-key space of the blueprint head.
    key_size: int = attrs.field(default=32, validator=at_least(2))
    #: Rounds of message passing between neighbouring slots (a chain graph in forward order; docs/learned-policy.md).
    #: 0 encodes each slot on its own, with the whole host through the pooled context: on Simic's training ground
    #: that passed the publication gate and 2 rounds did not (docs/results.md), so 0 is the default.
    message_rounds: int = attrs.field(default=0, validator=at_least(0))
    #: Entries of the blueprint embedding table (index 0 means "no blueprint"); ids are hashed into it with SHA-256.
    blueprint_vocabulary: int = attrs.field(default=DEFAULT_BLUEPRINT_VOCABULARY, validator=at_least(2))
    #: ``greedy`` takes the most probable legal action; ``sample`` draws from the masked distribution.
    decoding: Literal["greedy", "sample"] = "greedy"
    #: Seeds the untrained weights (identical in every process) and the sampling generator.
    seed: int = 0
    #: Bias of the NOOP logit in the untrained operation head (the others are 0 and the weights are zero).
    noop_bias: float = attrs.field(default=DEFAULT_NOOP_BIAS, validator=not_negative)
    #: A PolicyUpdate file (``esper_tamiyo.learned.save_update``) to load at start; refused updates stop the run.
    initial_update: Path | None = None
    #: Intra-op threads for one decision (restored afterwards; 0 leaves torch's setting alone). The tensors are tiny:
    #: one thread is fastest, and never waits for a busy core to join an OpenMP parallel region.
    inference_threads: int = attrs.field(default=1, validator=at_least(0))
    #: Largest accepted update payload, in bytes.
    max_update_bytes: int = attrs.field(default=DEFAULT_MAX_PAYLOAD_BYTES, validator=at_least(1))
    #: All seeds together may add at most this fraction of the host's parameters (the heuristic's option of the same
    #: name, so the two compare at equal budgets). Germinations over the budget left are masked.
    max_added_parameter_fraction: float = attrs.field(default=0.5, validator=[not_negative, finite])
    #: One seed may add at most this fraction of the host's parameters (keep it at most
    #: ``kasmina.max_seed_parameter_fraction``: Kasmina's G0 refuses larger seeds).
    max_seed_parameter_fraction: float = attrs.field(default=1.0, validator=[positive, finite])
