"""Handlers of core's ``esper`` subcommands. Each takes the parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from esper_core.cli.layout import definitions, terminal_width, wrap
from esper_core.plugins.registry import Registry


def _hooks_of(registry: Registry, plugin: object) -> list[str]:
    return sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """Every registered plugin: where it comes from, the hooks it implements and what it provides."""
    return [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "target": info.target,
            "hooks": _hooks_of(registry, info.plugin),
            "provides": registry.provided_by(info),
        }
        for info in registry.pm.plugin_infos()
    ]


def format_plugins(rows: list[dict[str, Any]], width: int) -> list[str]:
    """``esper plugins`` as text: one block per plugin, what it provides grouped by kind, then its hooks."""
    lines = [f"{len(rows)} Esper plugin{'s' if len(rows) != 1 else ''} installed", ""]
    for row in rows:
        origin = (
            f"{row['distribution']} {row['version'] or ''}".strip() if row["distribution"] else "registered directly"
        )
        lines.extend(wrap(f"{row['name']}: {origin} ({row['target'] or 'no entry point'})", width, "    ", first=""))
        by_kind: dict[str, list[str]] = {}
        for provided in row["provides"]:
            kind, _, name = provided.partition(":")
            by_kind.setdefault(kind, []).append(name)
        definitions_rows = [(kind, ", ".join(names)) for kind, names in by_kind.items()]
        definitions_rows.append(("hooks", ", ".join(row["hooks"]) or "(none)"))
        lines.extend(definitions(definitions_rows, width))
        lines.append("")
    return lines


def plugins(args: argparse.Namespace) -> int:
    rows = plugin_rows(args.registry)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("\n".join(format_plugins(rows, terminal_width())).rstrip())
    return 0


def show_config(args: argparse.Namespace) -> int:
    registry: Registry = args.registry
    config = registry.load_config(args.config, overrides=args.overrides)
    print(config.to_toml(), end="")
    return 0


def leyline_check(args: argparse.Namespace) -> int:
    """Serialize and parse a fully populated instance of every Leyline message; fail on any difference."""
    from esper_core import leyline
    from esper_core.leyline.samples import populated

    table = Table(title=f"Leyline round trip ({leyline.PACKAGE})")
    for column in ("message", "bytes", "serialize+parse µs", "ok"):
        table.add_column(column, justify="right" if column != "message" else "left")
    failures = []
    for cls in leyline.all_message_types():
        message = populated(cls)
        repeats = 200
        start = time.perf_counter()
        for _ in range(repeats):
            parsed = cls.FromString(message.SerializeToString())
        micros = (time.perf_counter() - start) / repeats * 1e6
        ok = parsed == message
        if not ok:
            failures.append(cls.__name__)
        table.add_row(cls.__name__, str(message.ByteSize()), f"{micros:.1f}", "yes" if ok else "NO")
    Console().print(table)
    if failures:
        print(f"round trip changed: {', '.join(failures)}")
        return 1
    print(f"all {len(leyline.all_message_types())} Leyline messages survive serialize -> parse unchanged")
    return 0
