"""The loop real models need (issue #16), on real runs of the synthetic task: gradient accumulation equals the whole
batch, bf16 autocast trains, fp16 is refused off CUDA, the learning-rate schedule gives every group (a seed's added
mid-run too) the rate it should, through a rollback and through a kill and resume, bit for bit; the gradient
measurements fill every state packet, stay quiet on a healthy run and make the risk rules fire on unhealthy ones;
torch.compile trains."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.cli.main import main
from esper_core.errors import ConfigError
from esper_core.leyline import SeedOperation, SystemStatePacket, lifecycle
from esper_core.plugins import Registry, TaskSpec
from esper_core.protocols import BASE_LR_KEY, SEED_GROUP_KEY
from esper_core.tasks.synthetic import SyntheticTask
from esper_core.testing.processes import Child
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.gradients import measure_gradients
from esper_core.tolaria.record import decode_message, read_record
from esper_core.tolaria.step import LearningRateSchedule
from esper_core.tolaria.trainer import Summary, Trainer
from esper_kasmina.optimizer import SeedParameterGroups
from esper_tamiyo.commands import seed_command
from esper_tamiyo.options import RiskOptions
from esper_tamiyo.risk import RiskEngine

from tamiyo_scenarios import blueprint, packet, slot
from tolaria_runs import BASE, SaboteurPlugin, final_weights, schedule, stable

pytestmark = pytest.mark.slow

#: 4,096 synthetic examples, 409 held out: 3,687 to train on, 29 steps of 128 an epoch (the last one of 103).
STEPS_PER_EPOCH = 29


@attrs.frozen
class Trained:
    summary: Summary
    run_dir: Path
    #: Each optimizer group at the end: (slot or None, lr, base lr or None).
    groups: list[tuple[str | None, float, float | None]]
    compilations: int


def train(tmp_path: Path, *overrides: str, registry: Registry | None = None) -> Trained:
    registry = registry or Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*BASE, f"run.runs_dir={tmp_path}", *overrides])
    trainer = Trainer(start_run(registry, config))
    try:
        summary = trainer.fit()
        groups = [
            (group.get(SEED_GROUP_KEY), float(group["lr"]), group.get(BASE_LR_KEY))
            for group in trainer.run.optimizer.param_groups
        ]
        return Trained(summary, trainer.run.run_dir, groups, trainer.step.compilations)
    finally:
        trainer.close()


def entries(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [entry for entry in read_record(run_dir) if entry["kind"] == kind]


def packets(run_dir: Path) -> list[SystemStatePacket]:
    return [decode_message(entry["packet"], SystemStatePacket) for entry in entries(run_dir, "decision")]


# -- accumulation ---------------------------------------------------------------------------------------------
def test_accumulating_four_micro_batches_trains_as_the_whole_batch_does(tmp_path: Path) -> None:
    """``accumulation_steps = 4`` against whole batches of 128 over three epochs with a seed that germinates and
    trains (its TRAINING pull included): the same steps, samples and counted FLOPs, and weights within 1e-6 after 87
    SGD steps (float32 sums taken in another order; the last batch of each epoch, 103 examples, splits
    26/26/26/25). SGD's update is linear in the gradient; Adam divides by the gradient's own size, which turns such
    rounding differences in near-zero gradients into visible ones over many steps (the step tests compare it)."""
    sgd = ["tolaria.optimizer=sgd", "tolaria.learning_rate=0.05", *schedule(1)]
    whole = train(tmp_path / "whole", "run.name=r", "run.epochs=3", *sgd)
    accumulated = train(tmp_path / "acc", "run.name=r", "run.epochs=3", *sgd, "tolaria.accumulation_steps=4")
    for key in ("epochs", "training_flops", "validation_flops"):
        assert getattr(whole.summary, key) == getattr(accumulated.summary, key), key
    epochs = [entries(run.run_dir, "epoch") for run in (whole, accumulated)]
    assert [e["global_step"] for e in epochs[0]] == [e["global_step"] for e in epochs[1]] == [29, 58, 87]
    for a, b in zip(*epochs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    ours, theirs = final_weights(whole.run_dir), final_weights(accumulated.run_dir)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if value.is_floating_point():
            assert torch.allclose(value, theirs[key], atol=1e-6, rtol=0), (key, (value - theirs[key]).abs().max())
    assert [d["operation"] for d in entries(whole.run_dir, "decision")] == [
        d["operation"] for d in entries(accumulated.run_dir, "decision")
    ]


# -- precision ------------------------------------------------------------------------------------------------
def test_a_bf16_run_trains(tmp_path: Path) -> None:
    trained = train(tmp_path, "run.name=bf16", "run.epochs=4", *schedule(1), "tolaria.precision=bf16")
    losses = [entry["train_loss"] for entry in entries(trained.run_dir, "epoch")]
    assert losses[-1] < 0.7 * losses[0], losses
    assert trained.summary.val_accuracy > 0.6  # four classes: chance is 0.25


def test_fp16_on_the_cpu_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*BASE, f"run.runs_dir={tmp_path}", "run.device=cpu",
                                                     "tolaria.precision=fp16"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"tolaria\.precision = 'fp16' needs a CUDA device"):
        start_run(registry, config)
    assert list(tmp_path.iterdir()) == []


def test_more_micro_batches_than_examples_in_a_batch_is_refused(tmp_path: Path) -> None:
    registry = Registry.create(env={})
    config = registry.load_config(env={}, overrides=[*BASE, f"run.runs_dir={tmp_path}", "run.batch_size=8",
                                                     "tolaria.accumulation_steps=16"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"tolaria.accumulation_steps \(16\) cannot exceed run.batch_size \(8\)"):
        start_run(registry, config)


# -- learning-rate schedules ----------------------------------------------------------------------------------
COSINE = ["tolaria.lr_schedule=cosine", "tolaria.lr_warmup_steps=40", "tolaria.lr_min_fraction=0.05"]


def expected_rate(base: float, step: int, epochs: int) -> float:
    cosine = LearningRateSchedule(
        "cosine", total_steps=epochs * STEPS_PER_EPOCH, warmup_steps=40, min_fraction=0.05
    )  # fmt: skip
    return base * cosine.factor(step)


def test_the_schedule_sets_every_groups_rate_through_a_seed_and_a_rollback(tmp_path: Path) -> None:
    """Warm-up and cosine over a run whose seed (germinated at epoch 1, its rate the host's base, 0.002) turns NaN
    and is rolled back at epoch 4: at every decision point the host's rate is the one of the last step taken, the
    epochs trained again after the rollback included; the seed's group took the host's *base* as its own."""
    registry = Registry.create(env={})
    registry.pm.register(SaboteurPlugin(), name="saboteur")
    registry.invalidate()
    seeded = train(tmp_path / "a", "run.name=r", "run.epochs=6", 'urza.catalogs=["saboteur"]',
                   *schedule(1, blueprint="BP990"), *COSINE, registry=registry)  # fmt: skip
    assert [entry["epoch"] for entry in entries(seeded.run_dir, "rollback")] == [4]
    states = packets(seeded.run_dir)
    assert [state.current_epoch for state in states] == [1, 2, 3, 4, 5, 6]
    for state in states:
        assert state.metrics.learning_rate == expected_rate(0.002, state.global_step - 1, 6), state.current_epoch
    assert states[0].metrics.learning_rate < 0.002 < states[1].metrics.learning_rate * 1.2  # warm-up, then near
    assert seeded.groups[0] == (None, expected_rate(0.002, 6 * STEPS_PER_EPOCH - 1, 6), 0.002)

    # A seed that lives: its group's rate is its base (the host's base) times the same factor.
    grown = train(tmp_path / "b", "run.name=r", "run.epochs=4", *schedule(1), *COSINE)
    (seed_group,) = [group for group in grown.groups if group[0] is not None]
    assert seed_group[2] == 0.002, "the seed's base is the host's base, not the host's warm-up rate at germination"
    assert seed_group[1] == expected_rate(0.002, 4 * STEPS_PER_EPOCH - 1, 4)


def test_a_fine_tune_sets_the_base_that_the_schedule_multiplies() -> None:
    """Kasmina's seed groups under the schedule: a seed added mid-run, then a FINE_TUNE of its rate, even to the
    very rate the schedule had just set."""
    host, seed = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.Adam(host.parameters(), lr=0.01)
    groups = SeedParameterGroups()
    groups.bind(optimizer)
    decay = LearningRateSchedule("step", total_steps=100, warmup_steps=10, step_every=20, gamma=0.5)
    for t in range(35):
        decay.apply(optimizer, t)
    assert groups.host_learning_rate() == 0.01, "a seed's default rate is the host's base"
    groups.add("slot", list(seed.parameters()), groups.host_learning_rate(), 0.0)
    decay.apply(optimizer, 35)
    assert optimizer.param_groups[1]["lr"] == 0.01 * 0.5
    groups.set_learning_rate("slot", 0.004)  # FINE_TUNE
    decay.apply(optimizer, 50)
    assert optimizer.param_groups[1]["lr"] == 0.004 * 0.25 and optimizer.param_groups[1][BASE_LR_KEY] == 0.004
    groups.set_learning_rate("slot", optimizer.param_groups[1]["lr"])  # FINE_TUNE to the current rate, 0.001
    decay.apply(optimizer, 51)
    assert optimizer.param_groups[1][BASE_LR_KEY] == 0.001 and optimizer.param_groups[1]["lr"] == 0.001 * 0.25


#: The resumed run: bf16, accumulation, warm-up and cosine, two seeds (germinated at epochs 2 and 3).
RESUMABLE = [*BASE, "run.epochs=5", *schedule(2, 3), "tolaria.precision=bf16", "tolaria.accumulation_steps=2",
             *COSINE]  # fmt: skip
HOLD_EPOCH, HOLD_STEP = 4, 15

#: ``esper run`` in a child process that stops at step HOLD_STEP of epoch HOLD_EPOCH (after the checkpoint of epoch
#: HOLD_EPOCH - 1), says so, and waits to be killed. The stop is a step callback: up to it, the child computes what
#: an uninterrupted run computes.
_STOPPING_RUN = """
import sys
from esper_core.cli.main import main
from esper_core.tolaria.trainer import Trainer

arguments, epoch_to_hold, step_to_hold = {arguments!r}, {epoch!r}, {step!r}
original = Trainer.train_epoch

def train_epoch(self, epoch):
    if epoch == epoch_to_hold:
        def on_step(step, steps):
            if step == step_to_hold:
                print("stopped", flush=True)
                sys.stdin.read()
        self.on_step = on_step
    return original(self, epoch)

Trainer.train_epoch = train_epoch
sys.exit(main(arguments))
"""


def test_a_run_with_a_schedule_killed_mid_epoch_resumes_bit_for_bit(tmp_path: Path) -> None:
    whole = train(tmp_path / "whole", "run.name=run", *RESUMABLE[len(BASE) :])
    killed = tmp_path / "killed"
    settings = (*RESUMABLE, f"run.runs_dir={killed}", "run.name=run")
    arguments = ["run", "--quiet", *(f"--set={item}" for item in settings)]
    script = _STOPPING_RUN.format(arguments=arguments, epoch=HOLD_EPOCH, step=HOLD_STEP)
    environment = {**os.environ, "ESPER_DISABLE_PLUGIN_AUTOLOAD": ""}
    with Child([sys.executable, "-c", script], env=environment) as process:
        process.wait_for("stopped", deadline_s=600)
        assert process.kill() == -signal.SIGKILL
    run_dir = killed / "run"
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("*.pt"))[-1] == "epoch-0003.pt"
    assert main(["run", "--quiet", "--resume", str(run_dir)]) == 0
    expected, resumed = final_weights(whole.run_dir), final_weights(run_dir)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert stable(read_record(run_dir)) == stable(read_record(whole.run_dir))
    rates = [[s.metrics.learning_rate for s in packets(directory)] for directory in (run_dir, whole.run_dir)]
    assert rates[0] == rates[1] and len(set(rates[0])) == len(rates[0]), "a rate of its own at each decision point"


# -- gradient measurements ------------------------------------------------------------------------------------
def test_gradient_measurements_fill_every_packet_and_stay_quiet_on_a_healthy_run(tmp_path: Path) -> None:
    trained = train(tmp_path, "run.name=healthy", "run.epochs=8", *schedule(2))
    states = packets(trained.run_dir)
    for state in states:
        metrics = state.metrics
        assert all(metrics.HasField(f) for f in ("gradient_norm", "gradient_norm_ewma", "gradient_variance"))
        assert 0 < metrics.gradient_norm < 10 and 0 < metrics.gradient_variance < 1e3  # healthy: far below 1e6
    in_value = {lifecycle.BLENDING, lifecycle.SHADOWING, lifecycle.PROBATIONARY}
    blending = [s for s in states if any(seed.stage in in_value for seed in s.seeds)]
    assert blending and all(s.metrics.HasField("gradient_conflict_rate") for s in blending)
    assert all(0.0 <= s.metrics.gradient_conflict_rate <= 0.5 for s in blending)
    assert not any(s.metrics.HasField("gradient_conflict_rate") for s in states[:2]), "no seed in the value yet"
    norms = [s.metrics.gradient_norm for s in states]
    ewma = norms[0]
    for state, norm in zip(states, norms, strict=True):
        ewma = norm if state is states[0] else 0.3 * norm + 0.7 * ewma
        assert state.metrics.gradient_norm_ewma == pytest.approx(ewma)
    fired = {rule for decision in entries(trained.run_dir, "decision") for rule in decision["rules"]}
    assert not fired & {"gradient_variance", "gradient_conflict"}


class ScaledInputs:
    """The synthetic task with its inputs multiplied by ``scale``: un-normalised data, whose gradients explode."""

    name = "scaled"

    def __init__(self, scale: float) -> None:
        self.inner, self.scale = SyntheticTask(), scale

    def build_model(self) -> nn.Module:
        return self.inner.build_model()

    def slot_points(self) -> list[str]:
        return self.inner.slot_points()

    def data(self) -> Any:
        data = self.inner.data()
        test = data.test_inputs * self.scale if data.test_inputs is not None else None
        return attrs.evolve(data, train_inputs=data.train_inputs * self.scale, test_inputs=test)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.inner.loss(outputs, targets)
        return loss

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.inner.correct(outputs, targets)
        return result


class ScaledInputsPlugin:
    @hookimpl
    def esper_tolaria_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="scaled", factory=lambda context: ScaledInputs(3000.0))]


def test_exploding_gradients_make_the_variance_rule_hold_growth_back(tmp_path: Path) -> None:
    """Inputs in the thousands (un-normalised data): one example's gradient is thousands of times its healthy size,
    the variance passes tamiyo.risk.max_gradient_variance (1e6) by far, and the germination proposed at epoch 1 is
    held back."""
    registry = Registry.create(env={})
    registry.pm.register(ScaledInputsPlugin(), name="scaled")
    registry.invalidate()
    trained = train(tmp_path, "run.name=scaled", "run.task=scaled", "run.epochs=2", *schedule(1), registry=registry)
    first = entries(trained.run_dir, "decision")[0]
    assert packets(trained.run_dir)[0].metrics.gradient_variance > 1e7
    assert "gradient_variance" in first["rules"]
    assert first["operation"] == "noop" and "held back germinate: gradient_variance" in first["rationale"]


def test_a_seed_that_undoes_the_hosts_steps_makes_the_conflict_rule_hold_growth_back() -> None:
    """The measurement on a host and a seed that trade examples off (the seed's step raises the losses the host's
    lowers), into a state packet, through Tamiyo's risk engine: rate 1 > 0.5, growth held back."""

    class HostAndSeed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.host, self.seed = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.host * x[:, 0] + self.seed * x[:, 1]

    model = HostAndSeed()
    inputs, targets = torch.tensor([[1.0, -0.2], [-1.0, 1.0]] * 8), torch.tensor([-1.0, -0.5] * 8)

    def loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((outputs - y) ** 2).mean()

    measured = measure_gradients(model, inputs, targets, loss, [model.host], {"a": [model.seed]}, 8)
    assert measured is not None and measured.conflict_rate == 1.0
    state = packet(5, 0.5, [slot("a")], gradient_conflict_rate=measured.conflict_rate)
    germinate = seed_command(SeedOperation.SEED_OP_GERMINATE, "a", "proposed", policy="test", blueprint_id="BP101")
    review = RiskEngine(RiskOptions()).review(germinate, state, {"BP101": blueprint("BP101")})
    assert [firing.rule for firing in review.fired] == ["gradient_conflict"]
    assert review.command.decision.rationale.startswith("held back germinate: gradient_conflict")


# -- compile --------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from inside its compiler
def test_compile_trains_and_compiles_again_only_when_the_seeds_in_the_forward_pass_change(tmp_path: Path) -> None:
    """torch.compile on the CPU (a cold compile costs seconds): a seed germinated at epoch 1 enters the forward
    pass at epoch 3 (TRAINING), so three epochs compile twice; the losses are those of the eager run, within float
    rounding (the compiled kernels fuse and reorder)."""
    pytest.importorskip("torch._inductor")
    eager = train(tmp_path / "eager", "run.name=r", "run.epochs=3", *schedule(1))
    compiled = train(tmp_path / "compiled", "run.name=r", "run.epochs=3", *schedule(1), "tolaria.compile=true")
    assert compiled.compilations == 2 and eager.compilations == 0
    ours = [e["train_loss"] for e in entries(eager.run_dir, "epoch")]
    theirs = [e["train_loss"] for e in entries(compiled.run_dir, "epoch")]
    assert all(math.isfinite(x) for x in theirs) and theirs == pytest.approx(ours, rel=1e-3)


def test_help_documents_the_loop_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for key in ("precision", "accumulation_steps", "lr_schedule", "lr_warmup_steps", "lr_min_fraction",
                "lr_step_every", "lr_step_gamma", "compile", "gradient_micro_batches"):  # fmt: skip
        assert f"tolaria.{key}" in out, key
