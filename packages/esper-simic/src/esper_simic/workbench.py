"""What every ``esper simic`` command works with: the configuration, the trainable policy built through the registry,
the blueprint catalog, the signing key and the workspace's directories.

Simic never imports the policy it trains: it asks the registry for the policy named by ``simic.policy`` (Tamiyo's
``learned`` by default), with the same configuration a run would give it, and checks that what it got satisfies
:class:`esper_core.protocols.TrainablePolicy`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from esper_core.config import EsperConfig, section, section_path
from esper_core.config.convert import section_to_dict
from esper_core.config.validators import at_least, not_negative
from esper_core.errors import ConfigError
from esper_core.leyline import BlueprintDescriptor
from esper_core.oona import Oona, OonaOptions
from esper_core.plugins.registry import Registry
from esper_core.plugins.selectors import SimicSelection, UrzaSelection
from esper_core.protocols import SimicTrainer, TrainablePolicy
from esper_core.signing import SECRET_ENV_VAR, SigningKey
from esper_core.storage.policy_store import PolicyStore
from esper_simic.replay import ReplayStore
from esper_simic.rewards import RewardWeights

__all__ = ["SimicOptions", "Workbench", "open_workbench"]


@section("simic")
@attrs.frozen
class SimicOptions:
    """Simic's workspace (docs/simic.md); the policy and the trainer it uses are core's selectors (``simic.policy``,
    ``simic.trainer``: :class:`esper_core.plugins.selectors.SimicSelection`)."""

    #: Where the replay store, ground runs, candidates and evaluations live (relative to the working directory).
    workspace: str = "var/simic"
    #: The policy store publications go to (empty: ``WORKSPACE/policies``); runs follow it with
    #: ``tamiyo.policy_store``.
    policy_store: str = ""
    #: Parallel worker processes for ground runs (collection and evaluation).
    workers: int = attrs.field(default=2, validator=at_least(1))
    #: The replay store keeps at most this many episodes, none older than ``max_age_hours`` (0: no limit).
    replay_capacity: int = attrs.field(default=20_000, validator=at_least(1))
    max_age_hours: float = attrs.field(default=0.0, validator=not_negative)


@attrs.frozen
class Workbench:
    registry: Registry
    config: Any
    options: SimicOptions
    selection: SimicSelection
    policy: TrainablePolicy
    catalog: dict[str, BlueprintDescriptor]
    signing_key: SigningKey | None
    workspace: Path
    _budgeted: dict[tuple[tuple[str, float], ...], TrainablePolicy] = attrs.field(factory=dict)

    def trainer(self) -> SimicTrainer:
        """The configured training algorithm, built through the registry."""
        trainer = self.registry.build(self.registry.simic_trainer(self.selection.trainer), config=self.config)
        if not isinstance(trainer, SimicTrainer):
            raise ConfigError(
                f"simic.trainer = {self.selection.trainer!r} built {type(trainer).__name__}, which has no "
                "train(policy, episodes, ...) method (esper_core.protocols.SimicTrainer)"
            )
        return trainer

    def shared_bus(self, why: str, group: str) -> Oona:
        """A client of the configured bus in consumer ``group``, which must reach other processes (Redis)."""
        options = self.config.get(OonaOptions)
        if options.backend == "memory":
            raise ConfigError(
                f"{why} needs a bus other processes can reach: set oona.backend to a Redis URL "
                '(e.g. --set oona.backend="redis://127.0.0.1:6379/0")'
            )
        self.require_secret(why)
        assert self.signing_key is not None
        backend = self.registry.build(self.registry.bus_backend(options.backend), config=self.config)
        return Oona(
            backend,
            signing_key=self.signing_key,
            options=options,
            group=group,
            consumer=f"{group}-{os.getpid()}",
            source="simic",
        )

    def policy_under(self, budget: Mapping[str, float]) -> TrainablePolicy:
        """The policy configured with ``budget`` (``max_added_parameter_fraction``, ...): a run's decisions are
        re-encoded under the budget they were made under, since the policy's legality masks depend on it."""
        spec = self.registry.policy(self.selection.policy)
        if not budget or spec.options is None:
            return self.policy
        key = tuple(sorted(budget.items()))
        if key not in self._budgeted:
            configured = self.config.get(spec.options)
            known = {name: value for name, value in key if name in attrs.fields_dict(type(configured))}
            self._budgeted[key] = self.registry.build(
                spec, config=self.config, options=attrs.evolve(configured, **known), signing_key=self.signing_key
            )
        return self._budgeted[key]

    def policy_settings(self) -> list[str]:
        """The trained policy's options that differ from their defaults (``tamiyo.learned.message_rounds=2``, ...),
        as overrides for every run Simic starts: those runs build the same network, so an update trained here loads
        there, and decide under the same options. A run's own overrides (its drawn budget) come after and win."""
        spec = self.registry.policy(self.selection.policy)
        if spec.options is None:
            return []
        path, defaults = section_path(spec.options), section_to_dict(spec.options())
        configured = section_to_dict(self.config.get(spec.options))
        return [
            f"{path}.{key}={tomli_w.dumps({key: value}).split('=', 1)[1].strip()}"
            for key, value in configured.items()
            if defaults.get(key) != value
        ]

    def reward_weights(self) -> RewardWeights:
        """The costs rewards charge (``[simic.rewards]``)."""
        weights: RewardWeights = self.config.get(RewardWeights)
        return weights

    def replay(self) -> ReplayStore:
        return ReplayStore(
            self.workspace / "replay",
            self.policy.feature_schema_digest,
            capacity=self.options.replay_capacity,
            max_age_seconds=self.options.max_age_hours * 3600.0,
        )

    def policy_store(self) -> PolicyStore:
        return PolicyStore(
            Path(self.options.policy_store) if self.options.policy_store else self.workspace / "policies"
        )

    def require_secret(self, why: str) -> None:
        """Runs that load Simic's updates must verify them: they need the secret Simic signs with."""
        if self.signing_key is None:
            raise ConfigError(
                f"{why} needs {SECRET_ENV_VAR}: the runs verify the policy's updates with it and Simic signs them with "
                f"it. Set it in the environment (at least 32 characters), e.g. export {SECRET_ENV_VAR}=$(openssl rand "
                "-hex 32)"
            )


def open_workbench(registry: Registry, config_path: str | Path | None, overrides: Sequence[str]) -> Workbench:
    """Load the configuration and build the trainable policy and the catalog through the registry."""
    config = registry.load_config(Path(config_path) if config_path else None, overrides=list(overrides))
    return workbench_of(registry, config)


def workbench_of(registry: Registry, config: EsperConfig) -> Workbench:
    """The workbench of an already loaded configuration (``esper serve simic``'s)."""
    options = config.get(SimicOptions)
    selection = config.get(SimicSelection)
    key = SigningKey.from_env(os.environ)
    catalogs = [
        registry.build(registry.blueprint_catalog(name), config=config) for name in config.get(UrzaSelection).catalogs
    ]
    policy = registry.build(registry.policy(selection.policy), config=config, signing_key=key, catalogs=catalogs)
    if not isinstance(policy, TrainablePolicy):
        raise ConfigError(
            f"simic.policy = {selection.policy!r}: that policy cannot be trained (it does not take weight updates); "
            "Simic trains policies satisfying esper_core.protocols.TrainablePolicy, such as 'learned'"
        )
    catalog = {descriptor.blueprint_id: descriptor for c in catalogs for descriptor in c.descriptors()}
    return Workbench(registry, config, options, selection, policy, catalog, key, Path(options.workspace))
