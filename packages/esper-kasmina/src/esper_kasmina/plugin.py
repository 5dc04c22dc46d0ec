"""Registers Kasmina with Esper: the ``kasmina`` seed executor and its ``[kasmina]`` configuration section."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from esper_core import hookimpl
from esper_core.plugins import BuildContext, SeedExecutorSpec
from esper_kasmina.options import KasminaOptions


def build_kasmina(context: BuildContext) -> Any:
    """Kasmina for one run. Needs the run's artifact store (``store``), catalogs (``catalogs``) and signing key."""
    from esper_core.plugins.selectors import UrzaSelection
    from esper_core.security_options import SecurityOptions
    from esper_core.signing import CommandVerifier
    from esper_kasmina.executor import KasminaSeedExecutor

    store = context.services.get("store")
    if store is None:
        raise ValueError("Kasmina needs the run's artifact store: build it with services store=<ArtifactStore>")
    if context.signing_key is None:
        raise ValueError("Kasmina needs the run's signing key to verify commands (signing_key=...)")
    config = context.config
    security = config.get(SecurityOptions) if config is not None else SecurityOptions()
    selection = config.get(UrzaSelection) if config is not None else UrzaSelection()
    verifier = CommandVerifier(
        context.signing_key,
        freshness_window_ms=security.freshness_window_ms,
        max_future_skew_ms=security.max_future_skew_ms,
        nonce_capacity=security.nonce_capacity,
    )
    return KasminaSeedExecutor(
        store=store,
        catalogs=context.services.get("catalogs", []),
        verifier=verifier,
        options=context.options,
        allowed_tiers=selection.allowed_tiers,
        bus=context.bus,
        training_run_id=str(context.services.get("training_run_id", "")),
    )


@hookimpl
def esper_tolaria_seed_executors() -> Iterator[SeedExecutorSpec]:
    yield SeedExecutorSpec(
        name="kasmina",
        factory=build_kasmina,
        options=KasminaOptions,
        description="Seed slots in any PyTorch host: lifecycle, gates G0-G5, gradient isolation, blending.",
    )
