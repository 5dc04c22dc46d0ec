"""Loading a run configuration: defaults < TOML file < ``ESPER_*`` environment < ``--set`` overrides.

The schema is assembled from section classes (core's own and those plugins contribute), so a key that no installed
plugin reads is an error naming it, never silently ignored. Environment overrides spell the key path in capitals
with ``__`` between parts: ``ESPER_RUN__EPOCHS=3`` sets ``run.epochs``; ``ESPER_TAMIYO__HEURISTIC__PATIENCE=2`` sets
``tamiyo.heuristic.patience``. Override values are read as TOML (``3``, ``true``, ``["karn"]``) where the key expects a
number, boolean, list or table, and as plain text where it expects a string.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import tomli_w

from esper_core.config.convert import RawValue, build_attrs, section_path, section_to_dict, suggest
from esper_core.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "ESPER_"


def _normal(part: str) -> str:
    return part.lower().replace("-", "_")


class EsperConfig:
    """A resolved, validated configuration: one frozen instance per section class."""

    def __init__(self, instances: Mapping[type, Any], source_file: Path | None) -> None:
        self._instances = dict(instances)
        self.source_file = source_file

    def get(self, cls: type[T]) -> T:
        """The instance of section ``cls``; raises ``KeyError`` if ``cls`` was not in this configuration's schema."""
        try:
            return self._instances[cls]  # type: ignore[no-any-return]
        except KeyError:
            raise KeyError(
                f"{cls.__qualname__} (section [{section_path(cls)}]) was not part of this configuration's schema"
            ) from None

    def section_classes(self) -> list[type]:
        return list(self._instances)

    def to_dict(self) -> dict[str, Any]:
        """The whole configuration as nested tables, sections placed at their dotted paths."""
        root: dict[str, Any] = {}
        for cls in sorted(self._instances, key=section_path):
            table = root
            for part in section_path(cls).split("."):
                table = table.setdefault(part, {})
            table.update(section_to_dict(self._instances[cls]))
        return root

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


class _Schema:
    def __init__(self, sections: Iterable[type]) -> None:
        self.by_path: dict[str, list[type]] = defaultdict(list)
        for cls in dict.fromkeys(sections):  # de-duplicated, order kept
            self.by_path[section_path(cls)].append(cls)
        self.claimed: dict[str, dict[str, type]] = {}
        for path, classes in self.by_path.items():
            owners: dict[str, type] = {}
            for cls in classes:
                for field in attrs.fields(cls):
                    if field.name in owners:
                        raise ConfigError(
                            f"configuration key {path}.{field.name} is defined twice, by "
                            f"{owners[field.name].__module__}.{owners[field.name].__qualname__} and "
                            f"{cls.__module__}.{cls.__qualname__}; one of the two plugins must rename it"
                        )
                    owners[field.name] = cls
            self.claimed[path] = owners
        self.tables: set[str] = set()
        for path in self.by_path:
            parts = path.split(".")
            for end in range(1, len(parts) + 1):
                self.tables.add(".".join(parts[:end]))
        for path, owners in self.claimed.items():
            for name in owners:
                child = f"{path}.{name}"
                if child in self.by_path:
                    raise ConfigError(f"[{child}] is both a section and a key of [{path}]; rename one of them")

    def child_tables(self, prefix: str) -> list[str]:
        depth = prefix.count(".") + 1 if prefix else 0
        return sorted(
            path.split(".")[depth]
            for path in self.tables
            if path.count(".") == depth and (not prefix or path.startswith(prefix + "."))
        )

    def resolve_env_name(self, name: str) -> list[str] | None:
        """The key path an ``ESPER_A__B__KEY`` variable names, None if it has no ``__``, or an error."""
        parts = name[len(ENV_PREFIX) :].split("__")
        if len(parts) < 2:
            return None
        wanted = [_normal(p) for p in parts]
        for path, owners in self.claimed.items():
            path_parts = path.split(".")
            rest = wanted[len(path_parts) :]
            if [_normal(p) for p in path_parts] != wanted[: len(path_parts)] or not rest:
                continue
            resolved = _resolve_fields({name: typing.get_type_hints(cls)[name] for name, cls in owners.items()}, rest)
            if resolved is not None:
                return [*path_parts, *resolved]
        known = [
            f"{ENV_PREFIX}{path.replace('.', '__').replace('-', '_').upper()}__{key.upper()}"
            for path, owners in self.claimed.items()
            for key in owners
        ]
        raise ConfigError(f"environment variable {name} names no configuration key{suggest(name, known)}")


