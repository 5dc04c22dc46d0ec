"""The ``[kasmina]`` configuration section: blending, embargo, seed optimization and every gate threshold."""

from __future__ import annotations

from typing import Literal

import attrs

from esper_core.config import section
from esper_core.config.validators import not_negative, positive


@section("kasmina")
@attrs.frozen
class KasminaOptions:
    # -- blending ---------------------------------------------------------------------------------------------
    #: How alpha ramps while BLENDING: "linear", "cosine" or "tanh" (the prototype's ramp).
    blend_schedule: Literal["linear", "cosine", "tanh"] = "tanh"
    #: Ramp length, in units of ``alpha_unit``; a command may set its own.
    blend_steps: int = attrs.field(default=300, validator=positive)
    #: "step": alpha advances at every training forward (optimizer step); "epoch": at every decision point.
    alpha_unit: Literal["step", "epoch"] = "step"

    # -- lifecycle --------------------------------------------------------------------------------------------
    #: Decision points a culled seed's slot waits before it may germinate again.
    embargo_epochs: int = attrs.field(default=2, validator=not_negative)

    # -- seed optimization ------------------------------------------------------------------------------------
    #: Learning rate of a seed's own parameter group; 0 uses the host's (first group's) learning rate.
    seed_learning_rate: float = attrs.field(default=0.0, validator=not_negative)
    seed_weight_decay: float = attrs.field(default=0.0, validator=not_negative)
    #: TRAINING: each sample's seed output is pulled towards zero with this weight (the curvature of a quadratic
    #: model of the loss), so straight-through training settles at a bounded step instead of overshooting. 0: off.
    training_curvature: float = attrs.field(default=1.0, validator=not_negative)
    #: How a width seed's new units start: "statistics" (fitted to the loss's gradient on the probe batch, TINY-style,
    #: then a line search over their scale; see esper_kasmina.growth_statistics), "gradmax" (zero incoming weights,
    #: outgoing weights that maximise their first gradient; seeds reading feature maps use the least-squares fit) or
    #: "zero" (the blueprint's own zero start). Either way the seed enters the host's output only through BLENDING.
    width_init: Literal["statistics", "gradmax", "zero"] = "statistics"

    # -- counterfactual measurement ---------------------------------------------------------------------------
    #: The variants that measure each seed's contribution inside the validation pass may add at most this many
    #: plain validation passes of counted FLOPs (0: no limit); beyond it they run on every k-th validation batch
    #: only (the validation metrics still use every batch). With a 9:1 training/validation split a training epoch
    #: costs some 20-27 validation passes, so 3 keeps the measurement under about 13 % of an epoch's compute. One
    #: seed in flight never reaches it on the efficacy experiment's CNN (1.8 passes at most); two seeds blending at
    #: once (3.7) are measured on every second batch: the same expected contribution, its standard error about
    #: 1.4 times larger (docs/kasmina.md).
    max_measurement_passes: float = attrs.field(default=3.0, validator=not_negative)

    # -- gates ------------------------------------------------------------------------------------------------
    #: G0: a seed may add at most this fraction of the host's parameter count (0 disables the check).
    max_seed_parameter_fraction: float = attrs.field(default=1.0, validator=not_negative)
    #: G1: host gradients with the seed in TRAINING must equal those without it within this relative difference.
    isolation_tolerance: float = attrs.field(default=1e-6, validator=not_negative)
    #: G1 and the watchdog: a seed's gradient norm on the probe batch must lie in [min, max].
    min_seed_gradient_norm: float = attrs.field(default=1e-12, validator=not_negative)
    max_seed_gradient_norm: float = attrs.field(default=1e3, validator=positive)
    #: G2: the validation loss with the seed at full strength may have worsened since the seed began training by at
    #: most this fraction...
    max_seed_loss_regression: float = attrs.field(default=0.02, validator=not_negative)
    #: G2: ...and the host's validation loss may have risen since the previous decision point by at most this.
    max_loss_spike: float = attrs.field(default=0.1, validator=not_negative)
    #: G3: the counterfactual contribution (loss without minus loss with the seed) must be at least this.
    min_contribution: float = 0.0
    #: G3: a contribution short of ``min_contribution`` by less than this many of its standard errors is noise, and
    #: passes (0: the bare threshold). A blended seed's contribution is often within noise of 0.
    contribution_noise_z: float = attrs.field(default=2.0, validator=not_negative)
    #: G4: validation loss may exceed its value at germination by at most this fraction.
    max_regression: float = attrs.field(default=0.02, validator=not_negative)
    #: G4: a training step with the seed may cost at most (1 + this) times as much as without it, in FLOPs counted
    #: on the probe batch (forward + backward, the seed training jointly as in PROBATIONARY). The default lets
    #: through the seed the Fashion-MNIST example grows (8 new channels in the first block of the bare 1,020-parameter
    #: CNN add 7.15 times the host's step: docs/kasmina.md) and refuses a seed an order of magnitude costlier than
    #: the model it joins. On a larger host, where a useful seed is a small part of the step, set it lower.
    max_step_overhead: float = attrs.field(default=8.0, validator=not_negative)
    #: G4: if above 0, a training step on the probe batch with the seed may take at most this many milliseconds
    #: (timed, median of 5: the verdict then depends on the machine and its load). 0: no time limit.
    max_step_ms: float = attrs.field(default=0.0, validator=not_negative)
