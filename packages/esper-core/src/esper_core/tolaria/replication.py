"""Keeping the followers' seeds identical to the leader's (docs/distributed.md, "How the ranks stay identical").

Every rank holds the whole model and its own seed executor. At a decision point every rank validates its shard (the
executor gathers the per-batch results, so every rank sees the same numbers) and runs the executor's own bookkeeping
on the same probe batch; then only the leader consults the controller and the emergency ladder. Every command the
leader's executor applies at that decision point, in order, is sent to the followers as one :class:`Directive`, and
each follower's executor applies the same signed commands (it verifies them like any other) and must reach the same
result.

A :func:`seed_digest` of each rank is then compared with the leader's: per slot the lifecycle (stage, seed,
blueprint, alpha, ages, pause, embargo) and a checksum of the bit patterns of the seed's parameters, and the same
checksum of the host's. Any difference is a :class:`ReplicaMismatch` that names the rank, the slot and what
differs; the run stops rather than train replicas that silently disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from esper_core.errors import EsperError
from esper_core.leyline import AdaptationCommand, CommandResult, CommandStatus, SeedState, lifecycle, value_name
from esper_core.protocols import SEED_GROUP_KEY

__all__ = ["Directive", "ReplicaMismatch", "compare_digests", "seed_digest"]

#: The digest's name for the host's own parameters (fossilized seeds included).
HOST = "host"
#: The lifecycle fields of a slot that every rank must agree on.
FIELDS = (
    "seed_id", "stage", "blueprint_id", "alpha", "alpha_steps", "age_epochs", "stage_epochs", "paused",
    "embargo_epochs_remaining", "parameter_count", "isolation_violations",
)  # fmt: skip
INTEGER_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplicaMismatch(EsperError):
    """A follower's seeds (or weights) differ from the leader's after a decision point."""


@attrs.frozen
class Directive:
    """What the leader tells the followers at the end of a decision point: the signed commands its executor
    applied there, in order, each with the status it got; and whether the run halts after this decision point."""

    commands: tuple[bytes, ...] = ()
    statuses: tuple[int, ...] = ()
    halt: str = ""

    @classmethod
    def of(cls, applied: Sequence[tuple[AdaptationCommand, CommandResult]], halt: str = "") -> Directive:
        return cls(
            tuple(command.SerializeToString(deterministic=True) for command, _ in applied),
            tuple(int(result.status) for _, result in applied),
            halt,
        )

    def replay(self, apply: Any, rank: int) -> None:
        """Apply every command with ``apply`` (the follower's executor's), and check it ends as the leader's did."""
        for data, status in zip(self.commands, self.statuses, strict=True):
            command = AdaptationCommand.FromString(data)
            result: CommandResult = apply(command)
            if int(result.status) != status:
                theirs = value_name(CommandStatus, status, "COMMAND_STATUS_")
                ours = value_name(CommandStatus, result.status, "COMMAND_STATUS_")
                raise ReplicaMismatch(
                    f"rank {rank}: the leader's command {command.command_id} for slot "
                    f"{command.target_slot_id or '(none)'} ended {theirs} on rank 0 but {ours} here "
                    f"({result.detail}); the replicas would diverge, so the run stops"
                )


def seed_digest(seeds: Sequence[SeedState], optimizer: torch.optim.Optimizer) -> dict[str, tuple[Any, ...]]:
    """Per slot, the lifecycle fields every rank must agree on and the checksum of the seed's parameters; under
    :data:`HOST`, the checksum of the host's. One host synchronisation."""
    by_slot: dict[str, list[torch.Tensor]] = {HOST: []}
    for group in optimizer.param_groups:
        slot = group.get(SEED_GROUP_KEY)
        by_slot.setdefault(HOST if slot is None else str(slot), []).extend(group["params"])
    names = list(by_slot)
    sums = torch.stack([_checksum(by_slot[name]) for name in names]).tolist()
    checksums = dict(zip(names, sums, strict=True))
    digest: dict[str, tuple[Any, ...]] = {HOST: (tuple(checksums[HOST]),)}
    for seed in seeds:
        fields = tuple(getattr(seed, name) for name in FIELDS)
        parameters = tuple(checksums.get(seed.slot_id, (0, 0))) if seed.stage in lifecycle.HAS_SEED else (0, 0)
        digest[seed.slot_id] = (fields, parameters)
    return digest


def compare_digests(digests: Sequence[Mapping[str, tuple[Any, ...]]], where: str) -> None:
    """Every rank's digest against the leader's; the first difference is a :class:`ReplicaMismatch`."""
    leader = digests[0]
    for rank, digest in enumerate(digests[1:], start=1):
        for slot in sorted(set(leader) | set(digest)):
            ours, theirs = leader.get(slot), digest.get(slot)
            if ours == theirs:
                continue
            raise ReplicaMismatch(f"{where}: rank {rank} differs from rank 0 in {_difference(slot, ours, theirs)}")


def _difference(slot: str, leader: tuple[Any, ...] | None, follower: tuple[Any, ...] | None) -> str:
    if leader is None or follower is None:
        return f"slot {slot}: it exists on {'rank 0' if follower is None else 'that rank'} only"
    if slot == HOST:
        return "the host's weights (their checksums differ): the data-parallel gradients were not the same"
    fields = [
        f"{name} {a!r} on rank 0, {b!r} there"
        for name, a, b in zip(FIELDS, leader[0], follower[0], strict=True)
        if a != b
    ]
    if not fields:
        fields = ["the seed's weights (their checksums differ)"]
    return f"slot {slot}: " + "; ".join(fields)


def _checksum(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Two int64 sums over the bit patterns of ``parameters`` (plain, and weighted by position): any changed bit
    changes them, at the cost of one pass over the weights on their device."""
    plain = torch.zeros((), dtype=torch.int64)
    weighted = torch.zeros((), dtype=torch.int64)
    if parameters:
        device = parameters[0].device
        plain, weighted = plain.to(device), weighted.to(device)
    for tensor in parameters:
        flat = tensor.detach().contiguous().reshape(-1)
        view = INTEGER_VIEWS.get(flat.element_size())
        bits = flat.view(view).to(torch.int64) if view is not None else flat.to(torch.float64).view(torch.int64)
        plain = plain + bits.sum()
        weighted = weighted + (bits * torch.arange(1, bits.numel() + 1, device=bits.device)).sum()
    return torch.stack([plain.cpu(), weighted.cpu()])
