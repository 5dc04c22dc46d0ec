"""``esper blueprints``: every blueprint of every installed catalog, with its tier, risk, parameter bounds and its
trainable-parameter count at a slot shape (``--slot conv2d:16x14x14``).

Catalogs are found through the registry (``esper_urza_blueprint_catalogs``) and built with their default options, so
a third-party catalog is listed as soon as its package is installed. A blueprint that does not grow in the slot's
kind shows "—" for the count.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from esper_core.errors import EsperError
from esper_core.leyline import BlueprintTier, SlotKind
from esper_core.plugins.registry import Registry
from esper_core.protocols import SlotShape

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
    """``KIND:SHAPE`` (``conv2d:16x14x14``, ``vector:128``, ``sequence:16x64``) as a :class:`SlotShape`."""
    kind_text, _, shape_text = text.strip().partition(":")
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
    return SlotShape(kind, shape)


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
        help=f"slot to count parameters at: conv2d:CxHxW, vector:D or sequence:LxD (default {DEFAULT_SLOT})",
    )
    parser.add_argument(
        "--tier",
        action="append",
        type=str.upper,
        choices=TIERS,
        help="only blueprints of this tier (repeatable; default: every tier)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
            if slot.kind in descriptor.slot_kinds:
                try:
                    count = int(catalog.parameter_count(descriptor.blueprint_id, slot, {}))
                except (KeyError, ValueError) as error:
                    problem = str(error)
            rows.append(
                {
                    "catalog": spec.name,
                    "blueprint_id": descriptor.blueprint_id,
                    "name": descriptor.name,
                    "tier": tier,
                    "risk": round(float(descriptor.risk), 4),
                    "stage": int(descriptor.stage),
                    "slot_kinds": [_kind_name(kind) for kind in descriptor.slot_kinds],
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
    registry: Registry = args.registry
    slot: SlotShape = args.slot
    rows = collect(registry, slot, args.tier)
    if args.json:
        print(json.dumps({"slot": {"kind": _kind_name(slot.kind), "shape": list(slot.shape)}, "blueprints": rows}))
        return 0
    shape = "x".join(str(size) for size in slot.shape)
    table = Table(title=f"Esper blueprints (parameters at {_kind_name(slot.kind)}:{shape})", show_lines=False)
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
            " ".join(_SHORT_KINDS.get(kind, kind) for kind in row["slot_kinds"]),
            _bounds(row),
            count if not row["error"] else "error",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 150))
    console.print(table)
    console.print(
        f"{len(rows)} blueprints. count: trainable parameters at the slot ({NO_COUNT}: not for this slot kind). "
        "parameters: default \\[bounds]. (A) approval required, (Q) quarantine-only."
    )
    return 0
