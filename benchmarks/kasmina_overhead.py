"""What Kasmina's slots and seeds cost a training step, as ratios measured in one run.

1. A Fashion-MNIST-sized CNN (28x28 inputs, batch 128, three conv layers) with 4 DORMANT slots against the same
   plain model: the step-time ratio (target <= 1.01; dormant slots hold no hook at all).
2. One seed (a residual 3x3 conv block) at the middle slot in TRAINING and in BLENDING: the extra step time over the
   plain host, divided by the time of the seed module's own forward + backward on the same activation. A ratio
   near 1 means Kasmina adds nothing beyond the seed's own compute.

Variants are timed in interleaved rounds (A, B, C, A, B, C, ...) so that load on this shared machine falls on all of
them alike; each figure is the median over rounds of the per-step time.

Usage: python benchmarks/kasmina_overhead.py [--rounds 15] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintTier,
    CommandSeedOperation,
    CommandStatus,
    CommandType,
    SeedOperation,
    SlotKind,
)
from esper_core.protocols import FetchedSeed, SlotShape
from esper_core.signing import CommandSigner, CommandVerifier, SigningKey
from esper_kasmina.executor import KasminaSeedExecutor
from esper_kasmina.options import KasminaOptions

SLOT_POINTS = ["features.1", "features.4", "features.7", "head.2"]
SEED_SLOT = "features.4"


class FashionCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.head(self.features(x))
        return output


class ResidualConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.project = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.conv(x)))  # type: ignore[no-any-return]


class OneBlueprint:
    name = "bench"

    def descriptors(self) -> list[BlueprintDescriptor]:
        return [
            BlueprintDescriptor(
                blueprint_id="BP900",
                name="residual_conv",
                tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
                slot_kinds=[SlotKind.SLOT_KIND_CONV2D],
                catalog="bench",
            )
        ]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        return ResidualConv(slot.shape[0])

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return sum(p.numel() for p in ResidualConv(slot.shape[0]).parameters())

    def fetch(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> FetchedSeed:
        return FetchedSeed(self.build(blueprint_id, slot, parameters), None, "0" * 64, 0.0, "built")

    def close(self) -> None:
        pass


def make_step(
    model: nn.Module, parameters: list[nn.Parameter], inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(parameters, lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def with_seed(
    stage: str, inputs: torch.Tensor, targets: torch.Tensor, state: dict[str, Any]
) -> tuple[Callable[[], None], nn.Module]:
    torch.manual_seed(0)
    model = FashionCNN()
    model.load_state_dict(state)
    catalog = OneBlueprint()
    key = SigningKey.generate()
    kasmina = KasminaSeedExecutor(
        store=catalog,
        catalogs=[catalog],
        verifier=CommandVerifier(key),
        options=KasminaOptions(
            blend_steps=10**9,
            max_step_overhead=1e9,
            min_contribution=-1e9,
            max_loss_spike=1e9,
            max_seed_loss_regression=1e9,
        ),
    )
    kasmina.attach(model, SLOT_POINTS, inputs[:2])
    optimizer = torch.optim.SGD(kasmina.host_parameters(), lr=0.01)
    kasmina.bind_optimizer(optimizer)
    kasmina.set_probe(inputs[:32], targets[:32], nn.functional.cross_entropy)
    signer = CommandSigner(key)

    def command(operation: SeedOperation.ValueType, blueprint: str = "") -> None:
        result = kasmina.apply(
            signer.sign(
                AdaptationCommand(
                    command_type=CommandType.COMMAND_SEED,
                    target_slot_id=SEED_SLOT,
                    seed_operation=CommandSeedOperation(operation=operation, blueprint_id=blueprint),
                )
            )
        )
        assert result.status == CommandStatus.COMMAND_STATUS_APPLIED, result.detail

    loss, correct = nn.functional.cross_entropy, lambda o, t: (o.argmax(1) == t).sum()
    kasmina.evaluate([(inputs, targets)], loss, correct)
    command(SeedOperation.SEED_OP_GERMINATE, "BP900")
    command(SeedOperation.SEED_OP_START_TRAINING)
    if stage == "blending":
        kasmina.evaluate([(inputs, targets)], loss, correct)
        command(SeedOperation.SEED_OP_START_GRAFTING)
    slot = kasmina.bank.get(SEED_SLOT)  # type: ignore[union-attr]
    assert slot is not None and slot.seed is not None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step, slot.seed


def seed_alone(seed: nn.Module, activation: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        seed.zero_grad(set_to_none=True)
        seed(activation).sum().backward()

    return step


def timed(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs = torch.randn(args.batch, 1, 28, 28)
    targets = torch.randint(0, 10, (args.batch,))
    plain = FashionCNN()
    state = plain.state_dict()

    dormant = FashionCNN()
    dormant.load_state_dict(state)
    key = SigningKey.generate()
    catalog = OneBlueprint()
    KasminaSeedExecutor(store=catalog, catalogs=[catalog], verifier=CommandVerifier(key)).attach(
        dormant, SLOT_POINTS, inputs[:2]
    )

    training_step, training_seed = with_seed("training", inputs, targets, state)
    blending_step, _ = with_seed("blending", inputs, targets, state)
    activation = plain.features[:5](inputs).detach()  # the activation at the seed's slot
    variants = {
        "plain": make_step(plain, list(plain.parameters()), inputs, targets),
        "dormant": make_step(dormant, list(dormant.parameters()), inputs, targets),
        "training": training_step,
        "blending": blending_step,
        "seed_alone": seed_alone(training_seed, activation),
    }
    for step in variants.values():  # warm up
        timed(step, 3)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            samples[name].append(timed(step, args.steps))
    median = {name: statistics.median(values) for name, values in samples.items()}
    dormant_ratio = statistics.median(d / p for d, p in zip(samples["dormant"], samples["plain"], strict=True))
    training_ratio = (median["training"] - median["plain"]) / median["seed_alone"]
    blending_ratio = (median["blending"] - median["plain"]) / median["seed_alone"]
    step_ms = {name: round(value * 1000, 3) for name, value in median.items()}
    results = {
        "step_ms": step_ms,
        "dormant_over_plain": round(dormant_ratio, 4),
        "training_extra_over_seed_fwd_bwd": round(training_ratio, 3),
        "blending_extra_over_seed_fwd_bwd": round(blending_ratio, 3),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    print(f"per-step median (ms), batch {args.batch}, {torch.get_num_threads()} threads:")
    for name, value in step_ms.items():
        print(f"  {name:12} {value:8.3f}")
    print(f"4 dormant slots / plain model:               {dormant_ratio:.4f}  (target <= 1.01)")
    print(f"seed in TRAINING: extra step time / seed f+b: {training_ratio:.3f}")
    print(f"seed in BLENDING: extra step time / seed f+b: {blending_ratio:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
