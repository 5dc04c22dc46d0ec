"""Arguments several ``esper`` subcommands share, defined once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, *, example: str, config_help: str | None = None) -> None:
    """The optional TOML configuration file and the repeatable ``--set KEY=VALUE`` override.

    ``example`` is a key=value this subcommand's users are likely to override (shown in ``--help``). Pass
    ``config_help=""`` for a subcommand that reads its configuration file some other way (``esper serve``).
    """
    if config_help != "":
        parser.add_argument("config", nargs="?", help=config_help or "a TOML run configuration (defaults when omitted)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one configuration key, e.g. --set {example} (repeatable)",
    )
