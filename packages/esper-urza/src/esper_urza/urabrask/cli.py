"""``esper urabrask bench``: measure every blueprint of the configured catalogs (or those named) at their standard
slots (or the slots given), and store a signed safety data sheet for each beside Urza's artifacts
(``<urza.root>/sheets``).

It prints one row per blueprint and slot (what the catalog declared, what was measured, the hazards) and a summary:
how many were quarantined, which catalogs declared a blueprint safer than it measured, and the crucible's own time
per blueprint and slot (p50/p95), which is what rating a catalog on first use costs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from esper_core.cli.arguments import add_config_arguments
from esper_core.cli.blueprints import parse_slot
from esper_core.errors import ConfigError
from esper_core.leyline import BlueprintTier, HandlingClass, HazardBand, value_name
from esper_core.plugins import Registry
from esper_core.plugins.selectors import UrzaSelection
from esper_core.protocols import SlotShape
from esper_core.security_options import SecurityOptions
from esper_core.signing import SigningKey
from esper_core.stats import percentile

HELP = "measure blueprints and store their signed safety data sheets (Urabrask)"


def configure_urabrask(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Urabrask measures what a blueprint does instead of believing what its catalog declares: latency, counted "
        "FLOPs, memory, gradients under stress, extreme and non-finite inputs, determinism, learning. Each result is "
        "a signed Blueprint Safety Data Sheet stored beside Urza's artifacts (docs/blueprints.md)."
    )
    commands = parser.add_subparsers(dest="urabrask_command", metavar="COMMAND", required=True)
    bench = commands.add_parser("bench", help="measure blueprints and store their sheets")
    add_config_arguments(bench, example="urza.root=var/urza")
    bench.add_argument("--catalog", action="append", metavar="NAME",
                       help="a catalog to measure (repeatable; default: urza.catalogs)")  # fmt: skip
    bench.add_argument("--blueprint", action="append", metavar="ID", help="only this blueprint (repeatable)")
    bench.add_argument("--slot", action="append", type=parse_slot, metavar="SLOT",
                       help="measure at this slot instead of the standard ones, e.g. conv2d:16x14x14 or "
                            "vector:256->vector:128 (repeatable; blueprints that do not grow there are "
                            "skipped)")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="one JSON object instead of the table")


def run_urabrask(args: argparse.Namespace) -> int:
    from esper_urza.options import UrzaOptions
    from esper_urza.plugin import library_root
    from esper_urza.urabrask.crucible import find_descriptor, measure_blueprint, standard_slots
    from esper_urza.urabrask.rating import catalog_version
    from esper_urza.urabrask.sheet import safety_data_sheet, sign_sheet
    from esper_urza.urabrask.store import SheetStore

    registry: Registry = args.registry
    config = registry.load_config(args.config, overrides=args.overrides)
    root = library_root(config.get(UrzaOptions), None)
    key = SigningKey.resolve(required=True, var=config.get(SecurityOptions).secret_env)
    store = SheetStore(root, key)
    rows: list[dict[str, Any]] = []
    wanted = set(args.blueprint or ())
    found: set[str] = set()
    for name in args.catalog or config.get(UrzaSelection).catalogs:
        spec = registry.blueprint_catalog(name)
        catalog = registry.build(spec, config=config)
        version = catalog_version(registry, name)
        for descriptor in catalog.descriptors():
            blueprint = descriptor.blueprint_id
            if wanted and blueprint not in wanted:
                continue
            found.add(blueprint)
            for slot in args.slot or standard_slots(find_descriptor(catalog, blueprint)):
                try:
                    result = measure_blueprint(catalog, blueprint, slot)
                except ValueError:
                    if args.slot:  # a slot the user named that this blueprint does not grow in
                        continue
                    raise
                sheet = sign_sheet(safety_data_sheet(result, catalog_version=version), key)
                path = store.put(sheet)
                rows.append(_row(result, sheet.risk_score, str(path)))
    missing = sorted(wanted - found)
    if missing:
        raise ConfigError(f"no configured catalog has blueprint {', '.join(missing)} (`esper blueprints` lists them)")
    if not rows:
        raise ConfigError("nothing was measured: no blueprint grows in the slots given (--slot)")
    summary = _summary(rows, str(store.directory))
    if args.json:
        print(json.dumps({"sheets": rows, "summary": summary}))
    else:
        _print_table(rows, summary)
    return 0


def _row(result: Any, score: float, path: str) -> dict[str, Any]:
    slot: SlotShape = result.slot
    return {
        "catalog": result.catalog,
        "blueprint_id": result.blueprint_id,
        "slot": slot.describe(),
        "declared_tier": value_name(BlueprintTier, result.declared_tier, "BLUEPRINT_TIER_"),
        "declared_risk": result.declared_risk,
        "hazard_band": value_name(HazardBand, result.hazard_band, "HAZARD_BAND_"),
        "handling": value_name(HandlingClass, result.handling_class, "HANDLING_CLASS_"),
        "risk_score": score,
        "hazards": sorted(result.hazard_names),
        "understates_risk": result.understates_risk,
        "crucible_ms": result.elapsed_s * 1000.0,
        "sheet": path,
    }


def _summary(rows: list[dict[str, Any]], directory: str) -> dict[str, Any]:
    times = [row["crucible_ms"] for row in rows]
    return {
        "sheets": len(rows),
        "directory": directory,
        "quarantined": sorted({row["blueprint_id"] for row in rows if row["handling"] == "QUARANTINE"}),
        "understated": sorted({f"{row['catalog']}:{row['blueprint_id']}" for row in rows if row["understates_risk"]}),
        "crucible_p50_ms": percentile(times, 0.5),
        "crucible_p95_ms": percentile(times, 0.95),
    }


def _print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Urabrask: measured safety data sheets")
    for column in ("catalog", "id", "slot", "declared", "measured", "risk", "hazards", "ms"):
        table.add_column(column, overflow="fold", justify="right" if column in ("risk", "ms") else "left")
    for row in rows:
        table.add_row(
            row["catalog"],
            row["blueprint_id"],
            escape(row["slot"]),
            f"{row['declared_tier']} {row['declared_risk']:.2f}",
            f"{row['hazard_band']} ({row['handling']})" + (" [red]understated[/]" if row["understates_risk"] else ""),
            f"{row['risk_score']:.2f}",
            ", ".join(row["hazards"]) or "—",
            f"{row['crucible_ms']:.0f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))
    console.print(table)
    console.print(
        f"{summary['sheets']} sheets, signed, in {escape(summary['directory'])}. "
        f"Quarantined: {', '.join(summary['quarantined']) or 'none'}. "
        f"Declared safer than measured: {', '.join(summary['understated']) or 'none'}. "
        f"Crucible time per blueprint and slot: p50 {summary['crucible_p50_ms']:.0f} ms, "
        f"p95 {summary['crucible_p95_ms']:.0f} ms."
    )
