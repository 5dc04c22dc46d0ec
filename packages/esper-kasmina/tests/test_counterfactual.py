"""Every seed's counterfactual contribution comes out of the validation pass itself, and matches a naive
computation that runs one full validation pass per variant; the pass's compute is counted once per configuration of
seeds, and scaled to every sample."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import attrs
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import esper_core.flops
import esper_kasmina.evaluation
from esper_core.flops import count_flops
from esper_core.leyline import CommandStatus, SeedOperation, lifecycle
from esper_kasmina.evaluation import evaluate

from kasmina_rig import Rig, correct, lenient


def prepared(rig_factory: Callable[..., Rig]) -> Rig:
    """A conv rig with one seed TRAINING (features.2) and one BLENDING mid-ramp (head.2), both with real weights."""
    rig = rig_factory("conv", options=lenient(blend_steps=10))
    rig.decide()
    for slot in ("features.2", "head.2"):
        assert (
            rig.command(SeedOperation.SEED_OP_GERMINATE, slot, "BP901").status == CommandStatus.COMMAND_STATUS_APPLIED
        )
    rig.decide()
    for slot in ("features.2", "head.2"):
        rig.command(SeedOperation.SEED_OP_START_TRAINING, slot)
    rig.train(3)
    rig.decide()
    rig.command(SeedOperation.SEED_OP_START_GRAFTING, "head.2")
    rig.train(4)
    return rig


def naive(rig: Rig, alphas: dict[str, float]) -> tuple[float, float]:
    """Loss and accuracy with each named slot's seed at a fixed alpha, by brute force: one full pass."""
    slots = {slot.slot_id: slot for slot in rig.kasmina.slots}
    saved = {slot_id: (slots[slot_id].record.stage, slots[slot_id].seed) for slot_id in alphas}
    hooks = []
    for slot_id, alpha in alphas.items():
        slot = slots[slot_id]
        slot.record.stage = lifecycle.DORMANT
        slot.sync_hook()
        seed = slot.seed
        hooks.append(
            slot._target.register_forward_hook(  # type: ignore[union-attr]
                lambda _m, _i, h, seed=seed, alpha=alpha: h + alpha * seed(h)
            )
        )
    rig.model.eval()
    with torch.no_grad():
        output = rig.model(rig.inputs)
    for handle in hooks:
        handle.remove()
    for slot_id, (stage, _) in saved.items():
        slots[slot_id].record.stage = stage
        slots[slot_id].sync_hook()
    loss = nn.functional.cross_entropy(output, rig.targets).item()
    return loss, correct(output, rig.targets).item() / len(rig.targets)


def test_fused_contributions_equal_the_naive_ones(rig_factory: Callable[..., Rig]) -> None:
    rig = prepared(rig_factory)
    blend_alpha = rig.kasmina.bank.get("head.2").alpha()  # type: ignore[union-attr]
    assert 0.0 < blend_alpha < 1.0
    evaluation = rig.kasmina.evaluate(
        [(rig.inputs[:16], rig.targets[:16]), (rig.inputs[16:], rig.targets[16:])], nn.functional.cross_entropy, correct
    )
    assert evaluation.fused and evaluation.variants == 4  # as-is; features.2 on; head.2 off; head.2 on
    as_is = {"features.2": 0.0, "head.2": blend_alpha}
    assert evaluation.loss == pytest.approx(naive(rig, as_is)[0], rel=1e-5)
    for slot_id in ("features.2", "head.2"):
        off, on = naive(rig, {**as_is, slot_id: 0.0}), naive(rig, {**as_is, slot_id: 1.0})
        measured = evaluation.seeds[slot_id]
        assert measured.loss_off == pytest.approx(off[0], rel=1e-5)
        assert measured.loss_on == pytest.approx(on[0], rel=1e-5)
        assert measured.accuracy_on == pytest.approx(on[1])
        assert measured.contribution == pytest.approx(off[0] - on[0], abs=1e-5)
    exported = {s.slot_id: s for s in rig.kasmina.export_seed_states()}
    assert exported["head.2"].contribution == pytest.approx(evaluation.seeds["head.2"].contribution)


