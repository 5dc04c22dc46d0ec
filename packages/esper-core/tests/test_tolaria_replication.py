"""The pieces that keep a data-parallel run's ranks identical (docs/distributed.md): the replica digest and its
comparison name the rank, the slot and what differs; a replayed command must end as it did on the leader; one
process's ranks are the identity; `esper run --nproc N` launches torchrun on loopback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_core.cli.main import main
from esper_core.leyline import AdaptationCommand, CommandResult, CommandStatus, SeedState, lifecycle
from esper_core.protocols import SEED_GROUP_KEY
from esper_core.tolaria.distributed import torchrun_command, without_nproc
from esper_core.tolaria.ranks import Ranks
from esper_core.tolaria.replication import Directive, ReplicaMismatch, compare_digests, seed_digest


def replica() -> tuple[list[SeedState], torch.optim.Optimizer, nn.Linear, nn.Linear]:
    """A host layer and a BLENDING seed in slot layers.0, as one rank holds them."""
    torch.manual_seed(0)
    host, seed = nn.Linear(4, 4), nn.Linear(4, 4)
    optimizer = torch.optim.SGD([{"params": list(host.parameters())}], lr=0.1)
    optimizer.add_param_group({"params": list(seed.parameters()), SEED_GROUP_KEY: "layers.0"})
    seeds = [
        SeedState(slot_id="layers.0", seed_id="s1", stage=lifecycle.BLENDING, blueprint_id="BP052", alpha=0.5),
        SeedState(slot_id="layers.1", stage=lifecycle.DORMANT),
    ]
    return seeds, optimizer, host, seed


def test_identical_replicas_have_identical_digests() -> None:
    first, second = replica(), replica()
    digests = [seed_digest(first[0], first[1]), seed_digest(second[0], second[1])]
    compare_digests(digests, "epoch 1")  # no mismatch


def test_a_stage_that_differs_is_named_with_the_rank_and_the_slot() -> None:
    leader, follower = replica(), replica()
    follower[0][0].stage = lifecycle.SHADOWING
    digests = [seed_digest(leader[0], leader[1]), seed_digest(follower[0], follower[1])]
    with pytest.raises(ReplicaMismatch, match=r"epoch 3, step 87: rank 1 differs from rank 0 in slot layers\.0: stage"):
        compare_digests(digests, "epoch 3, step 87")


def test_one_changed_bit_of_a_seed_weight_is_a_mismatch() -> None:
    leader, follower = replica(), replica()
    with torch.no_grad():
        weight = follower[3].weight.view(-1)
        weight[5] = torch.nextafter(weight[5], torch.tensor(float("inf")))
    digests = [seed_digest(leader[0], leader[1]), seed_digest(follower[0], follower[1])]
    with pytest.raises(ReplicaMismatch, match=r"rank 1 differs from rank 0 in slot layers\.0: the seed's weights"):
        compare_digests(digests, "the end of the run")


def test_host_weights_that_differ_are_a_mismatch_of_the_host() -> None:
    leader, follower, third = replica(), replica(), replica()
    with torch.no_grad():
        third[2].bias.add_(1e-3)
    digests = [seed_digest(run[0], run[1]) for run in (leader, follower, third)]
    with pytest.raises(ReplicaMismatch, match=r"rank 2 differs from rank 0 in the host's weights"):
        compare_digests(digests, "epoch 1")


def test_swapped_weights_are_a_mismatch_too() -> None:
    """The checksum weighs each bit pattern by its position: a permutation of the same values is caught."""
    leader, follower = replica(), replica()
    with torch.no_grad():
        follower[3].bias.copy_(follower[3].bias.flip(0))
    digests = [seed_digest(leader[0], leader[1]), seed_digest(follower[0], follower[1])]
    with pytest.raises(ReplicaMismatch, match="the seed's weights"):
        compare_digests(digests, "epoch 1")


def test_a_replayed_command_must_end_as_it_did_on_the_leader() -> None:
    command = AdaptationCommand(command_id="c-1", target_slot_id="layers.0")
    applied = CommandResult(command_id="c-1", status=CommandStatus.COMMAND_STATUS_APPLIED)
    directive = Directive.of([(command, applied)], halt="")
    seen: list[str] = []

    def follower_applies(received: AdaptationCommand) -> CommandResult:
        seen.append(received.command_id)
        return CommandResult(status=CommandStatus.COMMAND_STATUS_APPLIED)

    directive.replay(follower_applies, rank=1)
    assert seen == ["c-1"]

    def follower_refuses(received: AdaptationCommand) -> CommandResult:
        return CommandResult(status=CommandStatus.COMMAND_STATUS_REJECTED_ILLEGAL, detail="slot busy")

    with pytest.raises(ReplicaMismatch, match=r"rank 1: .*c-1 for slot layers\.0 ended APPLIED on rank 0 but "):
        directive.replay(follower_refuses, rank=1)


def test_one_process_is_its_own_leader_and_every_collective_is_the_identity() -> None:
    ranks = Ranks.single()
    assert ranks.leads and not ranks.distributed
    assert ranks.broadcast({"a": 1}, "test") == {"a": 1}
    assert ranks.gather(3, "test") == [3]
    total = torch.tensor([2.0], dtype=torch.float64)
    ranks.sum([total], "test")
    assert total.item() == 2.0
    assert ranks.device(torch.device("cpu")) == torch.device("cpu")


def test_nproc_launches_torchrun_on_loopback_with_the_same_arguments() -> None:
    argv = ["run", "cfg.toml", "--nproc", "4", "--set", "run.epochs=2", "--nproc=4"]
    assert without_nproc(argv) == ["run", "cfg.toml", "--set", "run.epochs=2"]
    command = torchrun_command(without_nproc(argv), 4)
    assert "--nproc-per-node=4" in command and "--rdzv-endpoint=127.0.0.1:0" in command
    assert command[-6:] == ["-m", "esper_core.cli.main", "run", "cfg.toml", "--set", "run.epochs=2"]


def test_a_process_count_below_one_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--nproc", "0"])
    assert "--nproc takes a whole number of processes, at least 1, not '0'" in capsys.readouterr().err