def _resolve_fields(fields: Mapping[str, Any], wanted: Sequence[str]) -> list[str] | None:
    """Match normalized ``wanted`` parts against field names, descending into nested attrs classes."""
    for field_name, field_type in fields.items():
        if _normal(field_name) != wanted[0]:
            continue
        if len(wanted) == 1:
            return [field_name]
        if attrs.has(field_type):
            nested = _resolve_fields(typing.get_type_hints(field_type), wanted[1:])
            if nested is not None:
                return [field_name, *nested]
    return None


def _assign(root: dict[str, Any], path: Sequence[str], value: Any, sources: dict[str, str], source: str) -> None:
    table = root
    for part in path[:-1]:
        existing = table.setdefault(part, {})
        if not isinstance(existing, dict):
            raise ConfigError(f"{'.'.join(path)} ({source}): {part} is a value, not a table")
        table = existing
    table[path[-1]] = value
    sources[".".join(path)] = source


def _record_sources(table: Mapping[str, Any], prefix: str, sources: dict[str, str], source: str) -> None:
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _record_sources(value, path, sources, source)
        else:
            sources[path] = source


def load_config(
    path: str | Path | None = None,
    *,
    sections: Iterable[type],
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    text: str | None = None,
) -> EsperConfig:
    """Load and validate a configuration.

    :param path: a TOML file, or None for defaults only.
    :param sections: every section class of the schema (``Registry.config_sections()`` gives all installed ones).
    :param env: the environment to read ``ESPER_*`` overrides from (``os.environ`` by default).
    :param overrides: ``key.path=value`` strings, as given to ``--set``.
    :param text: TOML text to use instead of reading ``path`` (``path`` is then only used in messages).
    """
    schema = _Schema(sections)
    sources: dict[str, str] = {}
    raw: dict[str, Any] = {}
    source_file = Path(path) if path is not None else None
    if source_file is not None or text is not None:
        where = str(source_file) if source_file is not None else "<text>"
        try:
            if text is None:
                assert source_file is not None
                text = source_file.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {where} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(
                f"{where} is a directory, not a configuration file: give the path of a TOML file"
            ) from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{where} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): a TOML "
                "file is UTF-8; save it in that encoding"
            ) from None
        except OSError as error:
            raise ConfigError(f"configuration file {where} cannot be read: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{where} is not valid TOML: {error}") from None
        _record_sources(raw, "", sources, f"from {where}")

    environment = os.environ if env is None else env
    for name in sorted(environment):
        if name.startswith(ENV_PREFIX):
            key_path = schema.resolve_env_name(name)
            if key_path is not None:
                source = f"from environment variable {name}"
                _assign(raw, key_path, RawValue(environment[name]), sources, source)

    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, for example --set run.epochs=3")
        _assign(raw, key.strip().split("."), RawValue(value.strip()), sources, f"from --set {override}")

    instances: dict[type, Any] = {}

    def source_of(prefix: str) -> Any:
        def lookup(key: str) -> str:
            full = f"{prefix}.{key}" if prefix else key
            if full in sources:
                return sources[full]
            return next((src for path, src in sources.items() if path.startswith(full + ".")), "default")

        return lookup

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        owners = schema.claimed.get(prefix, {})
        per_class: dict[type, dict[str, Any]] = {cls: {} for cls in schema.by_path.get(prefix, [])}
        for key, value in table.items():
            child = f"{prefix}.{key}" if prefix else key
            if key in owners:
                per_class[owners[key]][key] = value
            elif child in schema.tables and isinstance(value, dict):
                walk(value, child)
            elif child in schema.tables:
                raise ConfigError(
                    f"{child} = {value!r} ({source_of(prefix)(key)}): {child} is a section; give it as a table, "
                    f"[{child}], with its keys inside"
                )
            else:
                choices = list(owners) + schema.child_tables(prefix)
                where = f"[{prefix}]" if prefix else "the top level"
                what = "section" if isinstance(value, dict) else "key"
                hint = suggest(key, choices) or "."
                raise ConfigError(
                    f"unknown {what} {child} ({source_of(prefix)(key)}){hint} Known in {where}: "
                    f"{', '.join(sorted(choices)) or '(nothing)'}. If a plugin reads it, is that plugin installed? "
                    "See `esper plugins`."
                )
        for cls, values in per_class.items():
            instances[cls] = build_attrs(cls, values, prefix, source_of(prefix))

    walk(raw, "")
    for section_name, classes in schema.by_path.items():
        for cls in classes:
            if cls not in instances:
                instances[cls] = build_attrs(cls, {}, section_name, source_of(section_name))
    return EsperConfig(instances, source_file)
