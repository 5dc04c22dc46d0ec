"""The crucible: measure one blueprint of any catalog at one slot, and judge it by the measurements alone.

:func:`measure_blueprint` builds the module exactly as a germinated seed gets it (Tezzeret's path: the parameters
resolved against the descriptor, the slot checked, the weights drawn from the seed Tezzeret derives from the
artifact key) and runs the probes of :mod:`esper_urza.urabrask.probes` on CPU, in this order:

1. ``start``: shape, dtype, finiteness and size of the first output, input untouched;
2. ``parameter_count``: the module against the catalog's estimate;
3. ``timing``: forward/backward p50/p95, interleaved with a plain layer at the slot (the slowdown ratio);
4. ``cost``: counted FLOPs and a training step's memory (the slowdown is judged against the FLOPs);
5. ``gradients``: SGD at a high learning rate;
6. ``inputs``: extreme and non-finite inputs;
7. ``determinism``: two builds, two passes;
8. ``learning``: gradient descent towards a target of its own architecture.

Safety probes come before the learning probe, the longest, so that the time budget, if anything, cuts that. After
timing, a probe whose cost (its number of passes times the measured pass time) would overrun
``options.time_budget_s`` is skipped and listed; a probe that raises is recorded and is itself a critical hazard.
The result's hazards, risk score, band, handling class and resource profile follow from
:mod:`esper_urza.urabrask.hazards`.

Everything runs with the global random generator forked (the caller's stream is left as it was), gradients enabled
whatever the caller's mode, and ``options.threads`` intra-op threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from esper_core.leyline import BlueprintDescriptor, SlotKind, growth
from esper_core.protocols import BlueprintCatalog, SlotShape
from esper_urza.parameters import artifact_key, check_slot, resolve_parameters
from esper_urza.urabrask import hazards as rules
from esper_urza.urabrask.options import CrucibleOptions
from esper_urza.urabrask.results import CrucibleResult, Hazard

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")

#: The written shape of a standard slot of each kind: the ``esper blueprints`` defaults (conv2d 16x14x14,
#: vector 128, sequence 16x64).
STANDARD_SHAPES: dict[SlotKind.ValueType, tuple[int, ...]] = {
    SlotKind.SLOT_KIND_CONV2D: (16, 14, 14),
    SlotKind.SLOT_KIND_VECTOR: (128,),
    SlotKind.SLOT_KIND_SEQUENCE: (16, 64),
}
#: The read shape of a standard width slot of each read kind: an earlier, larger map (conv2d), a wider vector, or a
#: narrower sequence of the written one's length.
STANDARD_READ_SHAPES: dict[SlotKind.ValueType, tuple[int, ...]] = {
    SlotKind.SLOT_KIND_CONV2D: (8, 28, 28),
    SlotKind.SLOT_KIND_VECTOR: (256,),
    SlotKind.SLOT_KIND_SEQUENCE: (16, 32),
}
_ALL_KINDS = tuple(STANDARD_SHAPES)

#: Forward+backward passes each probe runs, to estimate its cost from the measured pass time (the count of the
#: ``inputs`` probe depends on the number of extreme scales; FLOP counting costs about two passes more).
_PASSES: dict[str, Callable[[CrucibleOptions], int]] = {
    "gradients": lambda o: o.stress_steps,
    "inputs": lambda o: 2 * len(o.extreme_scales) + 3,
    "determinism": lambda o: 3,
    "cost": lambda o: 3,
    "learning": lambda o: 3 * o.learn_steps + 2,
}


#: The probes that draw random numbers, each from its own generator (the batch every probe reads is one of them).
_STREAMS = ("batch", "timing", "gradients", "inputs", "learning")


def standard_slots(descriptor: BlueprintDescriptor) -> list[SlotShape]:
    """The standard slots ``descriptor`` grows in: one per kind it writes (residual), or per pair of kinds it reads
    and writes (width; a sequence read by a sequence write shares its length)."""
    writes = list(descriptor.slot_kinds) or list(_ALL_KINDS)
    if growth.mode_of(descriptor) != growth.WIDTH:
        return [SlotShape(kind, STANDARD_SHAPES[kind]) for kind in writes if kind in STANDARD_SHAPES]
    reads = list(descriptor.read_kinds) or list(_ALL_KINDS)
    slots: list[SlotShape] = []
    for read_kind in reads:
        for kind in writes:
            if read_kind not in STANDARD_READ_SHAPES or kind not in STANDARD_SHAPES:
                continue
            read_shape = STANDARD_READ_SHAPES[read_kind]
            if read_kind == kind == SlotKind.SLOT_KIND_SEQUENCE:
                read_shape = (STANDARD_SHAPES[kind][0], *read_shape[1:])
            slots.append(SlotShape(kind, STANDARD_SHAPES[kind], read_kind=read_kind, read_shape=read_shape))
    return slots


def find_descriptor(catalog: BlueprintCatalog, blueprint_id: str) -> BlueprintDescriptor:
    for descriptor in catalog.descriptors():
        if descriptor.blueprint_id == blueprint_id:
            return descriptor
    raise KeyError(f"catalog {catalog.name!r} has no blueprint {blueprint_id!r}")


@contextmanager
def _quiet_torch(options: CrucibleOptions) -> Iterator[None]:
    """The global generator forked and seeded, gradients on, ``options.threads`` threads; all restored after."""
    import torch

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(options.seed)
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def measure_blueprint(
    catalog: BlueprintCatalog,
    blueprint_id: str,
    slot: SlotShape,
    options: CrucibleOptions | None = None,
    *,
    parameters: Mapping[str, float] | None = None,
) -> CrucibleResult:
    """Measure ``blueprint_id`` of ``catalog`` at ``slot`` (with ``parameters``, defaults for the rest) and judge it.

    Raises ``KeyError`` for an unknown blueprint and ``ValueError`` for parameters outside the declared bounds or a
    slot the blueprint does not grow in: those are mistakes in the request. Anything the blueprint itself does
    wrong, including raising while it is built or run, is a finding in the result, never an exception.
    """
    options = options or CrucibleOptions()
    descriptor = find_descriptor(catalog, blueprint_id)
    resolved = resolve_parameters(descriptor, parameters or {})
    check_slot(descriptor, slot)
    with _quiet_torch(options):
        fields = _measure(catalog, descriptor, slot, resolved, options)
    elapsed = fields.pop("elapsed_s")
    found = _distinct(fields.pop("hazards"))
    margin_scores = rules.margins(
        fields.get("timing"), fields.get("gradients"), fields.get("learning"), fields.get("cost"), options
    )
    score, band, handling = rules.verdict(found, margin_scores)
    import torch

    return CrucibleResult(
        catalog=catalog.name,
        blueprint_id=blueprint_id,
        name=descriptor.name,
        declared_tier=descriptor.tier,
        declared_risk=float(descriptor.risk),
        parameters=resolved,
        slot=slot,
        options=options,
        hazards=tuple(found),
        risk_score=score,
        hazard_band=band,
        handling_class=handling,
        resource_profile=rules.resource_profile(fields.get("cost"), options),
        elapsed_s=elapsed,
        torch_version=str(torch.__version__),
        **fields,
    )


def _distinct(hazards: list[Hazard]) -> list[Hazard]:
    """One hazard per class (two probes can find the same one: the worse band, then the first, is kept)."""
    kept: dict[str, Hazard] = {}
    for hazard in hazards:
        if hazard.name not in kept or hazard.band > kept[hazard.name].band:
            kept[hazard.name] = hazard
    return list(kept.values())


def _measure(
    catalog: BlueprintCatalog,
    descriptor: BlueprintDescriptor,
    slot: SlotShape,
    resolved: dict[str, float],
    options: CrucibleOptions,
) -> dict[str, Any]:
    """Run the probes in order; returns the result's measurement fields, ``skipped``, ``errors`` and ``hazards``."""
    import torch

    from esper_urza.tezzeret import isolated_rng, seed_for
    from esper_urza.urabrask import probes

    blueprint_id = descriptor.blueprint_id
    seed = seed_for(artifact_key(catalog.name, blueprint_id, resolved, slot))

    def build() -> nn.Module:
        with isolated_rng(seed):
            module = catalog.build(blueprint_id, slot, dict(resolved))
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"build returned {type(module).__name__}, not a torch.nn.Module")
        return module.cpu()  # measured on the CPU, whatever device a catalog builds on

    fields: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    found: list[Hazard] = []
    fields.update(skipped=skipped, errors=errors, hazards=found)
    later = ("cost", "gradients", "inputs", "determinism", "learning")

    def attempt(name: str, probe: Callable[[], T]) -> T | None:
        try:
            return probe()
        except Exception as error:  # noqa: BLE001 - a blueprint that raises is a finding, not a crash
            errors[name] = f"{type(error).__name__}: {error}"[:300]
            return None

    def skip_all(names: tuple[str, ...], reason: str) -> None:
        for name in names:
            skipped.setdefault(name, reason)

    probes.warm_up()
    clock = time.perf_counter()  # the budget's clock: imports and the caller's work before are not the blueprint's
    module = attempt("build", build)
    if module is None:
        skip_all(("start", "parameter_count", "timing", *later), "the build raised")
        found.extend(rules.failure_hazards(errors, skipped, over_budget=()))
        fields["elapsed_s"] = time.perf_counter() - clock
        return fields

    def stream(probe: str) -> torch.Generator:
        """Each probe's own random stream, so that skipping one never changes what another draws."""
        return torch.Generator().manual_seed(options.seed * len(_STREAMS) + _STREAMS.index(probe))

    x = torch.randn(options.batch, *slot.input.shape, generator=stream("batch"))

    first_pass = time.perf_counter()
    start = attempt("start", lambda: probes.check_start(module, x.clone(), slot))
    pass_s = time.perf_counter() - first_pass
    fields["parameter_count"] = count = probes.count_parameters(catalog, blueprint_id, slot, resolved, module)
    found.extend(rules.parameter_hazards(count, options))
    if start is None or not (start.shape_ok and start.dtype_ok):
        fields["start"] = start
        if start is not None:
            found.extend(rules.start_hazards(start, width=slot.is_width, options=options))
        skip_all(("timing", *later), "the first forward pass raised" if start is None else "the output is malformed")
        found.extend(rules.failure_hazards(errors, skipped, over_budget=()))
        fields["elapsed_s"] = time.perf_counter() - clock
        return fields
    fields["start"] = start
    found.extend(rules.start_hazards(start, width=slot.is_width, options=options))

    reference = probes.reference_layer(slot)
    # Each probe reads its own copy of the batch: a module that writes into its input must not change another's.
    timing = attempt("timing", lambda: probes.time_steps(module, reference, x.clone(), stream("timing"), options))
    fields["timing"] = timing
    if timing is not None:
        pass_s = timing.step_p50_ms / 1000.0

    probe_runs: dict[str, Callable[[], Any]] = {
        "gradients": lambda: probes.stress_gradients(build, x.clone(), stream("gradients"), options),
        "inputs": lambda: probes.probe_inputs(build, x.clone(), stream("inputs"), options),
        "determinism": lambda: probes.check_determinism(build, x.clone()),
        "cost": lambda: probes.measure_cost(module, reference, x.clone()),
        "learning": lambda: probes.learn(build, x.clone(), stream("learning"), options),
    }
    for name in later:
        elapsed = time.perf_counter() - clock
        estimate = _PASSES[name](options) * pass_s
        if elapsed + estimate > options.time_budget_s:
            skipped[name] = (
                f"about {estimate:.2g} s more at {pass_s * 1000:.3g} ms a pass would overrun the "
                f"{options.time_budget_s:g} s budget"
            )
            continue
        fields[name] = attempt(name, probe_runs[name])

    if timing is not None:
        found.extend(rules.timing_hazards(timing, fields.get("cost"), options))
    if fields.get("gradients") is not None:
        found.extend(rules.gradient_hazards(fields["gradients"], options))
    if fields.get("inputs") is not None:
        found.extend(rules.input_hazards(fields["inputs"]))
    if fields.get("determinism") is not None:
        found.extend(rules.determinism_hazards(fields["determinism"]))
    if fields.get("learning") is not None:
        found.extend(rules.learning_hazards(fields["learning"], options))
    found.extend(rules.failure_hazards(errors, skipped, over_budget=later))
    fields["elapsed_s"] = time.perf_counter() - clock
    return fields
