"""Describing configuration sections for people: every key with its type, default and documentation.

The documentation of a key is the ``#:`` comment block just above its field in the section's class, the convention
Esper's (and plugins') options classes follow. ``esper run --help`` and ``esper config --describe`` print it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Iterable
from typing import Any

import attrs

from esper_core.config.convert import section_path, section_to_dict

_FIELD = re.compile(r"^\s+(\w+)\s*:")


@attrs.frozen
class KeyDescription:
    key: str
    type: str
    default: str
    doc: str


def _comments(cls: type) -> dict[str, str]:
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(line)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        if stripped and not stripped.startswith("#"):
            pending = []
    return docs


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def describe(classes: Iterable[type]) -> list[KeyDescription]:
    """One entry per key of every section, sorted by section path."""
    entries = []
    for cls in sorted(classes, key=lambda c: (section_path(c), c.__qualname__)):
        path = section_path(cls)
        hints = typing.get_type_hints(cls)
        docs = _comments(cls)
        try:
            defaults = section_to_dict(cls())
        except (TypeError, ValueError):
            defaults = {}
        for field in attrs.fields(cls):
            default = defaults.get(field.name, "(required)" if field.default is attrs.NOTHING else "(none)")
            entries.append(
                KeyDescription(
                    f"{path}.{field.name}", _type_text(hints[field.name]), repr(default), docs.get(field.name, "")
                )
            )
    return entries


def format_descriptions(entries: Iterable[KeyDescription]) -> str:
    lines = []
    for entry in entries:
        lines.append(f"  {entry.key} = {entry.default}  ({entry.type})")
        if entry.doc:
            lines.append(f"      {entry.doc}")
    return "\n".join(lines)
