"""Gates G0-G5: the measurements a seed must pass to enter each stage.

Every check yields a Leyline ``GateResult`` naming the gate, the check, the measured value and the threshold, so a
failure says exactly what was wrong. A gate passes when all its checks pass; a failed gate culls the seed (or, for
G0, refuses the germination). The same health checks run as a *watchdog* at every decision point for seeds in the
forward pass, so a seed that turns bad later (NaN outputs, exploding gradients, broken isolation) is culled too.

=====  =====================  =====================================================================================
gate   entering               checks
=====  =====================  =====================================================================================
G0     GERMINATED             blueprint known and allowed; slot kind supported; parameters within bounds; parameter
                              budget; the artifact fetched; probe output shape, dtype and finiteness
G1     TRAINING               numerical isolation (host gradients equal those without the seed; host output unchanged);
                              seed gradients finite, non-zero and bounded
G2     BLENDING               seed loss measured and not regressed since training began; no spike in the host's
                              validation loss; output and gradients still healthy
G3     SHADOWING              output finite, shape, dtype and device right; contribution at least the threshold
                              (within ``contribution_noise_z`` standard errors)
G4     PROBATIONARY           validation loss not worse than at germination beyond tolerance; the counted FLOPs a
                              seed adds to a training step within budget (and, if set, the step's time)
G5     DORMANT (reset)        seed module, hook and optimizer group gone
=====  =====================  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from esper_core.leyline import BlueprintDescriptor, BlueprintTier, GateResult, growth, lifecycle
from esper_core.leyline.lifecycle import Gate
from esper_kasmina import probes
from esper_kasmina.optimizer import SeedParameterGroups
from esper_kasmina.options import KasminaOptions
from esper_kasmina.probes import Probe
from esper_kasmina.slot import SeedSlot


def check(
    gate: Gate,
    name: str,
    passed: bool,
    measured: float | None = None,
    threshold: float | None = None,
    detail: str = "",
) -> GateResult:
    result = GateResult(gate=gate, passed=passed, check=name, detail=detail)
    if measured is not None:
        result.measured = float(measured)
    if threshold is not None:
        result.threshold = float(threshold)
    return result


def passed(results: Sequence[GateResult]) -> bool:
    return all(result.passed for result in results)


def first_failure(results: Sequence[GateResult]) -> GateResult | None:
    return next((result for result in results if not result.passed), None)


def describe(result: GateResult) -> str:
    text = f"{lifecycle.gate_name(result.gate)}/{result.check}"
    if result.HasField("measured"):
        text += f": measured {result.measured:.6g}"
    if result.HasField("threshold"):
        text += f", threshold {result.threshold:.6g}"
    return text + (f" ({result.detail})" if result.detail else "")


class GateChecks:
    """Runs the gates of one host. Subclass and override a method to change a gate (tests inject outcomes so)."""

    def __init__(self, options: KasminaOptions) -> None:
        self.options = options

    # -- G0 ---------------------------------------------------------------------------------------------------
    def admission(
        self,
        slot: SeedSlot,
        descriptor: BlueprintDescriptor | None,
        blueprint_id: str,
        parameters: Mapping[str, float],
        allowed_tiers: Sequence[str],
        parameter_count: int | None,
        host_parameter_count: int,
    ) -> list[GateResult]:
        """The checks of G0 that need no module: known, allowed, kind, bounds, budget."""
        g0 = lifecycle.G0
        if descriptor is None:
            return [check(g0, "blueprint_known", False, detail=f"no installed catalog offers {blueprint_id!r}")]
        results = [check(g0, "blueprint_known", True, detail=f"{descriptor.name} from {descriptor.catalog}")]
        tier = BlueprintTier.Name(descriptor.tier).removeprefix("BLUEPRINT_TIER_")
        quarantine = descriptor.quarantine_only and "HIGH_RISK" not in allowed_tiers
        allowed = tier in allowed_tiers and not quarantine
        results.append(
            check(
                g0, "tier_allowed", allowed, descriptor.risk, detail=f"tier {tier}; allowed: {', '.join(allowed_tiers)}"
            )
        )
        misfit = growth.misfit(descriptor, slot.shape())
        results.append(check(g0, "slot_kind", misfit is None, detail=misfit or f"it grows in {slot.slot_id!r}"))
        for name, value in parameters.items():
            bounds = descriptor.allowed_parameters.get(name)
            if bounds is None:
                known = ", ".join(sorted(descriptor.allowed_parameters)) or "none"
                results.append(
                    check(g0, "parameter_bounds", False, value, detail=f"unknown parameter {name!r}; known: {known}")
                )
                continue
            inside = bounds.min_value <= value <= bounds.max_value
            detail = f"{name} in [{bounds.min_value:g}, {bounds.max_value:g}]"
            results.append(
                check(
                    g0,
                    "parameter_bounds",
                    inside,
                    value,
                    bounds.max_value if value > bounds.max_value else bounds.min_value,
                    detail,
                )
            )
        if parameter_count is not None and self.options.max_seed_parameter_fraction > 0 and host_parameter_count > 0:
            budget = self.options.max_seed_parameter_fraction * host_parameter_count
            results.append(
                check(g0, "parameter_budget", parameter_count <= budget, parameter_count, budget, "seed parameters")
            )
        return results

    def probe_output(self, model: nn.Module, slot: SeedSlot, module: nn.Module, probe: Probe) -> list[GateResult]:
        """The checks of G0 on the built module: it maps the host's real activation (the one it reads) to the shape
        of the activation it writes, finitely."""
        g0 = lifecycle.G0
        host_activation = probes.activation(model, slot, probe)
        module.eval()
        try:
            with torch.no_grad():
                output = module(host_activation)
        except Exception as error:  # noqa: BLE001 - any failure of the seed's forward is a failed check
            return [check(g0, "probe_forward", False, detail=f"{type(error).__name__}: {error}")]
        finally:
            module.train()
        expected = (host_activation.shape[0], *slot.slot_shape)
        same_shape = tuple(output.shape) == expected
        return [
            check(g0, "output_shape", same_shape, detail=f"{tuple(output.shape)} for {expected}"),
            check(g0, "output_dtype", output.dtype == host_activation.dtype, detail=str(output.dtype)),
            check(
                g0, "finite_output", bool(torch.isfinite(output).all()), float(torch.isfinite(output).float().mean())
            ),
        ]

    # -- health (G1 gradient checks, G3 interface checks; also the watchdog) ----------------------------------
    def gradient_health(self, health: probes.SeedHealth, gate: Gate) -> list[GateResult]:
        o = self.options
        norm = health.gradient_norm
        return [
            check(gate, "seed_gradient_finite", health.gradients_finite),
            check(gate, "seed_gradient_nonzero", norm >= o.min_seed_gradient_norm, norm, o.min_seed_gradient_norm),
            check(gate, "seed_gradient_bounded", norm <= o.max_seed_gradient_norm, norm, o.max_seed_gradient_norm),
        ]

    def interface(self, health: probes.SeedHealth, gate: Gate) -> list[GateResult]:
        return [
            check(gate, "finite_output", health.output_finite),
            check(gate, "output_shape", health.output_shape == health.expected_shape, detail=str(health.output_shape)),
            check(gate, "output_dtype", health.output_dtype == health.input_dtype, detail=str(health.output_dtype)),
        ]

    def isolation(
        self, model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe, gate: Gate
    ) -> list[GateResult]:
        report = probes.isolation(model, slot, host, probe)
        tolerance = self.options.isolation_tolerance
        loss_scale = max(1.0, abs(report.loss))
        return [
            check(
                gate,
                "isolation",
                report.relative_difference <= tolerance,
                report.relative_difference,
                tolerance,
                "relative difference of host gradients with and without the seed",
            ),
            check(
                gate,
                "host_output_unchanged",
                report.loss_difference <= tolerance * loss_scale,
                report.loss_difference,
                tolerance * loss_scale,
                "probe loss with and without the seed",
            ),
        ]

    def training_entry(
        self, model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe
    ) -> list[GateResult]:
        """G1, with the slot already behaving as TRAINING (see probes.as_stage)."""
        health = probes.seed_health(model, slot, probe)
        return [
            *self.interface(health, lifecycle.G1),
            *self.gradient_health(health, lifecycle.G1),
            *self.isolation(model, slot, host, probe, lifecycle.G1),
        ]

    # -- G2, G3, G4 -------------------------------------------------------------------------------------------
    def blending_entry(
        self, model: nn.Module, slot: SeedSlot, probe: Probe, val_loss: float | None, previous_val_loss: float | None
    ) -> list[GateResult]:
        """G2: the seed's own loss is not getting worse, and the host is not in a loss spike. Whether the seed is
        promising enough to blend in is the controller's judgement (its counterfactual contribution is in the
        seed's state); blending ramps alpha with real feedback, so a seed can still adapt while it blends."""
        g2, o, record = lifecycle.G2, self.options, slot.record
        health = probes.seed_health(model, slot, probe)
        results = self.interface(health, g2) + self.gradient_health(health, g2)
        if record.seed_loss is None or record.seed_loss_at_training_start is None:
            return [*results, check(g2, "seed_loss_measured", False, detail="no validation measurement while TRAINING")]
        start = record.seed_loss_at_training_start
        regression = record.seed_loss / start - 1.0 if start > 0 else 0.0
        results.append(
            check(g2, "seed_loss_trend", regression <= o.max_seed_loss_regression, regression,
                  o.max_seed_loss_regression, "validation loss at alpha 1 now over when training began, minus 1")
        )  # fmt: skip
        if val_loss is not None and previous_val_loss is not None and previous_val_loss > 0:
            spike = val_loss / previous_val_loss - 1.0
            results.append(
                check(g2, "no_loss_spike", spike <= o.max_loss_spike, spike, o.max_loss_spike,
                      "validation loss now over at the previous decision point, minus 1")
            )  # fmt: skip
        return results

    def shadowing_entry(self, model: nn.Module, slot: SeedSlot, probe: Probe) -> list[GateResult]:
        g3 = lifecycle.G3
        results = self.interface(probes.seed_health(model, slot, probe), g3)
        contribution = slot.record.contribution
        if contribution is None:
            return [*results, check(g3, "contribution", False, detail="no contribution measured while BLENDING")]
        minimum, detail = self.options.min_contribution, "validation loss without the seed minus with it at alpha 1"
        stderr = slot.record.contribution_stderr
        if stderr is not None and self.options.contribution_noise_z > 0:
            minimum -= self.options.contribution_noise_z * stderr
            detail += f" (threshold lowered by {self.options.contribution_noise_z:g} standard errors of {stderr:.3g})"
        return [*results, check(g3, "contribution", contribution >= minimum, contribution, minimum, detail)]

    def probation_entry(
        self, model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe, val_loss: float | None
    ) -> list[GateResult]:
        """G4: the seed has not made validation worse since it germinated, and it does not make training much more
        expensive. The cost is counted (FLOPs of a training step on the probe batch, with the seed training jointly
        as it will from now on, over without it), so the verdict never depends on how busy the machine is; an
        absolute time limit (``max_step_ms``) is there for who wants one, and times.

        ``host``: every other parameter a training step trains (the host's, and the other seeds')."""
        g4, o = lifecycle.G4, self.options
        results = []
        baseline = slot.record.val_loss_at_germination
        if val_loss is None or baseline is None:
            results.append(check(g4, "regression", False, detail="no validation loss from before germination and now"))
        else:
            regression = val_loss / baseline - 1.0 if baseline > 0 else 0.0
            results.append(
                check(
                    g4,
                    "regression",
                    regression <= o.max_regression,
                    regression,
                    o.max_regression,
                    "validation loss now over at germination, minus 1",
                )
            )
        cost = probes.step_cost(model, slot, host, probe)
        results.append(
            check(
                g4,
                "step_overhead",
                cost.overhead <= o.max_step_overhead,
                cost.overhead,
                o.max_step_overhead,
                f"counted FLOPs of a training step with the seed over without it, minus 1 "
                f"({cost.with_seed.per_sample():,.0f} over {cost.without.per_sample():,.0f} per probe sample)",
            )
        )
        if o.max_step_ms > 0:
            milliseconds = probes.step_milliseconds(model, slot, host, probe)
            results.append(
                check(
                    g4,
                    "step_time",
                    milliseconds <= o.max_step_ms,
                    milliseconds,
                    o.max_step_ms,
                    "median time of a training step on the probe batch with the seed, in ms",
                )
            )
        return results

    # -- G5 ---------------------------------------------------------------------------------------------------
    def reset(self, slot: SeedSlot, groups: SeedParameterGroups) -> list[GateResult]:
        g5 = lifecycle.G5
        return [
            check(g5, "seed_removed", slot.seed is None),
            check(g5, "hook_removed", not slot.hooked),
            check(g5, "optimizer_clean", not groups.has(slot.slot_id)),
        ]

    # -- watchdog ---------------------------------------------------------------------------------------------
    def watchdog(
        self, model: nn.Module, slot: SeedSlot, host: Sequence[nn.Parameter], probe: Probe
    ) -> list[GateResult]:
        """Health of a seed already in the forward pass: the checks of the gate it passed to get there."""
        health = probes.seed_health(model, slot, probe)
        results = self.interface(health, lifecycle.G3) + self.gradient_health(health, lifecycle.G1)
        if slot.stage == lifecycle.TRAINING:
            results += self.isolation(model, slot, host, probe, lifecycle.G1)
        return results
