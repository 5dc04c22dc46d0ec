"""The hook implementations Esper loads through the entry point ``example`` (group ``esper``).

Esper imports this module at every start, even for ``esper --help``, so it imports nothing heavy: torch is imported
only when the catalog builds a seed, and every factory imports its component's module itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from esper_core import hookimpl
from esper_core.errors import ConfigError
from esper_core.plugins import BlueprintCatalogSpec, BuildContext, PolicySpec, TelemetrySinkSpec

from esper_example_plugin.policy import NAME as POLICY_NAME
from esper_example_plugin.policy import GreedyOptions
from esper_example_plugin.sink import CsvSinkOptions


def build_policy(context: BuildContext) -> Any:
    """The ``example-greedy`` policy; a blueprint the run cannot germinate is a configuration error here, at setup."""
    from esper_example_plugin.policy import GreedyPolicy, check_blueprint_choice

    options = context.options if isinstance(context.options, GreedyOptions) else GreedyOptions()
    known = _run_blueprints(context)
    if known is not None:
        descriptors, allowed_tiers = known
        check_blueprint_choice(options, descriptors, allowed_tiers)
    return GreedyPolicy(options)


def _run_blueprints(context: BuildContext) -> tuple[list[Any], list[str]] | None:
    """Every descriptor of the run's catalogs and the tiers it allows; None when built outside a run with no
    configuration (then a blueprint that is not offered only makes the policy wait, saying why)."""
    if context.config is None:
        return None
    from esper_core.plugins.selectors import UrzaSelection

    selection = context.config.get(UrzaSelection)
    # Tamiyo hands a policy factory the catalogs the run already built; build them from urza.catalogs otherwise.
    catalogs = context.services.get("catalogs")
    if catalogs is None:
        registry = context.registry
        specs = [registry.blueprint_catalog(name) for name in selection.catalogs]
        catalogs = [registry.build(spec, config=context.config) for spec in specs]
    descriptors = [descriptor for catalog in catalogs for descriptor in catalog.descriptors()]
    return descriptors, list(selection.allowed_tiers)


def build_catalog(context: BuildContext) -> Any:
    from esper_example_plugin.catalog import ExampleCatalog

    return ExampleCatalog()


def build_csv_sink(context: BuildContext) -> Any:
    """The ``example-csv`` sink for one run: ``nissa.example-csv.path`` inside the run directory, or that absolute
    path."""
    from esper_example_plugin.sink import CsvSink

    options = context.options if isinstance(context.options, CsvSinkOptions) else CsvSinkOptions()
    path = Path(options.path).expanduser()
    if not path.is_absolute():
        if context.run_dir is None:
            raise ConfigError(
                f"nissa.example-csv.path = {options.path!r} is relative to the run directory, and this sink is "
                "built outside a run: set an absolute path, or build it with run_dir=..."
            )
        path = Path(context.run_dir) / path
    return CsvSink(path, fsync=options.fsync)


@hookimpl
def esper_tamiyo_policies() -> Iterator[PolicySpec]:
    yield PolicySpec(
        name=POLICY_NAME,
        factory=build_policy,
        options=GreedyOptions,
        description="Greedy example: after a warm-up, grow one blueprint in the most sensitive slot and advance it "
        "as soon as its stage allows; cull on a clearly negative contribution.",
    )


@hookimpl
def esper_urza_blueprint_catalogs() -> Iterator[BlueprintCatalogSpec]:
    yield BlueprintCatalogSpec(
        name="example",
        factory=build_catalog,
        description="One blueprint, EX001 gated_bottleneck: a gated bottleneck residual for vector and conv2d slots.",
    )


@hookimpl
def esper_nissa_telemetry_sinks() -> Iterator[TelemetrySinkSpec]:
    yield TelemetrySinkSpec(
        name="example-csv",
        factory=build_csv_sink,
        options=CsvSinkOptions,
        description="One CSV row per metric (timestamp, epoch, step, source, metric, value, unit) in the run "
        "directory (telemetry.csv).",
    )
