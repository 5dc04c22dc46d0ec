"""``esper serve NAME [NAME ...] [CONFIG] [--set K=V]``: run services under the Weatherlight supervisor.

Positional arguments are service names, and optionally one TOML configuration file (recognised by its ``.toml``
suffix, or because it is an existing file). With no name, ``weatherlight.services`` from the configuration is used.
Preflight checks everything first (services installed, ``ESPER_LEYLINE_SECRET`` set, the bus reachable, what each
service declares) and reports every problem at once; nothing starts unless all pass. SIGINT or SIGTERM stops the
services cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from esper_core.cli.arguments import add_config_arguments
from esper_core.cli.layout import definitions, terminal_width
from esper_core.errors import ConfigError
from esper_core.plugins.registry import Registry

HELP = "run services (tamiyo, urza, ...) under the Weatherlight supervisor until SIGINT/SIGTERM"


def _installed_services(registry: Registry) -> str:
    try:
        services = registry.services()
    except Exception as error:  # noqa: BLE001 - help must not fail because a plugin is broken
        return f"installed services: (could not be listed: {error})"
    if not services:
        return "installed services: none (install a package that provides one, e.g. esper-tamiyo)"
    rows = [(spec.name, spec.description) for spec in services]
    return "installed services:\n" + "\n".join(definitions(rows, terminal_width()))


def add_parser(subcommands: Any, registry: Registry) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``esper`` subcommands; its help lists the services installed."""
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "serve",
        help=HELP,
        description=(
            "Run one or more services in one supervised process: each in its own worker, restarted with exponential "
            "backoff when it crashes, with health telemetry on the bus. Needs ESPER_LEYLINE_SECRET (shared by every "
            "process on the bus). Stop with SIGINT (Ctrl-C) or SIGTERM."
        ),
        epilog=_installed_services(registry),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="NAME|CONFIG",
        help="services to run (see `esper plugins`), and optionally a TOML configuration file; with no name, "
        "weatherlight.services from the configuration",
    )
    add_config_arguments(parser, example="oona.backend=redis://127.0.0.1:6379/0", config_help="")
    parser.add_argument("--check", action="store_true", help="run the preflight checks only, then exit")
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default: INFO)")
    parser.set_defaults(handler=serve)
    return parser


def split_targets(targets: list[str]) -> tuple[list[str], str | None]:
    """Service names and the configuration file among ``targets``."""
    names: list[str] = []
    configs: list[str] = []
    for target in targets:
        if target.endswith(".toml") or Path(target).is_file():
            configs.append(target)
        else:
            names.append(target)
    if len(configs) > 1:
        raise ConfigError(f"esper serve takes one configuration file, got {len(configs)}: {', '.join(configs)}")
    return names, (configs[0] if configs else None)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM while inside the block (main thread only); restore the handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("esper.weatherlight").info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(args: argparse.Namespace) -> int:
    from esper_core.weatherlight import WeatherlightOptions, build_weatherlight, preflight

    registry: Registry = args.registry
    names, config_path = split_targets(args.targets)
    config = registry.load_config(config_path, overrides=args.overrides)
    if not names:
        names = list(config.get(WeatherlightOptions).services)
    if not names:
        available = ", ".join(spec.name for spec in registry.services()) or "none installed"
        raise ConfigError(
            f"name the services to run: esper serve NAME [NAME ...] (or set weatherlight.services). "
            f"Available: {available}"
        )
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    prepared = preflight(registry, config, names)
    try:
        if args.check:
            print(f"preflight passed: {', '.join(names)} on {prepared.backend_url}", flush=True)
            return 0
        supervisor = build_weatherlight(registry, config, prepared)
        stop = threading.Event()
        with stop_on_signals(stop):
            print(
                f"weatherlight: serving {', '.join(names)} on {prepared.backend_url}; stop with SIGINT or SIGTERM",
                file=sys.stderr,
                flush=True,
            )
            supervisor.run(stop)
        print("weatherlight: stopped cleanly", file=sys.stderr, flush=True)
        return 0
    finally:
        prepared.backend.close()
