"""``esper nissa rules``: the alert rules, as configured, as a Prometheus rules file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper_nissa.alerts.promrules import prometheus_rules

HELP = "Nissa's tools: `esper nissa rules` writes the alert rules as a Prometheus rules file"


def configure_nissa(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="nissa_command", metavar="COMMAND", required=True)
    rules = commands.add_parser(
        "rules",
        help="print the alert rules (with nissa.alerts' disabled rules and thresholds applied) as a Prometheus rules "
        "file; promtool check rules accepts it",
    )
    rules.add_argument("config", nargs="?", help="a TOML configuration whose [nissa.alerts] to apply")
    rules.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    rules.add_argument("--output", type=Path, help="write the file here (atomically) instead of printing it")


def run_nissa(arguments: argparse.Namespace) -> int:
    from esper_core.plugins import Registry
    from esper_core.storage import atomic_write_text
    from esper_nissa.ingest import configured_rules
    from esper_nissa.options import AlertOptions

    config = Registry.create().load_config(arguments.config, overrides=arguments.set)
    text = prometheus_rules(configured_rules(config.get(AlertOptions)))
    if arguments.output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(arguments.output, text)
        print(arguments.output)
    return 0
