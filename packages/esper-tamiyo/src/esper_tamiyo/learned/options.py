"""Options of the learned policy: ``[tamiyo.learned]``.

::

    [tamiyo]
    policy = "learned"

    [tamiyo.learned]
    hidden_size = 64
    embedding_size = 16
    blueprint_vocabulary = 1024
    decoding = "greedy"        # or "sample" (seeded, reproducible)
    seed = 0
    initial_update = "policies/latest.update"   # optional: a saved PolicyUpdate to load at start

The sizes shape the network, so they are part of its ``architecture_digest`` (and the vocabulary also of the
``feature_schema_digest``): an update trained with other sizes is refused. This module imports no torch, so a plugin
can name the options class without paying for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import at_least, not_negative

# Literal copies of the defaults in schema.py, network.py and updates.py (a test keeps them equal), so that this
# module, which the plugin imports at discovery, does not import torch.
DEFAULT_BLUEPRINT_VOCABULARY = 1024
DEFAULT_NOOP_BIAS = 8.0
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


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
