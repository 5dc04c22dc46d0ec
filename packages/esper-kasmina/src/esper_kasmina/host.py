"""Putting seed slots into an existing host model at named module paths.

One probe forward (in eval mode, so the host's state is untouched) records the shape of each named module's output,
the order in which the modules run, and whether the output depends on a trainable parameter (a slot on one that does
not, such as a flatten of the input, would have no host gradient to measure).

The slots live in a :class:`SlotBank` kept *beside* the host's module tree, not inside it: an ``nn.Sequential``
runs every child it has, so a bank inside it would become a layer. The host's ``state_dict`` nevertheless carries
the slots, under ``esper_slots.``: a state-dict hook adds them when saving and a load pre-hook takes them out and
loads them into the bank (rebuilding seed modules first) when loading. The host's own parameter names, its
``parameters()`` and its checkpoints are therefore unchanged, and a plain checkpoint still loads into it.

A slot point is a module path (a residual slot: the seed reads and rewrites that module's output), or
``"READ->WRITE"`` for a width slot: the seed reads ``READ`` and adds to ``WRITE``'s output, where ``READ`` is
``"path"`` (a module's output) or ``"path:input"`` (its input), and runs before ``WRITE`` in the forward pass. For
example ``"blocks.0:input->blocks.1.0"`` grows new channels in ``blocks.0`` that feed ``blocks.1``'s convolution:
they read what enters ``blocks.0`` and write into the convolution's output, before its activation.

Attach slots after moving the host to its device; seeds are built on the device of the host's parameters.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from esper_core.errors import EsperError
from esper_core.leyline import SlotKind
from esper_core.leyline.growth import SlotPoint
from esper_kasmina.slot import ReadPoint, SeedBuilder, SeedSlot

#: Key prefix of the slots in the host's state_dict.
STATE_PREFIX = "esper_slots."
_BANK_ATTRIBUTE = "_esper_slot_bank"

_KINDS = {4: SlotKind.SLOT_KIND_CONV2D, 2: SlotKind.SLOT_KIND_VECTOR, 3: SlotKind.SLOT_KIND_SEQUENCE}


class SlotError(EsperError, ValueError):
    """A slot point cannot hold a seed slot (a user's mistake in the task's slot points: ``esper`` reports it in one
    line)."""


def _bank_key(slot_id: str) -> str:
    return slot_id.replace(".", "__")


class SlotBank(nn.Module):
    """The seed slots of one host, in the order the host runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = nn.ModuleDict()

    def add(self, slot: SeedSlot) -> None:
        self.slots[_bank_key(slot.slot_id)] = slot

    def ordered(self) -> list[SeedSlot]:
        found = [slot for slot in self.slots.values() if isinstance(slot, SeedSlot)]
        return sorted(found, key=lambda slot: slot.layer_depth)

    def get(self, slot_id: str) -> SeedSlot | None:
        slot = self.slots[_bank_key(slot_id)] if _bank_key(slot_id) in self.slots else None  # noqa: SIM401
        return slot if isinstance(slot, SeedSlot) else None


def slot_bank(model: nn.Module) -> SlotBank | None:
    bank = model.__dict__.get(_BANK_ATTRIBUTE)
    return bank if isinstance(bank, SlotBank) else None


def _save_slots(module: nn.Module, state_dict: dict[str, Any], prefix: str, _local_metadata: Any) -> None:
    bank = slot_bank(module)
    if bank is not None:
        for key, value in bank.state_dict().items():
            state_dict[prefix + STATE_PREFIX + key] = value


def _load_slots(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    _local_metadata: Any,
    _strict: bool,
    _missing: list[str],
    _unexpected: list[str],
    errors: list[str],
) -> None:
    bank = slot_bank(module)
    marker = prefix + STATE_PREFIX
    entries = {key[len(marker) :]: state_dict.pop(key) for key in list(state_dict) if key.startswith(marker)}
    if bank is None or not entries:
        if entries:
            errors.append("the state dict holds seed slots but this host has none; attach slots before loading")
        return
    try:
        bank.load_state_dict(entries, strict=True)
    except RuntimeError as error:
        errors.append(f"seed slots: {error}")


