"""Registers Tamiyo with Esper: the ``tamiyo`` controller, the ``heuristic``, ``fixed-schedule`` and ``learned``
policies, and the ``[tamiyo.risk]`` configuration section."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from esper_core import hookimpl
from esper_core.plugins import BuildContext, ControllerSpec, PolicySpec, ServiceSpec
from esper_tamiyo.learned import LearnedPolicyOptions, build_learned_policy
from esper_tamiyo.options import (
    FixedScheduleOptions,
    HeuristicOptions,
    RiskOptions,
    TamiyoOptions,
    TamiyoServiceOptions,
)


def build_heuristic(context: BuildContext) -> Any:
    from esper_tamiyo.policies.heuristic import HeuristicPolicy

    return HeuristicPolicy(context.options, catalogs=context.blueprint_catalogs())


def build_fixed_schedule(context: BuildContext) -> Any:
    from esper_tamiyo.policies.fixed_schedule import FixedSchedulePolicy

    return FixedSchedulePolicy(context.options)


def build_controller(context: BuildContext) -> Any:
    """Tamiyo for one run: the policy named by ``tamiyo.policy``, the risk engine, signing and field reports."""
    from esper_core.plugins.selectors import TamiyoSelection, UrzaSelection
    from esper_core.safety import SafetySheetSource
    from esper_core.security_options import SecurityOptions
    from esper_core.signing import CommandSigner
    from esper_tamiyo.controller import TamiyoController, offered_blueprints
    from esper_tamiyo.reports import FieldReports
    from esper_tamiyo.risk import RiskEngine

    if context.signing_key is None:
        raise ValueError("Tamiyo needs the run's signing key to sign its commands (signing_key=...)")
    config = context.config
    options: TamiyoOptions = context.options or TamiyoOptions()
    selection = config.get(TamiyoSelection) if config is not None else TamiyoSelection()
    tiers = config.get(UrzaSelection).allowed_tiers if config is not None else ["SAFE"]
    security = config.get(SecurityOptions) if config is not None else SecurityOptions()
    catalogs = context.blueprint_catalogs()
    registry = context.registry
    policy = registry.build(
        registry.policy(selection.policy),
        config=config,
        signing_key=context.signing_key,
        run_dir=context.run_dir,
        catalogs=catalogs,
    )
    training_run_id = str(context.services.get("training_run_id", ""))
    # Measured blueprint risk (Urabrask's sheets) from the run's artifact store, when it offers them.
    store = context.services.get("store")
    sheets = store if isinstance(store, SafetySheetSource) else None
    log_path = context.run_dir / options.field_report_log if context.run_dir is not None else None
    return TamiyoController(
        policy=policy,
        blueprints=offered_blueprints([d for catalog in catalogs for d in catalog.descriptors()], tiers),
        signer=CommandSigner(context.signing_key, issuer="tamiyo", freshness_window_ms=security.freshness_window_ms),
        options=options,
        risk=RiskEngine(config.get(RiskOptions) if config is not None else RiskOptions(), sheets=sheets),
        reports=FieldReports(options, log_path, training_run_id),
        bus=context.bus,
        training_run_id=training_run_id,
    )


@hookimpl
def esper_tamiyo_policies() -> Iterator[PolicySpec]:
    yield PolicySpec(
        name="heuristic",
        factory=build_heuristic,
        options=HeuristicOptions,
        description="Explainable rules: germinate on plateau where the loss is most sensitive; advance, fossilize "
        "or cull on measured contribution.",
    )
    yield PolicySpec(
        name="fixed-schedule",
        factory=build_fixed_schedule,
        options=FixedScheduleOptions,
        description="Baseline: germinate at fixed epochs and advance without judgement.",
    )
    yield PolicySpec(
        name="learned",
        factory=build_learned_policy,
        options=LearnedPolicyOptions,
        description="A small network over versioned features; weights load only from checked, signed PolicyUpdates "
        "(untrained, it waits).",
    )


@hookimpl
def esper_tolaria_controllers() -> Iterator[ControllerSpec]:
    yield ControllerSpec(
        name="tamiyo",
        factory=build_controller,
        options=TamiyoOptions,
        description="In-process controller: policy, risk engine, signed commands, field reports.",
    )


def build_service(context: BuildContext) -> Any:
    from esper_tamiyo.service import build_tamiyo_service

    return build_tamiyo_service(context)


@hookimpl
def esper_weatherlight_services() -> Iterator[ServiceSpec]:
    yield ServiceSpec(
        name="tamiyo",
        factory=build_service,
        options=TamiyoServiceOptions,
        requires=("torch",),
        description="Decides for training runs over the bus (tolaria.controller = 'remote'): state packets in, "
        "signed commands and field reports out.",
    )


@hookimpl
def esper_core_config_sections() -> Iterator[type]:
    yield RiskOptions
