"""The ``gromo`` arm of the efficacy experiment: GroMo's own TINY growth on (the closest variant of) the narrow host.

GroMo (``pip install gromo``, Inria) is the growth library a user would otherwise pick, so this arm runs its own
documented procedure, as its tutorials do it, on the data, optimiser, batch size, epochs and seed handling of the
other arms (``benchmarks/efficacy/run.py``), and grows to the parameter budget the heuristic arm ended with. What was
chosen and why is in ``benchmarks/efficacy/GROMO.md``; the short version:

- **Host.** GroMo cannot grow the exact host: a max-pool between two convolutions breaks its conv->conv statistics
  (they assume the second conv reads the first one's output position by position), and growing a convolution that
  feeds a linear head is not implemented (``NotImplementedError`` for ``M_-2``). The closest host it can grow is
  the same network with the first max-pool replaced by a stride of 2 in the second convolution: same layers, same
  1,020 parameters, same feature-map sizes and the same FLOPs per example. GroMo grows the first block's channels
  (new channels read the image and write into conv2, Esper's width slot ``blocks.0:input->blocks.1.0``); the
  second block's channels (into the head) it cannot grow.
- **Growth step** (GroMo's container tutorial): ``compute_statistics`` on training batches with a summed loss,
  ``compute_optimal_updates`` with GroMo's defaults (TINY: optimal update of the existing weights plus new neurons
  from the SVD, thresholds 1e-6 / 1e-3), ``select_best_update``, a line search of the scale over the tutorial's grid
  on held-out (validation) batches with ``evaluate_model(..., use_extended_model=True)``, ``apply_change``, and a new
  optimiser over the grown model (the tutorial builds one per growth step). A best scale of 0 means "do not grow":
  the update is dropped rather than applied as dead, zero-weight neurons.
- **Budget.** Each step adds at most the neurons left in the budget (``maximum_added_neurons``); growth stops when
  not one more neuron fits. The budget is the heuristic arm's final parameter count (``--budget``).
- **Compute.** FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: each training and validation
  step's count depends only on the model's shapes and the batch size, so it is measured once per (shapes, batch
  size) and added for every step; every statistics pass and every line-search pass GroMo makes is counted in full.

    pip install -r requirements/efficacy.txt                    # GroMo, pinned; not part of the dev tools
    python benchmarks/efficacy/gromo_arm.py --seeds 0 1 2 3 4   # one JSON row per seed on stdout

Without GroMo installed the arm stops with exit status 3 and the install hint; nothing else depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "fashion-mnist.toml"
ARM = "gromo"
#: The version pinned in requirements/efficacy.txt; the workaround below is checked against it.
PINNED = "0.1.0"
INSTALL_HINT = "pip install -r requirements/efficacy.txt"
EXIT_MISSING = 3
#: The heuristic arm's final parameter count in docs/results.md (the harness passes the one it measured).
DEFAULT_BUDGET = 2047
#: GroMo's container tutorial's line-search grid (examples/plot_growing_container_tutorial.py).
TUTORIAL_SCALES = (0.0, 0.1, 0.5, 1.0)
VALIDATION_BATCH = 256  # what Tolaria validates with (max(batch_size, 256))
TEST_BATCH = 512  # what Tolaria tests with


class GromoMissingError(RuntimeError):
    """GroMo is not importable: the arm cannot run (the other arms do not need it)."""


def require_gromo() -> ModuleType:
    """Import GroMo or say how to install it; only this arm needs it, so it is not a dependency of anything."""
    try:
        return importlib.import_module("gromo")
    except ImportError as error:
        raise GromoMissingError(
            f"the {ARM} arm needs GroMo, which is not installed ({error}). Install the pinned version with: "
            f"{INSTALL_HINT}"
        ) from None


@attrs.frozen
class Settings:
    """Everything the arm's result depends on; written into every row so a number can be traced to its settings."""

    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    widths: tuple[int, int]
    budget: int
    grow: bool = True
    #: Growth attempts happen in epochs first..last (inclusive), ``attempts_per_epoch`` times each, evenly spaced.
    first_growth_epoch: int = 2
    last_growth_epoch: int = 10
    attempts_per_epoch: int = 4
    #: Training batches (of ``batch_size``) GroMo's statistics are gathered on, each attempt.
    statistics_batches: int = 16
    #: Validation batches (of 256) each scale of the line search is evaluated on, each attempt.
    line_search_batches: int = 8
    scales: tuple[float, ...] = TUTORIAL_SCALES
    #: GroMo's convolution growth scheme: "restricted" (its containers' default) or "full".
    conv_type: str = "restricted"
    #: Train on the first N training images only (0: all); for quick checks, never for results.
    train_limit: int = 0


