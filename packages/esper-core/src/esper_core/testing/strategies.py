"""Hypothesis strategies for Leyline messages.

:func:`messages` builds *any* valid instance of a message type by walking its protobuf descriptor: every field
type, nested messages to a bounded depth, repeated fields, maps, oneofs (at most one member set) and proto3
optional presence. Floats are finite (a NaN would make a message unequal to itself) and timestamps lie in the range
protobuf accepts.

:func:`state_packets` builds *semantically* valid ``SystemStatePacket``s, the kind Tolaria produces: unique slot ids,
slot shapes that match their kind, seed fields consistent with each slot's stage. Policy conformance tests use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from esper_core.leyline import (
    BlendSchedule,
    OptimizerFamily,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    all_message_types,
    lifecycle,
)

M = TypeVar("M", bound=Message)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.integers(low, high)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=24)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([value.number for value in field.enum_type.values])
    raise TypeError(f"no strategy for field {field.full_name} of type {kind}")


@cache
def _class_of(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _timestamps(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda seconds, nanos: cls(seconds=seconds, nanos=nanos),
        st.integers(0, _MAX_TIMESTAMP_SECONDS),
        st.integers(0, 999_999_999),
    )


def _message_strategy(descriptor: Descriptor, depth: int, max_items: int) -> st.SearchStrategy[Message]:
    cls = _class_of(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamps(cls)
    if descriptor.full_name == "google.protobuf.Duration":
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n), st.integers(0, 315_576_000_000), st.integers(0, 999_999_999)
        )

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        real_oneofs = [oneof for oneof in descriptor.oneofs if not oneof.name.startswith("_")]
        chosen = {oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in real_oneofs}
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if chosen[oneof.name] is not field:
                    continue
            elif oneof is not None and not draw(st.booleans()):
                continue  # proto3 optional: absent
            _draw_field(draw, message, field, depth, max_items)
        return message

    return build()


def _draw_field(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int, max_items: int) -> None:
    nested = field.message_type
    if nested is not None and nested.GetOptions().map_entry:
        key_field, value_field = nested.fields_by_name["key"], nested.fields_by_name["value"]
        mapping = getattr(message, field.name)
        if value_field.message_type is not None:
            if depth <= 0:
                return
            values = st.dictionaries(
                _scalar(key_field),
                _message_strategy(value_field.message_type, depth - 1, max_items),
                max_size=max_items,
            )
            for key, value in draw(values).items():
                mapping[key].CopyFrom(value)
        else:
            mapping.update(draw(st.dictionaries(_scalar(key_field), _scalar(value_field), max_size=max_items)))
        return
    if nested is not None:
        if depth <= 0 and nested.full_name != "google.protobuf.Timestamp":
            return
        strategy = _message_strategy(nested, depth - 1, max_items)
        if field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(strategy, max_size=max_items)))
        else:
            getattr(message, field.name).CopyFrom(draw(strategy))
        return
    if field.is_repeated:
        getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=max_items)))
    else:
        setattr(message, field.name, draw(_scalar(field)))


def messages(cls: type[M], *, max_depth: int = 3, max_items: int = 3) -> st.SearchStrategy[M]:
    """Any valid instance of the Leyline message class ``cls``."""
    descriptor: Any = cls.DESCRIPTOR
    return _message_strategy(descriptor, max_depth, max_items)  # type: ignore[return-value]


def any_message(*, max_depth: int = 3) -> st.SearchStrategy[Message]:
    """An instance of any Leyline message type."""
    return st.sampled_from(all_message_types()).flatmap(lambda cls: messages(cls, max_depth=max_depth))


# -- semantically valid state packets ----------------------------------------------------------------------------

_OCCUPIED = sorted(lifecycle.HAS_SEED)
_EMPTY = [lifecycle.DORMANT, lifecycle.EMBARGOED, lifecycle.RESETTING]


def slot_shapes() -> st.SearchStrategy[tuple[SlotKind.ValueType, tuple[int, ...]]]:
    """``(SlotKind, shape without batch)`` pairs of the three slot kinds."""
    return st.one_of(
        st.tuples(
            st.just(SlotKind.SLOT_KIND_CONV2D), st.tuples(st.integers(1, 64), st.integers(1, 32), st.integers(1, 32))
        ),
        st.tuples(st.just(SlotKind.SLOT_KIND_VECTOR), st.tuples(st.integers(1, 512))),
        st.tuples(st.just(SlotKind.SLOT_KIND_SEQUENCE), st.tuples(st.integers(1, 64), st.integers(1, 128))),
    )


_finite = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)


@st.composite
def seed_states(draw: st.DrawFn, slot_id: str, blueprint_ids: Sequence[str] = ("BP001",)) -> SeedState:
    kind, shape = draw(slot_shapes())
    stage = draw(st.sampled_from([*_EMPTY, *_OCCUPIED]))
    state = SeedState(slot_id=slot_id, stage=stage, slot_kind=kind, slot_shape=list(shape))
    state.layer_depth = draw(st.integers(0, 16))
    state.activation_rms = draw(_finite)
    state.host_gradient_norm = draw(_finite)
    if stage == lifecycle.EMBARGOED:
        state.embargo_epochs_remaining = draw(st.integers(1, 5))
    if stage in _OCCUPIED:
        state.seed_id = f"{slot_id}-seed"
        state.blueprint_id = draw(st.sampled_from(list(blueprint_ids)))
        state.age_epochs = draw(st.integers(0, 30))
        state.stage_epochs = draw(st.integers(0, state.age_epochs))
        state.parameter_count = draw(st.integers(1, 100_000))
        state.blend_schedule = draw(st.sampled_from([v for v in BlendSchedule.values() if v]))
        state.alpha_total_steps = draw(st.integers(1, 50))
        if stage == lifecycle.BLENDING:
            state.alpha_steps = draw(st.integers(0, state.alpha_total_steps))
            state.alpha = state.alpha_steps / state.alpha_total_steps
        elif stage in (
            lifecycle.SHADOWING,
            lifecycle.PROBATIONARY,
            lifecycle.FOSSILIZED,
        ):
            state.alpha = 1.0
        state.gradient_norm = draw(_finite)
        if stage != lifecycle.GERMINATED and draw(st.booleans()):
            state.contribution = draw(st.floats(min_value=-1.0, max_value=1.0))
        if draw(st.booleans()):
            state.seed_loss_delta = draw(st.floats(min_value=-1.0, max_value=1.0))
    return state


@st.composite
def training_metrics(draw: st.DrawFn, epoch: int) -> TrainingMetrics:
    metrics = TrainingMetrics(epoch=epoch, global_step=epoch * draw(st.integers(1, 500)))
    metrics.epochs_total = draw(st.integers(max(epoch, 1), max(epoch, 1) + 50))
    metrics.train_loss = draw(_finite)
    metrics.val_loss = draw(_finite)
    metrics.val_accuracy = draw(st.floats(0.0, 1.0))
    metrics.train_accuracy = draw(st.floats(0.0, 1.0))
    if epoch > 0:
        metrics.loss_delta = draw(st.floats(-2.0, 2.0))
        metrics.best_val_loss = min(metrics.val_loss, draw(_finite))
    metrics.learning_rate = draw(st.floats(1e-5, 1.0))
    metrics.optimizer_family = draw(st.sampled_from([v for v in OptimizerFamily.values() if v]))
    metrics.gradient_norm = draw(_finite)
    metrics.parameter_count = draw(st.integers(1, 10_000_000))
    return metrics


@st.composite
def state_packets(
    draw: st.DrawFn,
    *,
    min_slots: int = 1,
    max_slots: int = 8,
    blueprint_ids: Sequence[str] = ("BP001",),
) -> SystemStatePacket:
    """A ``SystemStatePacket`` as Tolaria builds it, with 1-8 slots in random, consistent stages."""
    epoch = draw(st.integers(0, 100))
    count = draw(st.integers(min_slots, max_slots))
    seeds = [draw(seed_states(f"layer{index}.slot", blueprint_ids)) for index in range(count)]
    packet = SystemStatePacket(
        version=1,
        packet_id=f"run-epoch-{epoch}",
        training_run_id="run",
        source_subsystem="tolaria",
        current_epoch=epoch,
        metrics=draw(training_metrics(epoch)),
        seeds=seeds,
    )
    packet.global_step = packet.metrics.global_step
    packet.timestamp.GetCurrentTime()
    return packet
