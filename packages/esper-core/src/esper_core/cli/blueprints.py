"""``esper blueprints``: every blueprint of every installed catalog, with its tier, risk, parameter bounds and its
trainable-parameter count at a slot shape (``--slot conv2d:16x14x14``), or at a width slot, which reads one
activation and writes into a later one (``--slot 'conv2d:1x28x28->conv2d:2x14x14'``, the read side first, quoted so
that the shell does not take ``>`` for a redirect).

Catalogs are found through the registry (``esper_urza_blueprint_catalogs``) and built with their default options, so
a third-party catalog is listed as soon as its package is installed. A blueprint that does not fit the slot (another
growth mode, or a kind it does not write or read: :func:`esper_core.leyline.growth.misfit`) shows "—" for the count,
and the JSON row says why.

``esper blueprints --sheet ID`` shows instead the safety data sheets Urabrask measured for blueprint ``ID`` (one per
slot and parameters), as the configured artifact store keeps them (``esper urabrask bench`` writes them; Urza keeps
them under ``urza.root``): what was measured, the hazards, and what the catalog declared.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from esper_core.cli.arguments import add_config_arguments
from esper_core.errors import EsperError
from esper_core.leyline import BlueprintTier, HandlingClass, HazardBand, SlotKind, growth, value_name
from esper_core.plugins.registry import Registry
from esper_core.plugins.selectors import UrzaSelection
from esper_core.protocols import SlotShape
from esper_core.safety import StoredSheets

HELP = "list every blueprint of every installed catalog (tier, risk, bounds, parameter count at a slot shape)"
DEFAULT_SLOT = "conv2d:16x14x14"
#: Dimensions (batch excluded) of each slot kind, and an example.
_KINDS: dict[str, tuple[SlotKind.ValueType, int, str]] = {
    "conv2d": (SlotKind.SLOT_KIND_CONV2D, 3, "conv2d:16x14x14 (channels x height x width)"),
    "vector": (SlotKind.SLOT_KIND_VECTOR, 1, "vector:128 (features)"),
    "sequence": (SlotKind.SLOT_KIND_SEQUENCE, 2, "sequence:16x64 (length x features)"),
}
_SHORT_KINDS = {"conv2d": "conv", "vector": "vec", "sequence": "seq"}
TIERS = ("SAFE", "EXPERIMENTAL", "HIGH_RISK")
NO_COUNT = "—"


def parse_slot(text: str) -> SlotShape:
    """``KIND:SHAPE`` (``conv2d:16x14x14``, ``vector:128``, ``sequence:16x64``), a residual slot, or
    ``READ_KIND:SHAPE->KIND:SHAPE`` (``conv2d:1x28x28->conv2d:2x14x14``), a width slot reading the first activation
    and writing into the second, as a :class:`SlotShape`."""
    if growth.ARROW not in text:
        kind, shape = _parse_side(text, text)
        return SlotShape(kind, shape)
    read_text, _, write_text = text.partition(growth.ARROW)
    if not read_text.strip() or not write_text.strip() or growth.ARROW in write_text:
        raise argparse.ArgumentTypeError(
            f"a width slot is written READ->WRITE, each KIND:SHAPE, like conv2d:1x28x28->conv2d:2x14x14, not {text!r}"
        )
    read_kind, read_shape = _parse_side(read_text, text)
    kind, shape = _parse_side(write_text, text)
    return SlotShape(kind, shape, read_kind=read_kind, read_shape=read_shape)


def _parse_side(side: str, text: str) -> tuple[SlotKind.ValueType, tuple[int, ...]]:
    kind_text, _, shape_text = side.strip().partition(":")
    examples = ", ".join(example for _, _, example in _KINDS.values())
    if kind_text.lower() not in _KINDS:
        raise argparse.ArgumentTypeError(f"unknown slot kind {kind_text!r} in {text!r}; use one of: {examples}")
    kind, rank, example = _KINDS[kind_text.lower()]
    try:
        shape = tuple(int(part) for part in shape_text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != rank or any(size < 1 for size in shape):
        raise argparse.ArgumentTypeError(f"a {kind_text} slot is written like {example}, not {text!r}")
    return kind, shape


def _kind_name(kind: SlotKind.ValueType) -> str:
    return SlotKind.Name(kind).removeprefix("SLOT_KIND_").lower()


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """Add ``blueprints`` to the ``esper`` subcommands."""
    parser: argparse.ArgumentParser = subcommands.add_parser("blueprints", help=HELP, description=HELP)
    parser.add_argument(
        "--slot",
        type=parse_slot,
        default=parse_slot(DEFAULT_SLOT),
        metavar="KIND:SHAPE",
        help=(
            f"slot to count parameters at: conv2d:CxHxW, vector:D or sequence:LxD (default {DEFAULT_SLOT}); a width "
            "slot is READ->WRITE, quoted, e.g. 'conv2d:1x28x28->conv2d:2x14x14' (width blueprints fit only those)"
        ),
    )
    parser.add_argument(
        "--tier",
        action="append",
        type=str.upper,
        choices=TIERS,
        help="only blueprints of this tier (repeatable; default: every tier)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--sheet", metavar="ID", help="show the stored safety data sheets of blueprint ID instead")
    add_config_arguments(
        parser, example="urza.root=var/urza", config_help="a TOML configuration (for --sheet: the store and urza.root)"
    )
    parser.set_defaults(handler=run)
    return parser


def collect(registry: Registry, slot: SlotShape, tiers: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per blueprint of every installed catalog, in catalog then id order."""
    rows: list[dict[str, Any]] = []
    for spec in registry.blueprint_catalogs():
        try:
            catalog = registry.build(spec)
        except EsperError:
            raise
        except Exception as error:
            raise EsperError(
                f"blueprint catalog {spec.name!r} ({registry.provider_of(spec).describe()}) failed to build: "
                f"{type(error).__name__}: {error}"
            ) from error
        for descriptor in catalog.descriptors():
            tier = BlueprintTier.Name(descriptor.tier).removeprefix("BLUEPRINT_TIER_")
            if tiers and tier not in tiers:
                continue
            count: int | None = None
            problem = ""
            misfit = growth.misfit(descriptor, slot)
            if misfit is None:
                try:
                    count = int(catalog.parameter_count(descriptor.blueprint_id, slot, {}))
                except (KeyError, ValueError) as error:
                    problem = str(error)
            width = growth.mode_of(descriptor) == growth.WIDTH
            rows.append(
                {
                    "catalog": spec.name,
                    "blueprint_id": descriptor.blueprint_id,
                    "name": descriptor.name,
                    "tier": tier,
                    "risk": round(float(descriptor.risk), 4),
                    "stage": int(descriptor.stage),
                    "growth_mode": "width" if width else "residual",
                    "slot_kinds": [_kind_name(kind) for kind in descriptor.slot_kinds],
                    "read_kinds": [_kind_name(kind) for kind in descriptor.read_kinds],
                    "approval_required": bool(descriptor.approval_required),
                    "quarantine_only": bool(descriptor.quarantine_only),
                    "parameters": {
                        name: {
                            "min": bound.min_value,
                            "max": bound.max_value,
                            "default": bound.default_value,
                            "integer": bound.integer,
                            "description": bound.description,
                        }
                        for name, bound in sorted(descriptor.allowed_parameters.items())
                    },
                    "fits": misfit is None,
                    "misfit": misfit or "",
                    "parameter_count": count,
                    "error": problem,
                    "description": descriptor.description,
                }
            )
    return rows


