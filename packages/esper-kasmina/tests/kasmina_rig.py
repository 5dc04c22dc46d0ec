"""Kasmina's test rig: a small blueprint catalog of our own (with two safety stressors), a store over it, hosts of
the three slot kinds, and a :class:`Rig` wiring a Kasmina to a host. Imported by the tests (the tests directory is on
pytest's ``pythonpath``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.leyline import (
    AdaptationCommand,
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    CommandResult,
    CommandSeedOperation,
    CommandType,
    GrowthMode,
    SeedOperation,
    SlotKind,
)
from esper_core.protocols import FetchedSeed, SlotShape
from esper_core.signing import CommandSigner, CommandVerifier, SigningKey
from esper_kasmina.executor import KasminaSeedExecutor
from esper_kasmina.options import KasminaOptions

CONV, VECTOR, SEQUENCE = SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_SEQUENCE


class ZeroResidual(nn.Module):
    """A residual adapter whose output layer starts at zero, for any slot kind."""

    def __init__(self, slot: SlotShape, hidden: int) -> None:
        super().__init__()
        if slot.kind == CONV:
            channels = slot.shape[0]
            self.inner: nn.Module = nn.Conv2d(channels, hidden, 3, padding=1)
            self.outer: nn.Module = nn.Conv2d(hidden, channels, 1)
        else:
            width = slot.shape[-1]
            self.inner, self.outer = nn.Linear(width, hidden), nn.Linear(hidden, width)
        nn.init.zeros_(self.outer.weight)  # type: ignore[arg-type]
        nn.init.zeros_(self.outer.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x)))  # type: ignore[no-any-return]


class ZeroWidth(nn.Module):
    """New units between two layers: they read the slot's read activation and write into its activation, starting at
    zero (``grow_out`` is zero-initialised). Shaped as a width seed (``grow_in``, ``grow_out``, ``hidden``), so that
    Kasmina can start it from the host's statistics."""

    def __init__(self, slot: SlotShape, width: int) -> None:
        super().__init__()
        source = slot.input
        self.target = slot
        self.conv_in = source.kind == CONV
        if self.conv_in:
            self.grow_in: nn.Module = nn.Conv2d(source.shape[0], width, 3, padding=1)
        else:
            self.grow_in = nn.Linear(source.shape[-1], width)
        if slot.kind == CONV:
            self.grow_out: nn.Module = nn.Conv2d(width, slot.shape[0], 1)
        else:
            self.grow_out = nn.Linear(width, slot.shape[-1])
        nn.init.zeros_(self.grow_out.weight)  # type: ignore[arg-type]
        nn.init.zeros_(self.grow_out.bias)  # type: ignore[arg-type]

    def hidden(self, a: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.grow_in(a))
        if self.conv_in and self.target.kind == CONV:
            return nn.functional.adaptive_max_pool2d(hidden, tuple(self.target.shape[1:]))
        if self.conv_in:
            return hidden.mean(dim=(2, 3))
        return hidden

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.grow_out(self.hidden(a))  # type: ignore[no-any-return]


class NaNAfter(ZeroResidual):
    """A stressor: behaves until its ``delay``-th forward call, then emits NaN."""

    def __init__(self, slot: SlotShape, delay: int) -> None:
        super().__init__(slot, 4)
        self.delay = delay
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        output = super().forward(x)
        return output * float("nan") if self.calls > self.delay else output


