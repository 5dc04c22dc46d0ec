"""Width slots: a seed that reads at one point of the host and writes into a later one (new channels or neurons
between two layers) goes through the same lifecycle, gates, isolation, blending, counterfactuals and state as a
residual seed."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from esper_core.leyline import CommandStatus, SeedOperation, SlotKind, lifecycle
from esper_core.signing import CommandSigner, CommandVerifier, SigningKey
from esper_kasmina.executor import KasminaSeedExecutor
from esper_kasmina.host import SlotError, attach_slots

from kasmina_rig import CatalogStore, Rig, SmallCatalog, ZeroWidth, correct, lenient

APPLIED = CommandStatus.COMMAND_STATUS_APPLIED
CONV, VECTOR = SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR


def states(rig: Rig) -> dict[str, object]:
    return {state.slot_id: state for state in rig.kasmina.export_seed_states()}


def test_a_width_slot_knows_what_it_reads_and_where_it_writes(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv-width")
    found = states(rig)
    channels = found["features.0:input->features.3"]
    assert (channels.read_kind, list(channels.read_shape)) == (CONV, [1, 16, 16])  # type: ignore[attr-defined]
    assert (channels.slot_kind, list(channels.slot_shape)) == (CONV, [8, 8, 8])  # type: ignore[attr-defined]
    into_head = found["features.3:input->head.1"]
    assert (into_head.read_kind, list(into_head.read_shape)) == (CONV, [6, 8, 8])  # type: ignore[attr-defined]
    assert (into_head.slot_kind, list(into_head.slot_shape)) == (VECTOR, [16])  # type: ignore[attr-defined]
    residual = found["features.5"]
    assert not residual.read_shape and residual.read_kind == SlotKind.SLOT_KIND_UNSPECIFIED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (["2->0"], "runs after"),
        (["0->0"], "reads the output it writes"),
        (["2->1"], "runs after"),
        (["0:sideways->2"], "is not READ->WRITE"),
        (["->2"], "is not READ->WRITE"),
        (["9->2"], "is not a module of the host"),
        (["0:input->2", " 0:input -> 2 "], "slot points repeat"),
    ],
)
def test_bad_width_points_are_refused_at_attach_time_naming_them(points: list[str], message: str) -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    with pytest.raises(SlotError, match=message):
        attach_slots(model, points, torch.randn(2, 6), lambda *args: nn.Identity())


def test_a_width_slot_reading_a_module_that_runs_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.shared(self.shared(x)))  # type: ignore[no-any-return]

    with pytest.raises(SlotError, match="runs 2 times per forward"):
        attach_slots(Twice(), ["shared->out"], torch.randn(2, 8), lambda *args: nn.Identity())


@pytest.mark.parametrize("host", ["conv-width", "vector-width", "sequence-width"])
def test_a_width_seed_goes_through_the_whole_lifecycle(rig_factory: Callable[..., Rig], host: str) -> None:
    rig = rig_factory(host)
    slot = next(state.slot_id for state in rig.kasmina.export_seed_states() if state.read_shape)
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP950", width=3).status == APPLIED
    for operation in (
        SeedOperation.SEED_OP_START_TRAINING,
        SeedOperation.SEED_OP_START_GRAFTING,
    ):
        assert rig.command(operation, slot).status == APPLIED, operation
        rig.train(5)
        rig.decide()
    rig.train(5)  # the blend ramp (4 steps, lenient options)
    rig.decide()
    for operation in (
        SeedOperation.SEED_OP_STABILIZE,
        SeedOperation.SEED_OP_EVALUATE,
        SeedOperation.SEED_OP_FOSSILIZE,
    ):
        result = rig.command(operation, slot)
        assert result.status == APPLIED, (operation, result.detail)
        rig.train(2)
        rig.decide()
    assert rig.stage(slot) == lifecycle.FOSSILIZED
    assert states(rig)[slot].contribution is not None  # type: ignore[attr-defined]


def test_a_residual_blueprint_does_not_grow_in_a_width_slot_nor_a_width_one_in_a_residual_slot(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory("vector-width")
    rig.decide()
    wrong = rig.command(SeedOperation.SEED_OP_GERMINATE, "0:input->2", "BP901")
    assert wrong.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE and "residual blueprint" in wrong.detail
    also_wrong = rig.command(SeedOperation.SEED_OP_GERMINATE, "3", "BP950")
    assert also_wrong.status == CommandStatus.COMMAND_STATUS_REJECTED_GATE and "width blueprint" in also_wrong.detail


def test_in_training_the_host_is_untouched_in_value_and_gradient(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv-width")
    slot = "features.0:input->features.3"
    plain = copy.deepcopy(rig.model)  # the slot bank stays with the original: the copy has no seeds
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP950", width=4)
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    isolation = next(gate for gate in result.gates if gate.check == "isolation")
    assert result.status == APPLIED and isolation.passed and isolation.measured <= 1e-6
    seed = rig.kasmina.bank.get(slot).seed  # type: ignore[union-attr]
    nn.init.normal_(seed.grow_out.weight)  # a seed that really computes something, not a zero start
    rig.model.eval()
    plain.eval()
    loss = nn.functional.cross_entropy(rig.model(rig.inputs), rig.targets)
    reference = nn.functional.cross_entropy(plain(rig.inputs), rig.targets)
    assert torch.equal(loss, reference), "the host's output value is unchanged while TRAINING"
    loss.backward()  # type: ignore[no-untyped-call]
    reference.backward()  # type: ignore[no-untyped-call]
    for (name, p), q in zip(rig.model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), f"host gradient {name} changed"  # type: ignore[arg-type]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters()), "the seed learns"


def test_blending_adds_alpha_times_the_seed_of_the_read_activation(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector-width")
    slot = "0:input->2"
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP950", width=4)
    rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.train(3)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, slot)
    rig.train(2)
    seeded = rig.kasmina.bank.get(slot)  # type: ignore[union-attr]
    assert seeded is not None and seeded.seed is not None
    nn.init.normal_(seeded.seed.grow_out.weight)
    alpha = seeded.alpha()
    assert 0 < alpha < 1
    rig.model.eval()
    x = rig.inputs[:5]
    first, second, last = (rig.model[index] for index in (0, 2, 4))  # type: ignore[index]
    with torch.no_grad():  # the host by hand (calling its layers would run the slot's hooks)
        z2 = nn.functional.linear(
            torch.relu(nn.functional.linear(x, first.weight, first.bias)), second.weight, second.bias
        )
        expected = nn.functional.linear(torch.tanh(z2 + alpha * seeded.seed(x)), last.weight, last.bias)
        assert torch.allclose(rig.model(x), expected, atol=1e-6)


def test_fused_counterfactuals_equal_one_forward_per_variant(rig_factory: Callable[..., Rig]) -> None:
    from esper_kasmina.evaluation import _variant_forwards, evaluate

    rig = rig_factory("conv-width")
    rig.decide()
    for slot, blueprint in (("features.0:input->features.3", "BP950"), ("features.3:input->head.1", "BP950")):
        rig.command(SeedOperation.SEED_OP_GERMINATE, slot, blueprint, width=3)
        rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.command(SeedOperation.SEED_OP_GERMINATE, "features.5", "BP901")
    rig.command(SeedOperation.SEED_OP_START_TRAINING, "features.5")
    for slot in rig.kasmina.slots:
        if slot.seed is not None:
            for parameter in slot.seed.parameters():
                nn.init.normal_(parameter, std=0.3)
    fused = evaluate(rig.model, rig.kasmina.slots, [(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct)
    assert fused.fused and fused.variants > 1
    from esper_kasmina import evaluation

    original = evaluation._fused_forward
    evaluation._fused_forward = lambda *args: None  # type: ignore[assignment]
    try:
        naive = evaluate(
            rig.model, rig.kasmina.slots, [(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct
        )
    finally:
        evaluation._fused_forward = original
    assert not naive.fused and _variant_forwards is not None
    for slot_id, measurement in fused.seeds.items():
        other = naive.seeds[slot_id]
        assert measurement.loss_off == pytest.approx(other.loss_off, abs=1e-5)
        assert measurement.loss_on == pytest.approx(other.loss_on, abs=1e-5)


def test_a_width_seed_survives_a_state_dict_round_trip_exactly(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector-width")
    slot = "2:input->4"
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP950", width=5)
    rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.train(3)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, slot)
    rig.train(3)
    saved = copy.deepcopy(rig.model.state_dict())
    again = rig_factory("vector-width")
    again.model.load_state_dict(saved)
    rig.model.eval()
    again.model.eval()
    assert torch.equal(rig.model(rig.inputs), again.model(rig.inputs))
    assert states(again)[slot].blueprint_id == "BP950"  # type: ignore[attr-defined]


def test_a_culled_width_seed_leaves_the_host_as_it_was(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("vector-width")
    slot = "0:input->2"
    rig.model.eval()
    before = rig.model(rig.inputs).detach()
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP950", width=4)
    rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, slot)
    assert rig.command(SeedOperation.SEED_OP_CULL, slot).status == APPLIED
    bank_slot = rig.kasmina.bank.get(slot)  # type: ignore[union-attr]
    assert bank_slot is not None and not bank_slot.hooked and bank_slot._read_handle is None
    rig.model.eval()
    assert torch.equal(rig.model(rig.inputs), before)


# -- a property over random hosts and random read/write points ------------------------------------------------------


@st.composite
def mlp_hosts(draw: st.DrawFn) -> tuple[list[int], str]:
    """Widths of a random MLP (Linear, Tanh, ..., Linear) and a random width slot point between two of its layers."""
    widths = draw(st.lists(st.integers(2, 9), min_size=3, max_size=5))
    layers = len(widths) - 1  # Linear layers at indices 0, 2, 4, ...
    read_layer = draw(st.integers(0, layers - 2))
    write_layer = draw(st.integers(read_layer + 1, layers - 1))
    side = draw(st.sampled_from(["input", "output"]))
    read = f"{2 * read_layer}:input" if side == "input" else f"{2 * read_layer}"
    return widths, f"{read}->{2 * write_layer}"


def build_mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if index < len(widths) - 2:
            layers.append(nn.Tanh())  # never dead: G1 needs the loss's gradient to reach the write point
    return nn.Sequential(*layers)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(host=mlp_hosts(), seed=st.integers(0, 1000))
def test_any_width_slot_is_dormant_identical_isolated_in_training_and_resumes_exactly(
    host: tuple[list[int], str], seed: int
) -> None:
    widths, point = host
    torch.manual_seed(seed)
    model = build_mlp(widths)
    plain = copy.deepcopy(model)
    inputs = torch.randn(16, widths[0])
    targets = torch.randint(0, widths[-1], (16,))
    key = SigningKey.generate()
    kasmina = KasminaSeedExecutor(
        store=CatalogStore(SmallCatalog()),
        catalogs=[SmallCatalog()],
        verifier=CommandVerifier(key),
        options=lenient(max_seed_parameter_fraction=100),
    )
    kasmina.attach(model, [point], inputs[:2])
    optimizer = torch.optim.SGD(kasmina.host_parameters(), lr=0.1)
    kasmina.bind_optimizer(optimizer)
    kasmina.set_probe(inputs, targets, nn.functional.cross_entropy)
    rig = Rig(model, kasmina, optimizer, CommandSigner(key), inputs, targets)

    def loss_and_grads(net: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        loss = nn.functional.cross_entropy(net(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach(), [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]

    dormant_loss, dormant_grads = loss_and_grads(model)
    plain_loss, plain_grads = loss_and_grads(plain)
    assert torch.equal(dormant_loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(dormant_grads, plain_grads, strict=True)), "DORMANT is the host"

    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_GERMINATE, point, "BP950", width=3).status == APPLIED
    result = rig.command(SeedOperation.SEED_OP_START_TRAINING, point)
    assert result.status == APPLIED, result.detail
    seed_module = kasmina.bank.get(point).seed  # type: ignore[union-attr]
    assert isinstance(seed_module, ZeroWidth)
    nn.init.normal_(seed_module.grow_out.weight)
    training_loss, training_grads = loss_and_grads(model)
    assert torch.equal(training_loss, plain_loss), "TRAINING leaves the host's output unchanged in value"
    assert all(torch.equal(a, b) for a, b in zip(training_grads, plain_grads, strict=True)), "host grads unchanged"

    rig.command(SeedOperation.SEED_OP_START_GRAFTING, point)
    rig.train(2)
    saved = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed)
    twin = build_mlp(widths)
    twin_kasmina = KasminaSeedExecutor(
        store=CatalogStore(SmallCatalog()),
        catalogs=[SmallCatalog()],
        verifier=CommandVerifier(key),
        options=lenient(max_seed_parameter_fraction=100),
    )
    twin_kasmina.attach(twin, [point], inputs[:2])
    twin.load_state_dict(saved)
    model.eval()
    twin.eval()
    assert torch.equal(model(inputs), twin(inputs)), "a resumed width seed computes exactly what it did"