# -- FLOP accounting --------------------------------------------------------------------------------------------
class FlopTally:
    """Training compute by phase, counted with torch's ``FlopCounterMode``.

    A training or validation step's FLOPs depend only on the model's shapes and the batch's size, so ``step``
    measures each (phase, shapes, batch size) once and adds the cached count for every later step: counting every
    batch would slow the run by the counter's per-operation dispatch for no new information. ``pass_`` counts a
    whole call (a statistics pass, a line search) every time.
    """

    def __init__(self) -> None:
        self.by_phase: dict[str, int] = {}
        self._cache: dict[tuple[Any, ...], int] = {}

    def add(self, phase: str, flops: int) -> None:
        self.by_phase[phase] = self.by_phase.get(phase, 0) + flops

    @property
    def total(self) -> int:
        return sum(self.by_phase.values())

    @contextlib.contextmanager
    def step(self, phase: str, key: tuple[Any, ...]) -> Iterator[None]:
        cached = self._cache.get((phase, *key))
        if cached is not None:
            yield
            self.add(phase, cached)
            return
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self._cache[(phase, *key)] = counter.get_total_flops()
        self.add(phase, counter.get_total_flops())

    @contextlib.contextmanager
    def pass_(self, phase: str) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self.add(phase, counter.get_total_flops())


# -- the host, built from GroMo's parts --------------------------------------------------------------------------
def build_host(gromo: ModuleType, widths: Sequence[int], conv_type: str) -> Any:
    """The narrow host with its first max-pool replaced by a stride of 2 in conv2, as a GroMo sequential model.

    ``conv1 (1->w1, 3x3) ReLU`` at 28x28, ``conv2 (w1->w2, 3x3, stride 2) ReLU`` to 14x14, max-pool to 7x7, flatten,
    linear head: the same parameters and feature-map sizes as esper_core's ``ConvHost`` with ``widths``; conv2
    reads every other position of conv1's activations where ConvHost reads the max of each 2x2 window. conv2 is
    GroMo's growing layer: its input (conv1's output channels) grows.
    """
    import torch
    from gromo.containers.sequential_growing_container import SequentialGrowingModel
    from gromo.modules.conv2d_growing_module import FullConv2dGrowingModule, RestrictedConv2dGrowingModule
    from torch import nn

    kinds = {"restricted": RestrictedConv2dGrowingModule, "full": FullConv2dGrowingModule}
    if conv_type not in kinds:
        raise ValueError(f"unknown GroMo conv type {conv_type!r}: choose one of {', '.join(kinds)}")
    conv = kinds[conv_type]
    first, second = widths

    class StridedHost(SequentialGrowingModel):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(in_features=1, out_features=10)
            self.conv1 = conv(1, first, 3, padding=1, post_layer_function=nn.ReLU(), name="conv1", input_size=(28, 28))
            self.conv2 = conv(
                first, second, 3, stride=2, padding=1, post_layer_function=nn.ReLU(), previous_module=self.conv1,
                allow_growing=True, name="conv2",
            )  # fmt: skip
            self.conv1.next_module = self.conv2
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.head = nn.Linear(second * 7 * 7, 10)
            self._growable_layers = [self.conv2]
            self.set_growing_layers(scheduling_method="all")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            output: torch.Tensor = self.head(self.flatten(self.pool(self.conv2(self.conv1(x)))))
            return output

        def extended_forward(self, x: torch.Tensor, mask: dict[str, Any] | None = None) -> torch.Tensor:
            """The forward pass with the proposed update and new neurons, scaled (what the line search evaluates)."""
            hidden, extension = self.conv1.extended_forward(x)
            hidden, _ = self.conv2.extended_forward(hidden, extension)
            output: torch.Tensor = self.head(self.flatten(self.pool(hidden)))
            return output

    del gromo  # the parts are imported from it above; the argument says the caller checked it is installed
    return StridedHost()


