"""Deterministic, fully populated Leyline messages, for the ``esper leyline check`` self-check and benchmarks.

Every scalar gets a non-default value, repeated fields two items, maps one entry, and a oneof its first member, so a
round trip exercises every field of a message's schema.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: 1.5,
    FieldDescriptor.TYPE_FLOAT: 0.25,
    FieldDescriptor.TYPE_INT64: -7,
    FieldDescriptor.TYPE_UINT64: 7,
    FieldDescriptor.TYPE_INT32: -3,
    FieldDescriptor.TYPE_UINT32: 3,
    FieldDescriptor.TYPE_SINT32: -5,
    FieldDescriptor.TYPE_SINT64: -5,
    FieldDescriptor.TYPE_FIXED32: 9,
    FieldDescriptor.TYPE_FIXED64: 9,
    FieldDescriptor.TYPE_SFIXED32: -9,
    FieldDescriptor.TYPE_SFIXED64: -9,
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_STRING: "sample",
    FieldDescriptor.TYPE_BYTES: b"\x00sample\xff",
}


def _scalar(field: Any, index: int) -> object:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        values = [value.number for value in field.enum_type.values if value.number != 0]
        return values[index % len(values)] if values else 0
    value = _SCALARS[field.type]
    if isinstance(value, str):
        return f"{value}-{field.name}-{index}"
    return value


def _fill(message: Message, depth: int) -> None:
    descriptor = message.DESCRIPTOR
    filled_oneofs: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in filled_oneofs:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            key = _scalar(key_field, 0)
            mapping = getattr(message, field.name)
            if value_field.message_type is not None:
                if depth > 0:
                    _fill(mapping[key], depth - 1)
            else:
                mapping[key] = _scalar(value_field, 0)
        elif field.message_type is not None:
            if depth <= 0:
                continue
            if field.is_repeated:
                for _ in range(2):
                    _fill(getattr(message, field.name).add(), depth - 1)
            elif field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(message, field.name).FromSeconds(1_760_000_000)
            else:
                _fill(getattr(message, field.name), depth - 1)
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field, 0), _scalar(field, 1)])
        else:
            setattr(message, field.name, _scalar(field, 0))
        if oneof is not None and not oneof.name.startswith("_"):
            filled_oneofs.add(oneof.name)


def populated(cls: type[M], depth: int = 3) -> M:
    """An instance of ``cls`` with every field set, nested messages to ``depth`` levels."""
    message = cls()
    _fill(message, depth)
    return message
