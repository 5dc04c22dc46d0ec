"""The ``esper`` command. Core's subcommands live here; plugins add theirs through ``esper_core_cli_commands``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from esper_core import __version__
from esper_core.cli.arguments import add_config_arguments
from esper_core.errors import EsperError
from esper_core.plugins.registry import Registry


def build_parser(registry: Registry) -> argparse.ArgumentParser:
    from esper_core.cli import blueprints, commands, run, serve

    parser = argparse.ArgumentParser(
        prog="esper",
        description="Esper: morphogenetic training for PyTorch. Networks that grow where growth pays.",
    )
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = subcommands.add_parser("plugins", help="list installed plugins and what they provide")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plugins.set_defaults(handler=commands.plugins)

    config = subcommands.add_parser("config", help="print the resolved configuration (defaults, file, overrides)")
    add_config_arguments(config, example="oona.max_attempts=3")
    config.set_defaults(handler=commands.show_config)

    leyline = subcommands.add_parser("leyline", help="Leyline contract tools")
    leyline_commands = leyline.add_subparsers(dest="leyline_command", metavar="ACTION", required=True)
    check = leyline_commands.add_parser("check", help="round-trip every contract message and report its size")
    check.set_defaults(handler=commands.leyline_check)

    run.add_parser(subcommands, registry)
    serve.add_parser(subcommands, registry)
    blueprints.add_parser(subcommands)

    for spec in registry.cli_commands():
        extra = subcommands.add_parser(spec.name, help=spec.help)
        spec.configure(extra)
        extra.set_defaults(handler=lambda args, run=spec.run: run(args))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        registry = Registry.create()
        parser = build_parser(registry)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        args.registry = registry
        args.argv = list(argv) if argv is not None else sys.argv[1:]  # what `esper run --nproc N` passes on
        return int(args.handler(args))
    except EsperError as error:
        print(f"esper: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """The reader of our output closed it (``esper plugins | head``): stop quietly, as Unix tools do.

    Python would otherwise report the broken pipe again when it flushes stdout at exit; pointing stdout at
    /dev/null first makes that flush a no-op.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the signal


if __name__ == "__main__":
    raise SystemExit(main())