def neuron_cost(layer: Any) -> int:
    """Parameters one new neuron of ``layer``'s input adds: its kernel and bias in the previous conv, its kernel
    in ``layer``."""
    previous = layer.previous_module
    incoming = previous.in_channels * previous.kernel_size[0] * previous.kernel_size[1] + int(previous.use_bias)
    return int(incoming + layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1])


def repair_statistic_shapes(layer: Any) -> None:
    """Work around GroMo 0.1.0's statistics after a conv's input grew, so the next growth step can run.

    ``Conv2dGrowingModule.layer_in_extension`` re-creates the statistics S and M of the grown layer with
    ``(in_channels + use_bias) * kh * kw`` rows instead of ``in_channels * kh * kw + use_bias`` (the bias is one
    row, not one per kernel position), and the next ``compute_statistics`` fails on the size mismatch. Setting the
    expected shapes to what ``compute_s_update`` / ``compute_m_update`` produce is all it takes; the statistics
    are empty at that point (they are re-initialised before every step).
    """
    rows = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + int(layer.use_bias)
    layer._tensor_s._shape = (rows, rows)
    layer.tensor_m._shape = (rows, layer.out_channels)


# -- the run -----------------------------------------------------------------------------------------------------
@attrs.define
class GrowthLog:
    attempts: int = 0
    accepted: int = 0
    neurons: int = 0
    events: list[dict[str, Any]] = attrs.Factory(list)


def shapes(model: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p.shape) for p in model.parameters())


def parameter_count(model: Any) -> int:
    return sum(int(p.numel()) for p in model.parameters())


def attempt_steps(steps: int, attempts: int) -> set[int]:
    """The training steps (1-based) after which an epoch's growth attempts happen: evenly spaced, the last one at
    the epoch's end."""
    return {max(1, math.ceil(steps * k / attempts)) for k in range(1, attempts + 1)}


def grow_once(
    model: Any, settings: Settings, attempt: int, loaders: dict[str, Any], tally: FlopTally, log: GrowthLog, epoch: int
) -> bool:
    """One GroMo growth step (its container tutorial's ``grow``), with at most the neurons the budget has room for;
    True when the model changed."""
    import torch
    from gromo.utils.training_utils import compute_statistics, evaluate_model

    layer = model.conv2
    room = (settings.budget - parameter_count(model)) // neuron_cost(layer)
    if room < 1:  # not one more neuron fits: growth is over
        return False
    log.attempts += 1
    sum_loss = torch.nn.CrossEntropyLoss(reduction="sum")  # GroMo averages the statistics itself
    mean_loss = torch.nn.CrossEntropyLoss()
    with tally.pass_("statistics"):
        compute_statistics(
            model, loaders["train"], loss_function=sum_loss, batch_limit=settings.statistics_batches,
            dataloader_seed=settings.seed * 1_000_003 + attempt,
        )  # fmt: skip
        model.compute_optimal_updates(maximum_added_neurons=room)
    model.reset_computation()
    model.conv1.store_input = False  # the tutorial's note: the previous layer keeps storing its input otherwise
    model.select_best_update()
    proposed = 0 if layer.eigenvalues_extension is None else int(layer.eigenvalues_extension.shape[0])
    improvement = float(layer.first_order_improvement)
    losses: list[float] = []
    with tally.pass_("line_search"):
        for scale in settings.scales:
            model.set_scaling_factor(scale)
            loss, _ = evaluate_model(
                model, loaders["held_out"], mean_loss, use_extended_model=True,
                batch_limit=settings.line_search_batches, dataloader_seed=settings.seed * 1_000_003 + attempt,
            )  # fmt: skip
            losses.append(loss)
    best = min(range(len(losses)), key=losses.__getitem__)  # ties go to the smaller scale (0 first)
    scale = settings.scales[best]
    event = {
        "epoch": epoch, "attempt": attempt, "proposed_neurons": proposed, "first_order_improvement": improvement,
        "scale": scale, "line_search_losses": losses,
    }  # fmt: skip
    model.set_scaling_factor(scale)
    if scale == 0.0:  # "a scaling factor of 0 means no growth": drop the update instead of adding dead neurons
        layer.delete_update()
        event["added_neurons"] = 0
        log.events.append(event)
        return False
    model.apply_change()
    repair_statistic_shapes(layer)
    log.accepted += 1
    log.neurons += proposed
    event["added_neurons"] = proposed
    event["parameters"] = parameter_count(model)
    log.events.append(event)
    return True