def _resolve(model: nn.Module, point: str) -> nn.Module:
    try:
        module = model.get_submodule(point)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(point, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
        raise SlotError(
            f"slot point {point!r} is not a module of the host.{hint} Its module paths: {shown or '(none)'}"
        ) from None
    if module is model:
        raise SlotError("a slot point must name a submodule of the host, not the host itself")
    return module


def _call(model: nn.Module, example: Any) -> None:
    if isinstance(example, (tuple, list)):
        model(*example)
    else:
        model(example)


def attach_slots(model: nn.Module, points: Sequence[str], example_input: Any, builder: SeedBuilder) -> SlotBank:
    """Add a DORMANT seed slot at each module path in ``points``; return the model's slot bank."""
    if slot_bank(model) is not None:
        raise SlotError("the host already has seed slots; attach them once")
    if not points:
        raise SlotError("give at least one slot point (a module path such as 'features.3')")
    if len(set(points)) != len(points):
        raise SlotError(f"slot points repeat: {list(points)}")
    parsed: dict[str, tuple[tuple[str, str] | None, str]] = {}
    for text in points:
        try:
            point = SlotPoint.parse(text)
        except ValueError as error:
            raise SlotError(str(error)) from None
        parsed[point.slot_id()] = ((point.read, point.read_side) if point.read is not None else None, point.write)
    if len(parsed) != len(points):
        raise SlotError(f"slot points repeat: {list(points)}")
    targets = {slot_id: _resolve(model, write) for slot_id, (_read, write) in parsed.items()}
    sources = {slot_id: _resolve(model, read[0]) for slot_id, (read, _write) in parsed.items() if read is not None}
    seen: dict[str, list[Any]] = {slot_id: [] for slot_id in parsed}
    read_seen: dict[str, list[tuple[int, Any]]] = {slot_id: [] for slot_id in sources}
    order: list[str] = []
    ticks = [0]  # every recorded event, in the order the forward pass runs them

    def recorder(slot_id: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            ticks[0] += 1
            seen[slot_id].append((ticks[0], output))
            if slot_id not in order:
                order.append(slot_id)

        return record

    def read_recorder(slot_id: str, side: str) -> Any:
        if side == "input":

            def record_input(_module: nn.Module, inputs: Any) -> None:
                ticks[0] += 1
                read_seen[slot_id].append((ticks[0], inputs[0] if inputs else None))

            return record_input

        def record_output(_module: nn.Module, _inputs: Any, output: Any) -> None:
            ticks[0] += 1
            read_seen[slot_id].append((ticks[0], output))

        return record_output

    handles = [module.register_forward_hook(recorder(slot_id)) for slot_id, module in targets.items()]
    for slot_id, module in sources.items():
        read = parsed[slot_id][0]
        assert read is not None
        if read[1] == "input":
            handles.append(module.register_forward_pre_hook(read_recorder(slot_id, "input")))
        else:
            handles.append(module.register_forward_hook(read_recorder(slot_id, "output")))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.enable_grad():  # to see which outputs depend on a trainable parameter (eval: no state moves)
            _call(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)

    bank = SlotBank()
    for slot_id, (read, write) in parsed.items():
        outputs = seen[slot_id]
        if not outputs:
            raise SlotError(f"slot point {write!r} did not run in the host's forward pass")
        if len(outputs) > 1:
            raise SlotError(
                f"slot point {write!r} runs {len(outputs)} times per forward; a slot needs a module used once"
            )
        written_at, output = outputs[0]
        kind, shape = _activation(write, output, "outputs")
        if not output.requires_grad:
            raise SlotError(
                f"slot point {write!r} comes before every trainable parameter of the host (its output does not "
                "depend on one), so the host's gradient there, which Kasmina measures at each decision point, does "
                "not exist; choose a module after the first trainable layer"
            )
        read_point = None
        if read is not None:
            path, side = read
            reads = read_seen[slot_id]
            where = f"the {side} of {path!r}"
            if not reads:
                raise SlotError(f"width slot {slot_id!r}: {where} did not run in the host's forward pass")
            if len(reads) > 1:
                raise SlotError(
                    f"width slot {slot_id!r}: {path!r} runs {len(reads)} times per forward; a width slot reads a "
                    "module used once"
                )
            read_at, value = reads[0]
            if _resolve(model, path) is targets[slot_id] and side == "output":
                raise SlotError(
                    f"width slot {slot_id!r} reads the output it writes; that is a residual slot: write it as {write!r}"
                )
            if read_at > written_at:
                raise SlotError(
                    f"width slot {slot_id!r}: {where} runs after {write!r}; a width slot reads an earlier point "
                    "than the one it writes (READ->WRITE in forward order)"
                )
            read_kind, read_shape = _activation(f"{path}:{side}", value, "carries")
            read_point = ReadPoint(path, side, read_kind, read_shape)
        bank.add(SeedSlot(slot_id, kind, shape, order.index(slot_id), read_point))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    bank.to(device)
    object.__setattr__(model, _BANK_ATTRIBUTE, bank)
    model.register_state_dict_post_hook(_save_slots)  # type: ignore[no-untyped-call]
    model.register_load_state_dict_pre_hook(_load_slots)  # type: ignore[no-untyped-call]
    for slot in bank.ordered():
        slot.bind(targets[slot.slot_id], builder, sources.get(slot.slot_id))
    return bank


def _activation(point: str, value: Any, verb: str) -> tuple[SlotKind.ValueType, tuple[int, ...]]:
    """The kind and shape (batch dimension dropped) of the activation at a point, or a clear refusal."""
    if not isinstance(value, torch.Tensor):
        raise SlotError(
            f"slot point {point!r} {verb} a {type(value).__name__}, not a tensor; choose a module whose output is "
            "the activation to grow on"
        )
    if value.dim() not in _KINDS:
        raise SlotError(
            f"slot point {point!r} {verb} shape {tuple(value.shape)}; slots take (N, C, H, W), (N, D) or (N, L, D)"
        )
    return _KINDS[value.dim()], tuple(value.shape[1:])


def host_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The host's own trainable parameters (the seeds are not in the host's module tree)."""
    return [p for p in model.parameters() if p.requires_grad]