class _Amplify(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class ExplodingGradient(ZeroResidual):
    """A stressor: an ordinary forward whose gradients are multiplied by ``scale``."""

    def __init__(self, slot: SlotShape, scale: float) -> None:
        super().__init__(slot, 4)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Amplify.apply(super().forward(x), self.scale)  # type: ignore[no-any-return]


def _bounds(low: float, high: float, default: float) -> BlueprintParameterBounds:
    return BlueprintParameterBounds(min_value=low, max_value=high, default_value=default, integer=True)


class SmallCatalog:
    """BP901 residual adapter (every slot kind); BP990 NaN injection and BP991 exploding gradients (HIGH_RISK)."""

    name = "test"

    def descriptors(self) -> list[BlueprintDescriptor]:
        every = [CONV, VECTOR, SEQUENCE]
        return [
            BlueprintDescriptor(
                blueprint_id="BP901",
                name="zero_residual",
                tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
                risk=0.2,
                slot_kinds=every,
                catalog="test",
                allowed_parameters={"hidden": _bounds(1, 64, 8)},
            ),
            BlueprintDescriptor(
                blueprint_id="BP950",
                name="zero_width",
                tier=BlueprintTier.BLUEPRINT_TIER_SAFE,
                risk=0.2,
                slot_kinds=every,
                read_kinds=every,
                growth_mode=GrowthMode.GROWTH_MODE_WIDTH,
                catalog="test",
                allowed_parameters={"width": _bounds(1, 64, 4)},
            ),
            BlueprintDescriptor(
                blueprint_id="BP990",
                name="nan_after",
                tier=BlueprintTier.BLUEPRINT_TIER_HIGH_RISK,
                risk=1.0,
                slot_kinds=every,
                catalog="test",
                quarantine_only=True,
                allowed_parameters={"delay": _bounds(0, 100, 1)},
            ),
            BlueprintDescriptor(
                blueprint_id="BP991",
                name="exploding",
                tier=BlueprintTier.BLUEPRINT_TIER_HIGH_RISK,
                risk=0.9,
                slot_kinds=every,
                catalog="test",
                quarantine_only=True,
                allowed_parameters={"scale": BlueprintParameterBounds(min_value=1, max_value=1e12, default_value=1e9)},
            ),
        ]

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> nn.Module:
        if blueprint_id == "BP901":
            return ZeroResidual(slot, int(parameters.get("hidden", 8)))
        if blueprint_id == "BP950":
            return ZeroWidth(slot, int(parameters.get("width", 4)))
        if blueprint_id == "BP990":
            return NaNAfter(slot, int(parameters.get("delay", 1)))
        if blueprint_id == "BP991":
            return ExplodingGradient(slot, float(parameters.get("scale", 1e9)))
        raise KeyError(blueprint_id)

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        return sum(p.numel() for p in self.build(blueprint_id, slot, parameters).parameters())


class CatalogStore:
    """An artifact store that builds straight from a catalog (Urza's library is tested in esper-urza)."""

    def __init__(self, catalog: SmallCatalog) -> None:
        self.catalog = catalog
        self.fetches = 0

    def fetch(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> FetchedSeed:
        self.fetches += 1
        torch.manual_seed(7)  # an artifact's weights are fixed, like Urza's
        module = self.catalog.build(blueprint_id, slot, parameters)
        return FetchedSeed(
            module=module, descriptor=None, artifact_sha256="0" * 64, fetch_latency_ms=0.0, source="built"
        )

    def close(self) -> None:
        pass


class ConvHost(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


class SequenceHost(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 12)
        self.mix = nn.Sequential(nn.Linear(12, 12), nn.GELU())
        self.out = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(self.embed(x)).mean(dim=1))  # type: ignore[no-any-return]


def vector_host() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


@attrs.define
class Rig:
    """A host with Kasmina attached, an optimizer, a signer and data."""

    model: nn.Module
    kasmina: KasminaSeedExecutor
    optimizer: torch.optim.Optimizer
    signer: CommandSigner
    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int = 0

    def command(
        self, operation: SeedOperation.ValueType, slot: str, blueprint: str = "", **parameters: float
    ) -> CommandResult:
        command = AdaptationCommand(
            command_type=CommandType.COMMAND_SEED,
            target_slot_id=slot,
            seed_operation=CommandSeedOperation(operation=operation, blueprint_id=blueprint, parameters=parameters),
        )
        return self.kasmina.apply(self.signer.sign(command))

    def train(self, steps: int = 5) -> None:
        self.model.train()
        for _ in range(steps):
            self.optimizer.zero_grad()
            nn.functional.cross_entropy(self.model(self.inputs), self.targets).backward()
            self.optimizer.step()

    def decide(self) -> None:
        """One decision point: validate (with contributions) and update the slots."""
        self.epoch += 1
        self.kasmina.evaluate([(self.inputs, self.targets)], nn.functional.cross_entropy, correct)
        self.kasmina.decision_point(self.epoch, self.epoch * 10)

    def stage(self, slot: str) -> int:
        return next(state.stage for state in self.kasmina.export_seed_states() if state.slot_id == slot)


def correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).sum()


HOSTS: dict[str, tuple[Callable[[], nn.Module], list[str], tuple[int, ...], int]] = {
    "conv": (ConvHost, ["features.2", "features.5", "head.2"], (1, 16, 16), 5),
    "vector": (vector_host, ["1", "3"], (6,), 4),
    "sequence": (SequenceHost, ["embed", "mix"], (7, 3), 4),
    # Width slots (new channels or neurons between two layers) beside a residual one.
    "conv-width": (
        ConvHost,
        ["features.0:input->features.3", "features.3:input->head.1", "features.5"],
        (1, 16, 16),
        5,
    ),
    "vector-width": (vector_host, ["0:input->2", "2:input->4", "3"], (6,), 4),
    "sequence-width": (SequenceHost, ["embed->mix.0", "mix"], (7, 3), 4),
}


def lenient(**overrides: Any) -> KasminaOptions:
    """Options whose *measurement* gates always pass (the safety checks - isolation, finiteness, gradient bounds -
    stay as they are), for tests of stage mechanics on random data."""
    settings: dict[str, Any] = {
        "blend_steps": 4,
        "min_contribution": -1e9,
        "max_regression": 1e9,
        "max_loss_spike": 1e9,
        "max_seed_loss_regression": 1e9,
        "max_step_overhead": 1e9,
    }
    settings.update(overrides)
    return KasminaOptions(**settings)


def make_rig(
    catalog: SmallCatalog | None = None,
    host: str = "conv",
    *,
    options: KasminaOptions | None = None,
    allowed: tuple[str, ...] = ("SAFE",),
    seed: int = 0,
) -> Rig:
    factory, points, shape, classes = HOSTS[host]
    torch.manual_seed(seed)
    model = factory()
    inputs = torch.randn(32, *shape)
    targets = torch.randint(0, classes, (32,))
    key = SigningKey.generate()
    kasmina = KasminaSeedExecutor(
        store=CatalogStore(catalog or SmallCatalog()),
        catalogs=[catalog or SmallCatalog()],
        verifier=CommandVerifier(key),
        options=options or lenient(),
        allowed_tiers=allowed,
    )
    kasmina.attach(model, points, inputs[:2])
    optimizer = torch.optim.Adam(kasmina.host_parameters(), lr=1e-2)
    kasmina.bind_optimizer(optimizer)
    kasmina.set_probe(inputs[:16], targets[:16], nn.functional.cross_entropy)
    return Rig(model, kasmina, optimizer, CommandSigner(key), inputs, targets)