def run_seed(settings: Settings, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Train (and grow) one seed; the row ``benchmarks/efficacy/run.py`` tabulates, with GroMo's details."""
    start = time.perf_counter()
    gromo = require_gromo()
    import torch

    from esper_core.tasks.fashion_mnist import FashionMnistOptions, FashionMnistTask
    from esper_core.tolaria.assembly import make_optimizer, split_data
    from esper_core.tolaria.options import RunOptions, TolariaOptions

    registry_config = _esper_config(settings.seed, settings.epochs, settings.train_limit)
    run_options, tolaria = registry_config.get(RunOptions), registry_config.get(TolariaOptions)
    task = FashionMnistTask(registry_config.get(FashionMnistOptions))
    torch.manual_seed(run_options.seed)  # as Tolaria does before building the model: the seed fixes the weights
    data = split_data(task.data(), run_options, tolaria, torch.device("cpu"), task.name)
    model = build_host(gromo, settings.widths, settings.conv_type)
    start_parameters = parameter_count(model)
    if settings.grow and start_parameters > settings.budget:
        raise ValueError(f"the budget ({settings.budget:,}) is below the host's {start_parameters:,} parameters")
    optimizer = make_optimizer(list(model.parameters()), tolaria)

    train_x, train_y = data.train
    val_x, val_y = data.val
    loaders = {
        "train": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(train_x, train_y), batch_size=settings.batch_size, shuffle=True,
            generator=torch.Generator(),
        ),
        "held_out": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(val_x, val_y), batch_size=VALIDATION_BATCH, shuffle=True,
            generator=torch.Generator(),
        ),
    }  # fmt: skip
    tally, log = FlopTally(), GrowthLog()
    size = settings.batch_size
    steps = math.ceil(len(train_x) / size)
    val_accuracy = float("nan")
    for epoch in range(1, settings.epochs + 1):
        growing = settings.grow and settings.first_growth_epoch <= epoch <= settings.last_growth_epoch
        when = attempt_steps(steps, settings.attempts_per_epoch) if growing else set()
        shuffle = torch.Generator().manual_seed(run_options.seed * 1_000_003 + epoch)  # Tolaria's data order
        order = torch.randperm(len(train_x), generator=shuffle)
        model.train()
        loss_sum = 0.0
        for step in range(steps):
            index = order[step * size : (step + 1) * size]
            with tally.step("train", (shapes(model), len(index))):
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(model(train_x[index]), train_y[index])
                loss.backward()
                optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            if step + 1 in when:
                if grow_once(model, settings, log.attempts, loaders, tally, log, epoch):
                    optimizer = make_optimizer(list(model.parameters()), tolaria)  # a new one per growth, as GroMo's
                model.train()
        val_loss, val_accuracy = _evaluate(model, val_x, val_y, VALIDATION_BATCH, task, tally)
        progress(
            f"seed {settings.seed} epoch {epoch}: train loss {loss_sum / len(train_x):.4f}, val loss {val_loss:.4f}, "
            f"val accuracy {val_accuracy:.2%}, {parameter_count(model):,} parameters, conv1 width "
            f"{model.conv1.out_channels}, {time.perf_counter() - start:.0f} s"
        )
    test_x, test_y = data.test if data.test is not None else (None, None)
    test_loss, test_accuracy = _evaluate(model, test_x, test_y, TEST_BATCH, task, None)
    return {
        "arm": ARM if settings.grow else f"{ARM}-host-static",
        "seed": settings.seed,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "val_accuracy": val_accuracy,
        "parameters": parameter_count(model),
        "host_parameters": start_parameters,
        "wall_seconds": time.perf_counter() - start,
        "training_flops": tally.total,
        "flops": dict(tally.by_phase),
        "host": "strided: conv1 (1->w1) ReLU, conv2 (w1->w2, stride 2) ReLU, max-pool 2, flatten, linear",
        "widths": [int(model.conv1.out_channels), int(model.conv2.out_channels)],
        "gromo_version": getattr(gromo, "__version__", "unknown"),
        "growth": {"attempts": log.attempts, "accepted": log.accepted, "neurons_added": log.neurons},
        "growth_events": log.events,
        "settings": attrs.asdict(settings),
    }


