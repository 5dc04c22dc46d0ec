"""Starting a run on several processes (docs/distributed.md).

``esper run --nproc N`` starts ``torchrun`` (PyTorch's launcher, ``python -m torch.distributed.run``) with N
processes on this machine, each running the same ``esper run`` command; under ``torchrun`` (``WORLD_SIZE`` > 1 in
the environment) :func:`open_ranks` joins them into one run:

1. every process joins the process group (:class:`~esper_core.tolaria.ranks.Ranks`);
2. the leader (rank 0) starts the run, or reopens it for ``--resume``, exactly as one process would: its directory,
   record, checkpoints, bus, controller and sinks;
3. it sends the followers what they need to build the same run: the run's id and directory, its resolved
   configuration, and its signing key (their executors verify the leader's commands with it). A leader that could
   not start sends its error instead, and every rank stops with it;
4. each follower builds the run in ``RUN_DIR/ranks/rank-N`` (on its own machine): the same task, model, seed
   executor, artifact store and optimizer, with an in-process bus, no telemetry sinks and no controller (a follower
   never decides: :class:`FollowerController`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import EsperError
from esper_core.leyline import AdaptationCommand, CommandResult, FieldReport, SystemStatePacket
from esper_core.plugins.registry import Registry
from esper_core.signing import SigningKey
from esper_core.storage import atomic_write_text
from esper_core.tolaria.assembly import CONFIG_FILE, Run, RunError, assemble, device_of, reopen_run, start_run
from esper_core.tolaria.options import RunOptions
from esper_core.tolaria.ranks import RankLost, Ranks

__all__ = ["FollowerController", "Opened", "follower_dir", "launch", "open_ranks", "torchrun_command"]

#: What a follower's configuration changes: it publishes nothing (the leader does, once for the run).
FOLLOWER_OVERRIDES = ("oona.backend=memory", "nissa.sinks=[]", "tolaria.publish_record=false")
#: Where a follower keeps its own files, under the run's directory.
RANKS_DIRECTORY = "ranks"


class FollowerController:
    """Stands in for the controller on a follower: the leader decides for every rank, so being asked is a bug."""

    def decide(self, state: SystemStatePacket) -> AdaptationCommand:
        raise EsperError("a follower rank was asked to decide; only rank 0 consults the controller")

    def observe(self, state: SystemStatePacket, command: AdaptationCommand, result: CommandResult) -> list[FieldReport]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        return None

    def close(self) -> None:
        return None


@attrs.frozen
class Opened:
    """This process's part of a run on several processes."""

    ranks: Ranks
    run: Run
    #: The leader's run directory (a follower's ``run.run_dir`` is its own directory under it).
    run_dir: Path


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The ``torchrun`` command that runs ``esper`` with ``argv`` (without ``--nproc``) on ``nproc`` processes of
    this machine, meeting on a free port of 127.0.0.1."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", "-m", "esper_core.cli.main", *argv,
    ]  # fmt: skip


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` (or ``--nproc=N``)."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            kept.append(item)
    return kept


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``esper`` with ``argv`` on ``nproc`` processes under ``torchrun``; its exit status. When a process fails,
    ``torchrun`` stops the others."""
    try:
        return subprocess.call(torchrun_command(without_nproc(argv), nproc), env=dict(os.environ))
    except KeyboardInterrupt:
        return 130


def follower_dir(run_dir: Path, rank: int) -> Path:
    return run_dir / RANKS_DIRECTORY / f"rank-{rank}"


def open_ranks(
    registry: Registry,
    *,
    config_path: Path | None,
    overrides: Sequence[str],
    resume: Path | None,
    timeout_s: float,
) -> Opened:
    """Join the run's processes and build this process's part of the run (see the module's notes)."""
    ranks = Ranks.from_environment(timeout_s)
    _stop_on_sigterm(ranks)
    if not ranks.leads:
        return _follow(registry, ranks)
    try:
        if resume is not None:
            config = registry.load_config(resume / CONFIG_FILE, env={}, overrides=overrides)
            device = ranks.device(device_of(config.get(RunOptions)))
            run = reopen_run(registry, resume, overrides, device=device)
        else:
            config = registry.load_config(config_path, overrides=overrides)
            run = start_run(registry, config, device=ranks.device(device_of(config.get(RunOptions))))
    except BaseException as error:
        ranks.broadcast({"error": str(error) or type(error).__name__}, "telling the ranks that the run cannot start")
        raise
    offer = {
        "run_id": run.run_id, "run_dir": str(run.run_dir), "config": run.config.to_toml(),
        "secret": run.signing_key.secret,
    }  # fmt: skip
    ranks.broadcast(offer, "sending the run to the ranks")
    ranks.then = f"the last checkpoint is resumable: esper run --resume {run.run_dir} --nproc {ranks.world}"
    return Opened(ranks, run, run.run_dir)


def _stop_on_sigterm(ranks: Ranks) -> None:
    """torchrun stops every process of a run when one fails, with SIGTERM: say so, in one line, and stop (whatever
    was being written is written atomically; the last checkpoint stands)."""

    def stopped(_signal: int, _frame: Any) -> None:
        raise RankLost(
            f"rank {ranks.rank}: torchrun stopped this process (SIGTERM) because another process of the run failed; "
            f"{ranks.then}"
        )

    signal.signal(signal.SIGTERM, stopped)


def _follow(registry: Registry, ranks: Ranks) -> Opened:
    offer: dict[str, Any] = ranks.broadcast(None, "waiting for rank 0 to start the run")
    if "error" in offer:
        raise RunError(f"rank 0 could not start the run: {offer['error']}")
    run_dir = Path(offer["run_dir"])
    own = follower_dir(run_dir, ranks.rank)
    own.mkdir(parents=True, exist_ok=True)
    atomic_write_text(own / CONFIG_FILE, offer["config"])
    config = registry.load_config(own / CONFIG_FILE, env={}, overrides=FOLLOWER_OVERRIDES)
    run = assemble(
        registry, config, own, offer["run_id"], signing_key=SigningKey(offer["secret"]),
        controller_of=FollowerController, device=ranks.device(device_of(config.get(RunOptions))),
    )  # fmt: skip
    ranks.then = f"the last checkpoint is resumable: esper run --resume {run_dir} --nproc {ranks.world}"
    return Opened(ranks, run, run_dir)
