"""Width seeds started from the host's statistics: the numbers against a direct computation on small cases, the
fallbacks to a zero start, and what Kasmina reports and does with them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper_core.leyline import SeedOperation, SlotKind, lifecycle
from esper_core.protocols import SlotShape
from esper_kasmina import growth_statistics
from esper_kasmina.growth_statistics import initialise, moments, predicted_decrease

from kasmina_rig import Rig, ZeroWidth

VECTOR, CONV = SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_CONV2D


def vector_slot(read: int, write: int) -> SlotShape:
    return SlotShape(VECTOR, (write,), read_kind=VECTOR, read_shape=(read,))


def quadratic_model_change(d: torch.Tensor, g: torch.Tensor) -> float:
    """E[g.d + |d|^2 / 2] over rows: the unit-curvature model's change of the loss for an update ``d``."""
    return float(((g * d).sum(dim=1) + 0.5 * (d * d).sum(dim=1)).mean())


def test_the_predicted_decrease_is_what_the_best_linear_update_of_each_rank_achieves() -> None:
    torch.manual_seed(0)
    a = torch.randn(400, 5, dtype=torch.float64)
    g = a @ torch.randn(5, 3, dtype=torch.float64) + 0.1 * torch.randn(400, 3, dtype=torch.float64)
    found = moments(a, g, vector_slot(5, 3))
    assert found is not None
    full = predicted_decrease(found, widths=(3,))[0]
    # The unrestricted optimum by least squares: d = W a with W = -E[g a^T] E[a a^T]^-1.
    w = -torch.linalg.lstsq(a, g).solution.T
    assert -quadratic_model_change(a @ w.T, g) == pytest.approx(full, rel=1e-2)  # up to the small ridge
    decreases = predicted_decrease(found, widths=(1, 2, 3, 8))
    assert decreases == sorted(decreases) and decreases[-1] == pytest.approx(decreases[-2])  # rank 3 at most


def test_paired_units_realise_the_rank_k_solution_exactly_and_achieve_the_predicted_decrease() -> None:
    torch.manual_seed(1)
    slot = vector_slot(6, 4)
    a = torch.randn(300, 6)
    g = torch.randn(300, 4) + a[:, :4]
    seed = ZeroWidth(slot, width=4)  # two pairs: rank 2
    found = moments(a, g, slot)
    assert found is not None
    with torch.no_grad():
        decrease = growth_statistics._paired_linear(seed.grow_in, seed.grow_out, found)  # type: ignore[arg-type]
        d = seed(a).double()
    # act(u) - act(-u) = u: the seed computes a linear map of rank 2.
    assert torch.linalg.matrix_rank(torch.linalg.lstsq(a.double(), d).solution, tol=1e-6) == 2
    assert decrease == pytest.approx(predicted_decrease(found, widths=(2,))[0])
    assert -quadratic_model_change(d, g.double()) == pytest.approx(decrease, rel=1e-3)


def test_initialisation_keeps_the_scale_the_line_search_finds_best_and_the_function_until_blending() -> None:
    torch.manual_seed(2)
    slot = vector_slot(6, 4)
    a = torch.randn(64, 6)
    target = a[:, :4] * 2.0
    seed = ZeroWidth(slot, width=6)
    assert float(seed(a).detach().abs().sum()) == 0.0

    def loss() -> float:
        with torch.no_grad():
            return float(((seed(a) - target) ** 2).sum(dim=1).mean() / 2)

    gradient = -target  # d/dz of |z - target|^2 / 2 at z = 0, per sample
    done = initialise(seed, slot, a, gradient, loss)
    assert done.method == "tiny" and done.scale in growth_statistics.SCALES and done.scale > 0
    assert loss() < float((target**2).sum(dim=1).mean() / 2), "the new units start where the loss wants them"
    assert "initialised from the host's statistics" in done.describe()


@pytest.mark.parametrize(
    ("read", "gradient", "reason"),
    [
        (torch.full((8, 6), float("nan")), torch.randn(8, 4), "not finite"),
        (torch.randn(8, 6), torch.zeros(8, 4), "gradient at the write point is zero"),
    ],
)
def test_unusable_statistics_keep_the_zero_start_and_say_why(
    read: torch.Tensor, gradient: torch.Tensor, reason: str
) -> None:
    seed = ZeroWidth(vector_slot(6, 4), width=4)
    done = initialise(seed, vector_slot(6, 4), read, gradient, lambda: 0.0)
    assert done.method == "zero" and reason in done.reason and reason in done.describe()
    assert float(seed.grow_out.weight.detach().abs().sum()) == 0.0  # type: ignore[arg-type]


def test_when_no_scale_lowers_the_loss_the_zero_start_is_restored() -> None:
    torch.manual_seed(3)
    slot = vector_slot(6, 4)
    seed = ZeroWidth(slot, width=4)
    before = {name: tensor.clone() for name, tensor in seed.state_dict().items()}
    scales = iter(range(100))
    done = initialise(seed, slot, torch.randn(32, 6), torch.randn(32, 4), lambda: float(next(scales)))
    assert done.method == "zero" and "no scale" in done.reason
    assert all(torch.equal(before[name], tensor) for name, tensor in seed.state_dict().items())


def test_a_conv_seed_fits_its_outgoing_map_by_least_squares() -> None:
    torch.manual_seed(4)
    slot = SlotShape(CONV, (3, 4, 4), read_kind=CONV, read_shape=(2, 8, 8))
    seed = ZeroWidth(slot, width=5)
    a = torch.randn(16, 2, 8, 8)
    gradient = torch.randn(16, 3, 4, 4)

    def loss() -> float:
        with torch.no_grad():
            d = seed(a)
            return float(((gradient * d).sum(dim=(1, 2, 3)) + 0.5 * (d * d).sum(dim=(1, 2, 3))).mean())

    done = initialise(seed, slot, a, gradient, loss)
    assert done.method == "least squares" and done.predicted_decrease > 0
    assert loss() < 0.0