def test_the_host_prefix_runs_once_per_batch(rig_factory: Callable[..., Rig]) -> None:
    rig = prepared(rig_factory)
    calls = []
    handle = rig.model.features[0].register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))  # type: ignore[index]
    evaluation = rig.kasmina.evaluate([(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct)
    handle.remove()
    assert calls == [32]  # one un-replicated run of the layers before the first measured slot
    assert evaluation.variants == 4


def test_without_measured_seeds_evaluation_is_plain_validation(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("conv")
    evaluation = rig.kasmina.evaluate([(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct)
    rig.model.eval()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(rig.model(rig.inputs), rig.targets).item()
    assert evaluation.variants == 1 and evaluation.seeds == {}
    assert evaluation.loss == pytest.approx(expected, rel=1e-6)
    assert evaluation.samples == 32


class FixedBatchHost(nn.Module):
    """A host that reshapes by the batch size it was called with, so the fused forward cannot work."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.last = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        return self.last(self.act(self.first(x)).reshape(batch, -1))  # type: ignore[no-any-return]


def test_a_host_that_is_not_batch_agnostic_is_measured_variant_by_variant(rig_factory: Callable[..., Rig]) -> None:
    from kasmina_rig import HOSTS

    HOSTS["fixed"] = (FixedBatchHost, ["act"], (6,), 4)
    try:
        rig = rig_factory("fixed")
    finally:
        del HOSTS["fixed"]
    rig.decide()
    assert (
        rig.command(SeedOperation.SEED_OP_GERMINATE, "act", "BP901", hidden=2).status
        == CommandStatus.COMMAND_STATUS_APPLIED
    )
    rig.decide()
    assert rig.command(SeedOperation.SEED_OP_START_TRAINING, "act").status == CommandStatus.COMMAND_STATUS_APPLIED
    rig.train(3)
    evaluation = rig.kasmina.evaluate([(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct)
    assert not evaluation.fused and evaluation.variants == 2
    assert evaluation.seeds["act"].loss_on == pytest.approx(naive(rig, {"act": 1.0})[0], rel=1e-5)
    # Not fused, each variant is a whole forward: the failed fused attempt is not what later batches cost.
    assert evaluation.flops == 2 * evaluation.validation_flops > 0


def test_a_contribution_comes_with_the_standard_error_of_its_per_batch_differences(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = prepared(rig_factory)
    batches = [(rig.inputs[start : start + 8], rig.targets[start : start + 8]) for start in range(0, 32, 8)]
    evaluation = rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct)
    differences = []
    for inputs, targets in batches:
        off = naive_on(rig, "head.2", 0.0, inputs, targets)
        on = naive_on(rig, "head.2", 1.0, inputs, targets)
        differences.append(off - on)
    expected = torch.tensor(differences, dtype=torch.float64)
    measured = evaluation.seeds["head.2"]
    assert measured.contribution == pytest.approx(float(expected.mean()), abs=1e-5)
    assert measured.contribution_stderr == pytest.approx(float(expected.std() / 2.0), abs=1e-5)  # sqrt(4 batches)
    state = next(s for s in rig.kasmina.export_seed_states() if s.slot_id == "head.2")
    assert state.contribution_stderr == pytest.approx(measured.contribution_stderr)
    single = rig.kasmina.evaluate([(rig.inputs, rig.targets)], nn.functional.cross_entropy, correct)
    assert single.seeds["head.2"].contribution_stderr is None  # one batch: no spread to measure


def naive_on(rig: Rig, slot_id: str, alpha: float, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The loss on one batch with ``slot_id``'s seed at ``alpha`` (the other measured seed as it is: alpha 0)."""
    saved_inputs, saved_targets = rig.inputs, rig.targets
    rig.inputs, rig.targets = inputs, targets
    try:
        return naive(rig, {slot_id: alpha, "features.2": 0.0})[0]
    finally:
        rig.inputs, rig.targets = saved_inputs, saved_targets


def plain_flops(rig: Rig, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Counted FLOPs of a plain validation pass of the model as it is (no counterfactual variants)."""
    rig.model.eval()
    with torch.no_grad():
        _, counted = count_flops(lambda: [rig.model(inputs) for inputs, _ in batches])
    rig.model.train()
    return counted


def test_the_pass_counts_its_flops_on_one_batch_and_scales_them_to_every_sample(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = prepared(rig_factory)
    batches = [(rig.inputs[a:b], rig.targets[a:b]) for a, b in ((0, 16), (16, 29), (29, 32))]
    first = rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct)
    # The same pass again (this configuration is counted already), counted from outside on every batch: exactly
    # what the first reported from its first batch, the last partial batch included.
    second, everything = count_flops(lambda: rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct))
    assert first.flops == second.flops == everything
    assert first.validation_flops == plain_flops(rig, batches)
    # Four variants, the host prefix up to features.2 once: the measurement costs less than three more passes.
    assert 0 < first.measurement_flops < 3 * first.validation_flops


def test_the_pass_is_counted_once_per_configuration_of_seeds(
    rig_factory: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = prepared(rig_factory)
    counters = []
    original = esper_kasmina.evaluation.flop_counter

    def counter() -> FlopCounterMode:
        counters.append(1)
        return original()

    monkeypatch.setattr(esper_kasmina.evaluation, "flop_counter", counter)
    monkeypatch.setattr(esper_core.flops, "flop_counter", counter)  # plain passes count through count_flops
    batches = [(rig.inputs[:16], rig.targets[:16]), (rig.inputs[16:], rig.targets[16:])]
    rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct)
    assert len(counters) == 1, "counted on the first batch only"
    measured = rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct)
    assert len(counters) == 1, "a configuration seen before is not counted again"
    rig.command(SeedOperation.SEED_OP_CULL, "features.2")
    after = rig.kasmina.evaluate(batches, nn.functional.cross_entropy, correct)
    assert len(counters) == 2, "a cull changes the configuration: counted anew"
    assert after.flops < measured.flops


def test_a_costly_measurement_runs_on_every_kth_batch_and_validation_on_all(rig_factory: Callable[..., Rig]) -> None:
    rig = prepared(rig_factory)
    batches = [(rig.inputs[start : start + 8], rig.targets[start : start + 8]) for start in range(0, 32, 8)]
    full = evaluate(rig.model, rig.kasmina.slots, batches, nn.functional.cross_entropy, correct)
    passes = full.measurement_flops / full.validation_flops  # what the variants add, in plain validation passes
    capped = evaluate(
        rig.model, rig.kasmina.slots, batches, nn.functional.cross_entropy, correct, max_measurement_passes=passes / 2
    )
    assert (full.measured_samples, capped.measured_samples) == (32, 16)  # batches 0 and 2
    assert capped.measurement_flops == pytest.approx(full.measurement_flops / 2, rel=1e-9)
    assert capped.validation_flops == full.validation_flops
    assert (capped.loss, capped.accuracy) == pytest.approx((full.loss, full.accuracy), rel=1e-12)  # every batch
    # Each contribution pairs its off and on variants on the batches that ran them.
    differences = [
        naive_on(rig, "head.2", 0.0, inputs, targets) - naive_on(rig, "head.2", 1.0, inputs, targets)
        for inputs, targets in batches[::2]
    ]
    assert capped.seeds["head.2"].contribution == pytest.approx(sum(differences) / 2, abs=1e-5)
    # The subset's levels are moved to the whole set's, so G2 compares like with like across thinned passes.
    subset = evaluate(rig.model, rig.kasmina.slots, batches[::2], nn.functional.cross_entropy, correct)
    shift = full.loss - subset.loss
    for slot_id, seed in capped.seeds.items():
        assert seed.loss_off == pytest.approx(subset.seeds[slot_id].loss_off + shift, rel=1e-9)
        assert seed.loss_on == pytest.approx(subset.seeds[slot_id].loss_on + shift, rel=1e-9)
    _, everything = count_flops(
        lambda: evaluate(
            rig.model,
            rig.kasmina.slots,
            batches,
            nn.functional.cross_entropy,
            correct,
            max_measurement_passes=passes / 2,
        )
    )
    assert capped.flops == everything


class _Capturing:
    """A shard that hands back only its own part: to collect what each rank would send."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.part: object = None

    def gather(self, value: object, what: str) -> list[object]:
        self.part = value
        return [value]


class _Gathered:
    """A shard whose gather returns every rank's part, as torch.distributed's all_gather_object would."""

    def __init__(self, rank: int, parts: list[object]) -> None:
        self.rank, self.world, self.parts = rank, len(parts), parts

    def gather(self, value: object, what: str) -> list[object]:
        assert value == self.parts[self.rank]
        return list(self.parts)


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("cap", [0.0, 1.0])
def test_a_sharded_pass_gives_every_rank_what_one_process_computes(
    rig_factory: Callable[..., Rig], world: int, cap: float
) -> None:
    """Each rank evaluates the batches numbered rank modulo world; gathered, every rank's evaluation is the one a
    single process computes over every batch, bit for bit (5 ranks for 4 batches: one rank has none). With a cap
    on the measurement passes the variants run on every k-th batch of the whole set, whichever rank holds it."""
    rig = prepared(rig_factory)
    batches = [(rig.inputs[start : start + 8], rig.targets[start : start + 8]) for start in range(0, 32, 8)]
    loss = nn.functional.cross_entropy

    def run(shard: object = None) -> esper_kasmina.evaluation.Evaluation:
        return evaluate(rig.model, rig.kasmina.slots, batches, loss, correct, {}, cap, shard)  # type: ignore[arg-type]

    whole = run()
    if cap:
        assert whole.measured_samples < whole.samples  # the cap thinned the variants out
    parts = []
    for rank in range(world):
        capturing = _Capturing(rank, world)
        with contextlib.suppress(ValueError, RuntimeError):  # alone, a rank may have no (measured) batch
            run(capturing)
        parts.append(capturing.part)
    for rank in range(world):
        sharded = run(_Gathered(rank, parts))
        assert attrs.evolve(sharded, seconds=0.0) == attrs.evolve(whole, seconds=0.0)
