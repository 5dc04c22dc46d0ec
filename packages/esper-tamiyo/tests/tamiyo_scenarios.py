"""Building state packets and blueprint descriptors for Tamiyo's tests (imported by them; on pytest's pythonpath)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from esper_core.leyline import (
    BlueprintDescriptor,
    BlueprintParameterBounds,
    BlueprintTier,
    SeedState,
    SlotKind,
    SystemStatePacket,
    TrainingMetrics,
    lifecycle,
)
from esper_core.protocols import SlotShape

CONV, VECTOR = SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR


def blueprint(
    blueprint_id: str,
    *,
    kinds: Sequence[int] = (CONV,),
    risk: float = 0.2,
    tier: int = BlueprintTier.BLUEPRINT_TIER_SAFE,
    quarantine: bool = False,
    width: tuple[float, float, float] = (1, 8, 4),
) -> BlueprintDescriptor:
    low, high, default = width
    return BlueprintDescriptor(
        blueprint_id=blueprint_id,
        name=f"bp_{blueprint_id.lower()}",
        tier=tier,
        risk=risk,
        slot_kinds=list(kinds),
        quarantine_only=quarantine,
        catalog="scenario",
        allowed_parameters={
            "width": BlueprintParameterBounds(min_value=low, max_value=high, default_value=default, integer=True)
        },
    )


class CountingCatalog:
    """Parameter counts without torch: width x channels x 10 for BP1xx, x 100 for BP2xx."""

    name = "scenario"

    def __init__(self, descriptors: Sequence[BlueprintDescriptor]) -> None:
        self._descriptors = list(descriptors)

    def descriptors(self) -> list[BlueprintDescriptor]:
        return self._descriptors

    def build(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> Any:
        raise AssertionError("scenario tests never build modules")

    def parameter_count(self, blueprint_id: str, slot: SlotShape, parameters: Mapping[str, float]) -> int:
        if blueprint_id not in {d.blueprint_id for d in self._descriptors}:
            raise KeyError(blueprint_id)
        factor = 100 if blueprint_id.startswith("BP2") else 10
        return int(parameters.get("width", 4) * slot.shape[0] * factor)


def slot(
    slot_id: str,
    stage: int = lifecycle.DORMANT,
    *,
    kind: int = CONV,
    shape: Sequence[int] = (16, 14, 14),
    depth: int = 0,
    saliency: tuple[float, float] = (1.0, 1.0),
    **fields: Any,
) -> SeedState:
    state = SeedState(slot_id=slot_id, stage=stage, slot_kind=kind, slot_shape=list(shape), layer_depth=depth)
    state.host_gradient_norm, state.activation_rms = saliency
    if stage not in (lifecycle.DORMANT, lifecycle.EMBARGOED, lifecycle.RESETTING):
        state.seed_id = f"{slot_id}#1"
        state.blueprint_id = fields.pop("blueprint_id", "BP101")
        state.parameter_count = fields.pop("parameter_count", 640)
    for name, value in fields.items():
        if isinstance(value, (list, tuple)):  # a repeated field: filled, not assigned
            getattr(state, name).extend(value)
        else:
            setattr(state, name, value)
    return state


def packet(epoch: int, val_loss: float, seeds: Sequence[SeedState], **metrics: Any) -> SystemStatePacket:
    training = TrainingMetrics(
        epoch=epoch, global_step=epoch * 100, val_loss=val_loss, parameter_count=metrics.pop("parameter_count", 20_000)
    )
    for name, value in metrics.items():
        setattr(training, name, value)
    state = SystemStatePacket(
        version=1,
        packet_id=f"run-{epoch}",
        training_run_id="run",
        current_epoch=epoch,
        global_step=epoch * 100,
        metrics=training,
        seeds=list(seeds),
    )
    state.timestamp.GetCurrentTime()
    return state
