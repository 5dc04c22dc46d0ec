"""Turning raw TOML values into typed attrs sections, with errors that name the key and its source."""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import ConfigError

_SECTION_ATTRIBUTE = "__esper_section__"


def section(path: str) -> typing.Callable[[type], type]:
    """Mark an attrs class as the configuration section at ``path`` (dotted: ``"tamiyo.heuristic"``).

    Apply it above ``@attrs.frozen``. Every field needs a default, so that a configuration may omit the section.
    """

    def mark(cls: type) -> type:
        if not attrs.has(cls):
            raise TypeError(f"@section({path!r}) must decorate an attrs class; put it above @attrs.frozen")
        setattr(cls, _SECTION_ATTRIBUTE, path)
        return cls

    return mark


def section_path(cls: type) -> str:
    path = getattr(cls, _SECTION_ATTRIBUTE, None)
    if path is None:
        raise TypeError(f"{cls.__qualname__} is not a configuration section; decorate it with @section('path')")
    return str(path)


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """A ``did you mean`` hint, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class RawValue(str):
    """A value typed on a command line or in an environment variable, not yet given a type.

    It is read as TOML (``3``, ``true``, ``["karn"]``) where a number, boolean, list or table is expected, and kept
    as text where a string is expected, so ``ESPER_RUN__NAME=123`` names a run "123" (a quoted TOML string is
    unquoted: ``'"abc"'`` is ``abc``).
    """

    def parsed(self) -> Any:
        try:
            return tomllib.loads(f"value = {self}")["value"]
        except tomllib.TOMLDecodeError:
            return str(self)


def _wants_text(tp: Any) -> bool:
    if tp in (str, Path):
        return True
    if typing.get_origin(tp) is typing.Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_wants_text(arg) for arg in typing.get_args(tp) if arg is not type(None))
    return False


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a table"
    if attrs.has(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def convert_value(tp: Any, value: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the annotated type ``tp``, or raise a :class:`ConfigError` naming ``key``."""

    if isinstance(value, RawValue):
        parsed = value.parsed()
        value = parsed if not _wants_text(tp) or isinstance(parsed, str) else str(value)

    def fail() -> typing.NoReturn:
        raise ConfigError(f"{key} = {value!r} ({source}): expected {_type_name(tp)}, got {type(value).__name__}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return convert_value(option, value, key, source)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        fail()
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(
            f"{key} = {value!r} ({source}): expected {_type_name(tp)}{suggest(str(value), map(str, choices))}"
        )
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        args = typing.get_args(tp)
        item_type = args[0] if args else Any
        items = [convert_value(item_type, item, f"{key}[{index}]", source) for index, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        key_type, value_type = typing.get_args(tp) or (str, Any)
        return {
            convert_value(key_type, k, f"{key}", source): convert_value(value_type, v, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if attrs.has(tp):
        if not isinstance(value, Mapping):
            fail()
        return build_attrs(tp, value, key, lambda _field: source)
    raise ConfigError(f"{key}: the option's type {tp!r} cannot be read from a configuration (a bug in its plugin)")


def build_attrs(cls: type, table: Mapping[str, Any], prefix: str, source_of: typing.Callable[[str], str]) -> Any:
    """Build ``cls`` from ``table``; unknown keys, wrong types and failed validators raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    unknown = [name for name in table if name not in fields]
    if unknown:
        name = unknown[0]
        raise ConfigError(
            f"unknown key {_join(prefix, name)} ({source_of(name)}){suggest(name, fields) or '.'} "
            f"Known keys of [{prefix}]: {', '.join(sorted(fields)) or '(none)'}"
        )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in table:
            if field.default is attrs.NOTHING:
                raise ConfigError(f"missing required key {_join(prefix, name)} ({_type_name(hints[name])})")
            continue
        value, field_type = table[name], hints[name]
        if isinstance(value, RawValue) and attrs.has(field_type):
            value = value.parsed()
        if attrs.has(field_type) and isinstance(value, Mapping):
            kwargs[field.alias or name] = build_attrs(
                field_type, value, _join(prefix, name), _nested_source(source_of, name)
            )
        else:
            kwargs[field.alias or name] = convert_value(field_type, value, _join(prefix, name), source_of(name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise _construction_error(str(error), list(fields), prefix, source_of) from error


def _construction_error(
    text: str, fields: list[str], prefix: str, source_of: typing.Callable[[str], str]
) -> ConfigError:
    """The error for a section whose validators or ``__attrs_post_init__`` refused its values.

    A validator of one key names that key first (``ratio must be ...``); its source follows the message, as for a
    type error. A cross-field check (``max_probation_epochs (2) must be at least probation_epochs (5)``) names
    several keys, and any of them may be the one the user set: the message then lists where each named key came
    from, so a value given in the file, the environment or ``--set`` is never blamed on a default it conflicts with.
    """
    culprit = next((name for name in fields if text.startswith((f"{name} ", f"'{name}' "))), None)
    named = _fields_named_in(text, fields)
    if culprit is not None:
        detail = text.removeprefix(f"'{culprit}'").removeprefix(culprit)
        head = f"{_join(prefix, culprit)}{detail}"
        named = [culprit, *(name for name in named if name != culprit)]
    else:
        head = f"[{prefix}]: {text}"
    if culprit is not None and len(named) == 1:
        return ConfigError(f"{head} ({source_of(culprit)})")
    if not named:
        return ConfigError(head)
    return ConfigError(f"{head} ({'; '.join(f'{_join(prefix, name)}: {source_of(name)}' for name in named)})")


def _fields_named_in(text: str, fields: typing.Iterable[str]) -> list[str]:
    """The fields a message mentions, as whole identifiers (``probation_epochs`` is not in
    ``max_probation_epochs``), in order of first mention."""
    known = set(fields)
    return list(dict.fromkeys(word for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text) if word in known))


def _nested_source(source_of: typing.Callable[[str], str], name: str) -> typing.Callable[[str], str]:
    return lambda key: source_of(f"{name}.{key}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def section_to_dict(instance: Any) -> dict[str, Any]:
    """A TOML-ready dict of a section: paths as strings, tuples as lists, ``None`` left out (TOML has no null)."""

    def plain(value: Any) -> Any:
        if attrs.has(type(value)):
            return section_to_dict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items() if v is not None}
        return value

    return {
        field.name: plain(getattr(instance, field.name))
        for field in attrs.fields(type(instance))
        if getattr(instance, field.name) is not None
    }