def test_kasmina_reports_the_predicted_decrease_of_dormant_width_slots_and_starts_seeds_from_it(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory("vector-width")
    rig.decide()
    dormant = {state.slot_id: state for state in rig.kasmina.export_seed_states()}
    width = dormant["0:input->2"]
    assert list(width.candidate_widths) == list(growth_statistics.CANDIDATE_WIDTHS)
    assert len(width.predicted_loss_decrease) == len(width.candidate_widths)
    assert list(width.predicted_loss_decrease) == sorted(width.predicted_loss_decrease)
    assert not dormant["3"].candidate_widths, "residual slots report no width predictions"
    result = rig.command(SeedOperation.SEED_OP_GERMINATE, "0:input->2", "BP950", width=4)
    reason = next(event.reason for event in result.transitions if event.to_stage == lifecycle.GERMINATED)
    assert "host's statistics" in reason or "zero start" in reason
    seeded = {state.slot_id: state for state in rig.kasmina.export_seed_states()}["0:input->2"]
    assert not seeded.candidate_widths, "a slot holding a seed has no candidates"
    assert rig.command(SeedOperation.SEED_OP_START_TRAINING, "0:input->2").status == 1  # isolation still holds


def test_width_init_zero_keeps_the_blueprints_zero_start(rig_factory: Callable[..., Rig]) -> None:
    from kasmina_rig import lenient

    rig = rig_factory("vector-width", options=lenient(width_init="zero"))
    rig.decide()
    rig.command(SeedOperation.SEED_OP_GERMINATE, "0:input->2", "BP950", width=4)
    seed = rig.kasmina.bank.get("0:input->2").seed  # type: ignore[union-attr]
    assert isinstance(seed, nn.Module) and float(seed.grow_out.weight.detach().abs().sum()) == 0.0  # type: ignore[union-attr, arg-type]


def test_gradmax_starts_incoming_weights_at_zero_along_the_steepest_directions() -> None:
    torch.manual_seed(5)
    slot = vector_slot(6, 4)
    a = torch.randn(200, 6)
    g = torch.randn(200, 4) + a[:, :4] * torch.tensor([3.0, 2.0, 0.5, 0.1])
    seed = ZeroWidth(slot, width=2)
    done = initialise(seed, slot, a, g, lambda: 0.0, method="gradmax")
    assert done.method == "gradmax"
    assert float(seed.grow_in.weight.detach().abs().sum()) == 0.0  # type: ignore[arg-type]
    # The function barely moves: the units output their small bias through W_out.
    assert float(seed(a).detach().abs().max()) <= 2 * growth_statistics.GRADMAX_BIAS
    # The incoming weights' first gradient (of E[g.d], d the seed's output) is W_out^T E[g a^T] ...
    seed.zero_grad()
    (g * seed(a)).sum(dim=1).mean().backward()
    cross = g.T.double() @ a.double() / len(a)  # E[g a^T]
    out = seed.grow_out.weight.detach().double()  # type: ignore[union-attr]
    assert seed.grow_in.weight.grad is not None  # type: ignore[union-attr]
    assert torch.allclose(seed.grow_in.weight.grad.double(), out.T @ cross, atol=1e-4)  # type: ignore[union-attr]
    # ... whose norm no other W_out with orthonormal columns beats: it is the top-2 singular values' norm.
    best = torch.linalg.svdvals(cross)[:2].pow(2).sum().sqrt()
    assert float(seed.grow_in.weight.grad.norm()) == pytest.approx(float(best), rel=1e-4)  # type: ignore[union-attr]
    for _ in range(20):
        q, _ = torch.linalg.qr(torch.randn(4, 2, dtype=torch.float64))
        assert float((q.T @ cross).norm()) <= float(best) + 1e-9


def test_gradmax_on_a_seed_reading_feature_maps_uses_the_least_squares_fit_and_says_so() -> None:
    torch.manual_seed(6)
    slot = SlotShape(CONV, (3, 4, 4), read_kind=CONV, read_shape=(2, 8, 8))
    seed = ZeroWidth(slot, width=3)
    a, gradient = torch.randn(8, 2, 8, 8), torch.randn(8, 3, 4, 4)

    def loss() -> float:
        with torch.no_grad():
            d = seed(a)
            return float(((gradient * d).sum(dim=(1, 2, 3)) + 0.5 * (d * d).sum(dim=(1, 2, 3))).mean())

    done = initialise(seed, slot, a, gradient, loss, method="gradmax")
    assert "gradmax needs a vector read" in done.describe()
    with pytest.raises(ValueError, match="unknown width initialisation 'magic'"):
        initialise(seed, slot, torch.randn(8, 2, 8, 8), torch.randn(8, 3, 4, 4), lambda: 0.0, method="magic")


def test_gradmax_says_when_the_width_exceeds_what_the_statistics_can_direct() -> None:
    torch.manual_seed(7)
    slot = vector_slot(3, 2)  # E[g a^T] is 2 x 3: rank 2 at most
    seed = ZeroWidth(slot, width=5)
    done = initialise(seed, slot, torch.randn(64, 3), torch.randn(64, 2), lambda: 0.0, method="gradmax")
    assert "3 of 5 units beyond the statistics' rank start idle" in done.describe()
    assert float(seed.grow_out.weight.detach()[:, 2:].abs().sum()) == 0.0  # type: ignore[index]
