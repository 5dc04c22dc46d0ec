"""This process's place among the data-parallel processes of one run (docs/distributed.md).

A run launched by ``torchrun`` (or ``esper run --nproc N``) has ``WORLD_SIZE`` processes, its *ranks*. Rank 0, the
*leader*, runs the controller, writes the run record, the checkpoints and the telemetry; the others, *followers*,
train their shard of every batch and replay the leader's decisions. :class:`Ranks` is the one place that talks to
``torch.distributed``: every collective the loop needs goes through it, so that a peer that died or cannot be
reached becomes one :class:`RankLost` error naming what was under way, instead of a backend traceback.

A single process has ``Ranks.single()``: every collective is the identity, and nothing imports or initialises
``torch.distributed``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from esper_core.errors import EsperError

__all__ = ["RankLost", "Ranks", "launched_by_torchrun"]

T = TypeVar("T")
#: What the errors of a failed exchange between ranks say (gloo's and NCCL's come as plain RuntimeErrors).
COMMUNICATION_MARKS = ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


class RankLost(EsperError):
    """A collective failed: another process of the run stopped, or cannot be reached."""


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Ranks:
    """The run's processes as this one sees them: ``rank`` of ``world``; ``leads`` for rank 0."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str = "") -> None:
        self.rank = rank
        self.world = world
        self.local_rank = local_rank
        self.backend = backend
        #: What a person should do when a peer was lost (the trainer sets it: how to resume the run).
        self.then = "start the run again"

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @classmethod
    def from_environment(cls, timeout_s: float) -> Ranks:
        """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for CPU tensors and for the messages between ranks,
        NCCL for CUDA tensors when torch sees a GPU (one device per process, ``cuda:LOCAL_RANK``). A collective
        that waits longer than ``timeout_s`` fails (a peer that hangs)."""
        import torch.distributed as dist

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
            except (RuntimeError, ValueError) as error:
                raise RankLost(
                    f"rank {rank} of {world} could not join the run's process group ({error}); check MASTER_ADDR "
                    "and MASTER_PORT (torchrun's --rdzv-endpoint) and that every process was started"
                ) from error
        return cls(rank, world, local_rank, backend)

    # -- who ----------------------------------------------------------------------------------------------------
    @property
    def leads(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:LOCAL_RANK`` for a CUDA run on several processes, else ``device``."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world} ({self.backend})" if self.distributed else "one process"

    # -- collectives --------------------------------------------------------------------------------------------
    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Around a collective: a failure (a peer that died, a timeout) becomes :class:`RankLost`."""
        try:
            yield
        except RankLost:
            raise
        except (RuntimeError, ConnectionError) as error:
            raise self._lost(error, what) from error

    def lost(self, error: BaseException, what: str) -> RankLost | None:
        """What ``error``, raised during ``what`` (a training step, whose backward pass exchanges gradients), means
        when it is a failed exchange with the other ranks (an error of torch.distributed, gloo or NCCL); else None."""
        if not self.distributed:
            return None
        import torch.distributed as dist

        text = str(error)
        exchanged = isinstance(error, dist.DistError) or any(mark in text for mark in COMMUNICATION_MARKS)
        return self._lost(error, what) if exchanged else None

    def _lost(self, error: BaseException, what: str) -> RankLost:
        first = str(error).splitlines()[0] if str(error) else ""
        return RankLost(
            f"rank {self.rank}: another process of the run stopped or stopped answering during {what} "
            f"({type(error).__name__}: {first}); every process stops. {self.then}"
        )

    def broadcast(self, value: T | None, what: str) -> T:
        """The leader's ``value`` on every rank (any picklable object; followers pass ``None``)."""
        if not self.distributed:
            assert value is not None
            return value
        import torch.distributed as dist

        box: list[Any] = [value if self.leads else None]
        with self.collective(what):
            dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]  # type: ignore[no-any-return]

    def gather(self, value: T, what: str) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        with self.collective(what):
            dist.all_gather_object(gathered, value)
        return gathered

    def sum(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Replace each tensor by its sum over the ranks, in place (one collective for all of them)."""
        if not self.distributed or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([tensor.reshape(-1).to(torch.float64) for tensor in tensors])
        with self.collective(what):
            dist.all_reduce(flat)
        start = 0
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(flat[start : start + count].view_as(tensor))
            start += count

    def align_buffers(self, model: nn.Module, parameters: Sequence[torch.Tensor], what: str) -> None:
        """Give every rank the leader's floating-point buffers: the host's and its seeds' (batch-norm statistics
        drift apart on each rank's shard; the validation and the gates read them). Every floating-point tensor of
        the model's state that is not one of ``parameters`` (the optimized ones, identical already)."""
        if not self.distributed:
            return
        optimized = {p.data_ptr() for p in parameters}
        self.align(
            [t for t in model.state_dict().values() if _is_tensor(t) and t.is_floating_point()
             and t.data_ptr() not in optimized],
            what,
        )  # fmt: skip

    def align(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Overwrite each tensor with the leader's, in place."""
        if not self.distributed or not tensors:
            return
        import torch.distributed as dist

        with self.collective(what):
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def barrier(self, what: str) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        with self.collective(what):
            dist.barrier()

    def close(self) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _object_device(self) -> torch.device:
        return torch.device("cpu")  # messages go through gloo, whatever trains on the GPUs


def _is_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor)
