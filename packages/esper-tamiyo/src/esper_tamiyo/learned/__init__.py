"""The learned Tamiyo policy: a versioned feature encoding, a small factored-head network, masked decoding, and
weights that load only from checked Leyline ``PolicyUpdate``s. See docs/learned-policy.md.

Register it with :func:`build_learned_policy` as the factory and :class:`LearnedPolicyOptions` (section
``[tamiyo.learned]``) as the options of a ``PolicySpec`` named ``"learned"``. Importing this package (or its
options) does not import torch; the other names load their modules, and torch, on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_tamiyo.learned.options import LearnedPolicyOptions

if TYPE_CHECKING:
    from esper_core.plugins import BuildContext
    from esper_tamiyo.learned.actions import PolicyAction
    from esper_tamiyo.learned.encoder import EncodedBatch, EncodedState, FeatureEncoder, collate
    from esper_tamiyo.learned.network import (
        ARCHITECTURE_VERSION,
        NetworkConfig,
        PolicyNetwork,
        PolicyOutput,
        architecture_digest,
        build_network,
        parameter_count,
    )
    from esper_tamiyo.learned.policy import ActionEvaluation, LearnedPolicy, evaluate_actions, masked_distributions
    from esper_tamiyo.learned.schema import (
        FEATURE_SCHEMA,
        FEATURE_SCHEMA_VERSION,
        blueprint_index,
        feature_schema,
        schema_digest,
    )
    from esper_tamiyo.learned.updates import (
        REJECTION_REASONS,
        UpdateVerdict,
        check_update,
        make_update,
        read_update,
        save_update,
    )

_LAZY = {
    "actions": ("PolicyAction",),
    "encoder": ("EncodedBatch", "EncodedState", "FeatureEncoder", "collate"),
    "network": (
        "ARCHITECTURE_VERSION",
        "NetworkConfig",
        "PolicyNetwork",
        "PolicyOutput",
        "architecture_digest",
        "build_network",
        "parameter_count",
    ),
    "policy": ("ActionEvaluation", "LearnedPolicy", "evaluate_actions", "masked_distributions"),
    "schema": ("FEATURE_SCHEMA", "FEATURE_SCHEMA_VERSION", "blueprint_index", "feature_schema", "schema_digest"),
    "updates": ("REJECTION_REASONS", "UpdateVerdict", "check_update", "make_update", "read_update", "save_update"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def build_learned_policy(context: BuildContext) -> LearnedPolicy:
    """The ``learned`` policy for a run (a ``PolicySpec`` factory taking an ``esper_core.plugins.BuildContext``).

    Uses ``context.options`` (:class:`LearnedPolicyOptions`, defaults when absent), ``context.signing_key`` to
    verify updates and sign exported ones, and the run's blueprint catalogs (``context.blueprint_catalogs()``, as the
    heuristic does) to price germinations against the parameter budget. A configured ``initial_update`` is loaded at
    once; a missing or unreadable file or a rejected update is a :class:`~esper_core.errors.ConfigError` naming the
    key and the reason (``esper`` prints it in one line).
    """
    from esper_core.errors import ConfigError
    from esper_tamiyo.learned.policy import LearnedPolicy

    options = context.options if context.options is not None else LearnedPolicyOptions()
    policy = LearnedPolicy(options, signing_key=context.signing_key, catalogs=context.blueprint_catalogs())
    if options.initial_update is not None:
        path = Path(options.initial_update)
        try:
            verdict = policy.load_update_file(path)
        except ValueError as error:
            raise ConfigError(
                f"tamiyo.learned.initial_update: {error}. Give a file written by esper_tamiyo.learned.save_update, "
                "or unset initial_update to start untrained"
            ) from None
        if not verdict.accepted:
            raise ConfigError(
                f"tamiyo.learned.initial_update: {path} was rejected ({verdict.reason}: {verdict.detail}). "
                "Export it from a policy with the same options and the same signing secret (ESPER_LEYLINE_SECRET), "
                "or unset initial_update to start untrained."
            )
    return policy


__all__ = [
    "ARCHITECTURE_VERSION",
    "FEATURE_SCHEMA",
    "FEATURE_SCHEMA_VERSION",
    "REJECTION_REASONS",
    "ActionEvaluation",
    "EncodedBatch",
    "EncodedState",
    "FeatureEncoder",
    "LearnedPolicy",
    "LearnedPolicyOptions",
    "NetworkConfig",
    "PolicyAction",
    "PolicyNetwork",
    "PolicyOutput",
    "UpdateVerdict",
    "architecture_digest",
    "blueprint_index",
    "build_learned_policy",
    "build_network",
    "check_update",
    "collate",
    "evaluate_actions",
    "feature_schema",
    "make_update",
    "masked_distributions",
    "parameter_count",
    "read_update",
    "save_update",
    "schema_digest",
]