def _evaluate(
    model: Any, inputs: Any, targets: Any, batch: int, task: Any, tally: FlopTally | None
) -> tuple[float, float]:
    """Loss and accuracy over a whole split; validation steps are counted (test evaluation is not training)."""
    import torch

    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(inputs), batch):
            x, y = inputs[begin : begin + batch], targets[begin : begin + batch]
            context = tally.step("validation", (shapes(model), len(x))) if tally else contextlib.nullcontext()
            with context:
                outputs = model(x)
            loss_sum += float(task.loss(outputs, y)) * len(x)
            correct += int(task.correct(outputs, y))
    return loss_sum / len(inputs), correct / len(inputs)


def _esper_config(seed: int, epochs: int, train_limit: int) -> Any:
    """examples/fashion-mnist.toml as the other arms read it, with this seed (and epochs, when given)."""
    from esper_core.plugins import Registry

    overrides = [f"run.seed={seed}", "run.device=cpu", f"run.fashion-mnist.train_limit={train_limit}"]
    if epochs:
        overrides.append(f"run.epochs={epochs}")
    return Registry.create().load_config(CONFIG, overrides=overrides)


def settings_from_config(args: argparse.Namespace, seed: int) -> Settings:
    """The run's settings: data, optimiser, batch size and widths from examples/fashion-mnist.toml, as the other
    arms; the growth settings from the command line."""
    from esper_core.tasks.fashion_mnist import FashionMnistOptions
    from esper_core.tolaria.options import RunOptions, TolariaOptions

    config = _esper_config(seed, args.epochs, args.train_limit)
    run_options, tolaria, task = config.get(RunOptions), config.get(TolariaOptions), config.get(FashionMnistOptions)
    if task.host != "cnn" or task.conv_head != "flatten" or len(task.widths) != 2:
        raise ValueError(
            f"{CONFIG} describes a {task.host} host with {len(task.widths)} blocks and a {task.conv_head!r} head; "
            "the gromo arm mirrors the two-block cnn host with a flatten head only"
        )
    widths = tuple(args.widths) if args.widths else tuple(task.widths)
    return Settings(
        seed=seed, epochs=args.epochs or run_options.epochs, batch_size=run_options.batch_size,
        learning_rate=tolaria.learning_rate, widths=(int(widths[0]), int(widths[1])), budget=args.budget,
        grow=not args.no_grow, first_growth_epoch=args.first_growth_epoch, last_growth_epoch=args.last_growth_epoch,
        attempts_per_epoch=args.attempts_per_epoch, statistics_batches=args.statistics_batches,
        line_search_batches=args.line_search_batches, conv_type=args.conv_type, train_limit=args.train_limit,
    )  # fmt: skip


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=positive, default=0, help="default: run.epochs of the example (15)")
    parser.add_argument("--budget", type=positive, default=DEFAULT_BUDGET, help="grow to at most this many parameters")
    parser.add_argument("--widths", type=positive, nargs=2, help="start widths (default: the example's, 1 2)")
    parser.add_argument("--no-grow", action="store_true", help="train the GroMo host without growth (a reference)")
    parser.add_argument("--first-growth-epoch", type=positive, default=2)
    parser.add_argument("--last-growth-epoch", type=positive, default=10)
    parser.add_argument("--attempts-per-epoch", type=positive, default=4)
    parser.add_argument("--statistics-batches", type=positive, default=16)
    parser.add_argument("--line-search-batches", type=positive, default=8)
    parser.add_argument("--conv-type", choices=["restricted", "full"], default="restricted")
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images only (quick checks)")
    parser.add_argument("--threads", type=positive, default=1, help="torch threads (the other arms use 1)")
    parser.add_argument("--out", type=Path, help="also write each seed's row to OUT/<arm>-seed<N>.json")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        gromo = require_gromo()
    except GromoMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_MISSING
    version = getattr(gromo, "__version__", "unknown")
    if version != PINNED:
        progress(f"warning: GroMo {version} is installed; this arm was written against {PINNED} ({INSTALL_HINT})")
    import torch

    # GroMo warns on every step about numerics it handles itself (an S not exactly symmetric in float32, the
    # pseudo-inverse fallback); a run would print thousands of them. The rows record what matters.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"gromo(\..*)?$")
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        row = run_seed(settings_from_config(args, seed), progress)
        text = json.dumps(row)
        print(text, flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{row['arm']}-seed{seed}.json").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
