"""The parameter budget every Tamiyo policy germinates within, and what a germination costs.

Why a module of its own: the heuristic and the learned policy are compared at equal parameter budgets, so they must
agree on what the budget is and on what a seed costs. Both read it from here:

- the **host's parameters** are the model's count (``TrainingMetrics.parameter_count``, which Tolaria fills with the
  host's own count plus every seed module in a slot) less the seeds in the packet (:func:`added_parameters`: those in
  a stage that holds a module, ``lifecycle.HAS_SEED``), at least 1;
- all seeds together may add at most ``max_added_parameter_fraction`` of the host (:attr:`ParameterBudget.total`);
  what is left is that less the seeds already in slots (:attr:`ParameterBudget.left`);
- one seed may add at most ``max_seed_parameter_fraction`` of the host (:attr:`ParameterBudget.seed_cap`), the cap
  Kasmina's G0 enforces too;
- a germination's **cost** is the exact parameter count of the module the run's blueprint catalogs would build
  (:func:`catalog_cost`); ``None`` when no catalog knows the blueprint (a third-party descriptor without a catalog),
  which no budget can check.

Imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from esper_core.leyline import SeedState, SystemStatePacket, lifecycle
from esper_core.protocols import BlueprintCatalog, SlotShape

#: The blueprint parameter a policy sizes to the budget: the number of new channels, neurons or hidden units.
WIDTH = "width"


def added_parameters(seeds: Iterable[SeedState]) -> int:
    """Parameters of the seed modules in slots now (GERMINATED to FOSSILIZED; a culled seed's module is gone)."""
    return sum(int(seed.parameter_count) for seed in seeds if seed.stage in lifecycle.HAS_SEED)


def host_parameters(state: SystemStatePacket) -> int:
    """The host's own parameters, from the packet alone: the model's count less its seeds' (at least 1)."""
    return max(int(state.metrics.parameter_count) - added_parameters(state.seeds), 1)


@attrs.frozen
class ParameterBudget:
    """What the seeds of one decision point may still add, in parameters."""

    #: The host's own parameters (1 when the packet does not say).
    host: int
    #: Parameters the seeds in slots hold now.
    added: int
    #: All seeds together may hold at most this many.
    total: float
    #: One seed may hold at most this many.
    seed_cap: float
    #: Whether the packet gave the model's parameter count (without it the host counts as 1 parameter).
    known: bool = True

    @classmethod
    def of(
        cls,
        state: SystemStatePacket,
        *,
        max_added_parameter_fraction: float,
        max_seed_parameter_fraction: float,
        host: int | None = None,
    ) -> ParameterBudget:
        """The budget at ``state``; ``host`` replaces the host's count taken from the packet (the heuristic
        remembers the count of the first packet it saw)."""
        host_count = host if host else host_parameters(state)
        return cls(
            host=host_count,
            added=added_parameters(state.seeds),
            total=max_added_parameter_fraction * host_count,
            seed_cap=max_seed_parameter_fraction * host_count,
            known=state.metrics.parameter_count > 0,
        )

    @property
    def left(self) -> float:
        """Parameters the seeds may still add (negative once the seeds hold more than the budget)."""
        return self.total - self.added

    @property
    def limit(self) -> float:
        """The most one new seed may cost now: the budget left, and at most the per-seed cap."""
        return min(self.left, self.seed_cap)

    def allows(self, cost: int | None) -> bool:
        """Whether a germination costing ``cost`` parameters fits: something is left, and a known cost is within
        what is left and the per-seed cap. An unknown cost (``None``) cannot be checked and passes while something
        is left."""
        if not self.left > 0:
            return False
        return cost is None or cost <= self.limit

    def left_fraction(self) -> float | None:
        """The budget left over the whole budget, in [0, 1]; ``None`` when there is no budget to speak of (the
        packet gave no parameter count, or the budget is 0 or not finite)."""
        if not self.known or not (self.total > 0 and math.isfinite(self.total)):
            return None
        return max(0.0, min(self.left / self.total, 1.0))


def catalog_cost(
    catalogs: Sequence[BlueprintCatalog], blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]
) -> int | None:
    """The parameters germinating ``blueprint_id`` at ``slot`` with ``parameters`` adds, from the first catalog that
    knows it (``None`` when none does: the catalogs raise ``KeyError`` for an unknown blueprint and ``ValueError``
    for parameters or a slot they refuse)."""
    for catalog in catalogs:
        try:
            return int(catalog.parameter_count(blueprint_id, slot, parameters))
        except (KeyError, ValueError):
            continue
    return None