def _bounds(row: dict[str, Any]) -> str:
    parts = []
    for name, bound in row["parameters"].items():
        parts.append(escape(f"{name}={bound['default']:g} [{bound['min']:g}–{bound['max']:g}]"))
    return "\n".join(parts) or "—"


def run(args: argparse.Namespace) -> int:
    if args.sheet:
        return show_sheets(args)
    registry: Registry = args.registry
    slot: SlotShape = args.slot
    rows = collect(registry, slot, args.tier)
    if args.json:
        described: dict[str, Any] = {"kind": _kind_name(slot.kind), "shape": list(slot.shape)}
        if slot.is_width:
            described |= {"read_kind": _kind_name(slot.read_kind), "read_shape": list(slot.read_shape)}
        print(json.dumps({"slot": described, "blueprints": rows}))
        return 0
    table = Table(title=f"Esper blueprints (parameters at {escape(_slot_text(slot))})", show_lines=False)
    table.add_column("catalog", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("tier", no_wrap=True)
    table.add_column("risk", justify="right", no_wrap=True)
    table.add_column("kinds", overflow="fold")
    table.add_column("parameters", overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    for row in rows:
        flags = " (Q)" if row["quarantine_only"] else " (A)" if row["approval_required"] else ""
        count = NO_COUNT if row["parameter_count"] is None else f"{row['parameter_count']:,}"
        table.add_row(
            row["catalog"],
            row["blueprint_id"],
            row["name"],
            row["tier"] + flags,
            f"{row['risk']:.2f}",
            _kinds(row),
            _bounds(row),
            count if not row["error"] else "error",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 150))
    console.print(table)
    console.print(
        f"{len(rows)} blueprints. count: trainable parameters at the slot ({NO_COUNT}: does not fit it, a residual "
        "blueprint at a width slot or the other way round, or a kind it does not grow in). kinds: what a residual "
        "blueprint grows in; read→written for a width blueprint. "
        "parameters: default \\[bounds]. (A) approval required, (Q) quarantine-only."
    )
    return 0


def _slot_text(slot: SlotShape) -> str:
    def side(kind: SlotKind.ValueType, shape: tuple[int, ...]) -> str:
        return f"{_kind_name(kind)}:{'x'.join(str(size) for size in shape)}"

    written = side(slot.kind, slot.shape)
    return f"{side(slot.read_kind, slot.read_shape)}{growth.ARROW}{written}" if slot.is_width else written


def _kinds(row: dict[str, Any]) -> str:
    """``conv vec seq`` for a residual blueprint; ``conv→vec`` (what it reads → what it writes) for a width one."""
    written = " ".join(_SHORT_KINDS.get(kind, kind) for kind in row["slot_kinds"]) or "any"
    if row["growth_mode"] != "width":
        return written
    read = " ".join(_SHORT_KINDS.get(kind, kind) for kind in row["read_kinds"]) or "any"
    return f"{read}→{written}"


def show_sheets(args: argparse.Namespace) -> int:
    """``--sheet ID``: the stored sheets of one blueprint, from the configured artifact store."""
    registry: Registry = args.registry
    config = registry.load_config(args.config, overrides=args.overrides)
    selection = config.get(UrzaSelection)
    catalogs = [registry.build(registry.blueprint_catalog(name), config=config) for name in selection.catalogs]
    store = registry.build(registry.artifact_store(selection.store), config=config, catalogs=catalogs)
    try:
        if not isinstance(store, StoredSheets):
            raise EsperError(f"the artifact store {selection.store!r} keeps no safety data sheets (urza.store)")
        sheets, refused = store.stored_sheets(args.sheet)
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    if args.json:
        print(json.dumps({"blueprint": args.sheet, "sheets": [MessageToDict(s) for s in sheets], "refused": refused}))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))
    for problem in refused:
        console.print(f"[red]refused:[/] {escape(problem)}")
    if not sheets:
        console.print(
            f"no trusted safety data sheet of {escape(args.sheet)}: measure it with "
            f"`esper urabrask bench --blueprint {escape(args.sheet)}` (with the same urza.root)"
        )
        return 0
    for sheet in sorted(sheets, key=lambda sheet: sheet.slot):
        table = Table(title=f"{escape(sheet.blueprint_id)} at {escape(sheet.slot)}", show_header=False)
        table.add_column("field", no_wrap=True)
        table.add_column("value", overflow="fold")
        declared = value_name(BlueprintTier, sheet.declared_tier, "BLUEPRINT_TIER_")
        table.add_row("verdict", f"{value_name(HazardBand, sheet.hazard_band, 'HAZARD_BAND_')}, "
                      f"{value_name(HandlingClass, sheet.handling_class, 'HANDLING_CLASS_')}, "
                      f"risk {sheet.risk_score:.3f}")  # fmt: skip
        table.add_row("declared", f"{declared}, risk {sheet.declared_risk:.2f}")
        table.add_row("recommendation", escape(sheet.recommendation))
        for name, text in sorted(sheet.hazards.items()):
            table.add_row(f"hazard {escape(name)}", escape(text))
        for name in SHEET_MEASUREMENTS:
            if name in sheet.measurements:
                table.add_row(name, f"{sheet.measurements[name]:.4g}")
        table.add_row("catalog", f"{escape(sheet.catalog)} ({escape(sheet.catalog_version)})")
        table.add_row("parameters", ", ".join(f"{k}={v:g}" for k, v in sorted(sheet.parameters.items())) or "—")
        table.add_row("issued", sheet.issued_at.ToJsonString())
        console.print(table)
    return 0


#: The measurements a sheet's table shows (the JSON has them all).
SHEET_MEASUREMENTS = (
    "timing.forward_p50_ms",
    "timing.forward_p95_ms",
    "timing.backward_p50_ms",
    "timing.backward_p95_ms",
    "timing.slowdown",
    "cost.flops_per_sample",
    "parameter_count.actual",
    "learning.final_loss",
)
