"""Handlers of core's ``esper`` subcommands. Each takes the parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from esper_core.plugins.registry import Registry


def _hooks_of(registry: Registry, plugin: object) -> list[str]:
    return sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])


def plugins(args: argparse.Namespace) -> int:
    registry: Registry = args.registry
    rows: list[dict[str, Any]] = []
    for info in registry.pm.plugin_infos():
        rows.append(
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "target": info.target,
                "hooks": _hooks_of(registry, info.plugin),
                "provides": registry.provided_by(info),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="Esper plugins", show_lines=True)
    for column in ("plugin", "distribution", "version", "hooks", "provides"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["distribution"] or "(registered directly)",
            row["version"] or "",
            "\n".join(row["hooks"]) or "(none)",
            "\n".join(row["provides"]) or "(nothing yet)",
        )
    Console().print(table)
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
