"""What new units at a width slot would do, from the host's own statistics: the predicted loss decrease by width, and
an initialisation that starts the new units where the loss wants them.

At a width slot the seed adds ``grow_out(hidden(a))`` to the pre-activation ``z`` it writes, ``a`` being the
activation it reads. On the probe batch Kasmina has ``a`` and the per-sample gradient ``g = dl_i/dz`` at the write
point. Around the current host, a quadratic model of each sample's loss with unit curvature,
``l_i(z + d) ~ l_i + g_i.d + |d|^2 / 2``, is minimised over updates ``d = W x`` linear in features ``x`` of ``a`` by
``W = -E[g x^T] E[x x^T]^-1``, and the loss falls by ``|S^-1/2 M|_F^2 / 2`` with ``S = E[x x^T]``, ``M = E[x g^T]``.
Restricted to rank ``k`` (``k`` new units), the best update keeps the ``k`` largest singular values ``s_i`` of
``S^-1/2 M``, and the loss falls by ``sum_{i<=k} s_i^2 / 2`` (TINY, Verbockhaven et al. 2024; see
GROWTH-METHODS.md). These are first-order predictions on one batch: they rank slots and widths against each other,
they are not promises.

- :func:`predicted_decrease`: the predicted decrease for each candidate width, with ``x`` the read activation itself
  (vectors, tokens) or its local patches (feature maps, pooled to the written resolution): what a policy weighs
  against a width's parameter cost.
- :func:`initialise`: before a width seed starts TRAINING. For seeds that read vectors or tokens, ``grow_in`` and
  ``grow_out`` are set to the rank-``k`` solution, each direction as a pair of units with opposite signs, so that
  ``act(u) - act(-u) = u`` (exact for ReLU and GELU) realises the linear update; for seeds that read feature maps,
  ``grow_in`` keeps its random start and ``grow_out`` is the least-squares fit of ``-g`` on the resulting features.
  Either way a line search over a scale of ``grow_out`` on the probe batch (the seed at full strength) picks how
  much of it to keep; a scale of 0, a non-finite statistic or a zero gradient leave the zero start, and say why.
- ``method="gradmax"`` (GradMax, Evci et al. 2022), for seeds that read vectors or tokens: the new units' incoming
  weights start at zero and their outgoing weights at the ``k`` leading left singular vectors of ``E[g a^T]``
  (orthonormal columns), which maximises the norm of the incoming weights' first gradient, ``W_out^T E[g a^T]``.
  GradMax assumes ``act'(0) = 1``; PyTorch's ReLU has derivative 0 at 0, so the units' biases start at
  :data:`GRADMAX_BIAS` (their output, ``W_out`` times it, is a negligible constant). It predicts nothing itself: the
  reported decrease is TINY's for the same width. Seeds that read feature maps use the least-squares fit.

Nothing here runs per batch: statistics come from the probe pass of a decision point, initialisation happens once
per germination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import attrs
import torch
from torch import nn
from torch.nn import functional

from esper_core.leyline import SlotKind
from esper_core.protocols import SlotShape

CONV, VECTOR, SEQUENCE = SlotKind.SLOT_KIND_CONV2D, SlotKind.SLOT_KIND_VECTOR, SlotKind.SLOT_KIND_SEQUENCE
#: Widths whose predicted decrease each DORMANT width slot reports.
CANDIDATE_WIDTHS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
#: Ridge added to ``S`` (relative to its mean diagonal): features that never vary are not inverted.
RIDGE = 1e-3
#: Scales of ``grow_out`` tried by the line search (1 is the quadratic model's own step).
SCALES: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0, 1.5)
#: Features of a local patch, per read channel, for feature maps (a 3x3 neighbourhood).
PATCH = 3
#: GradMax: the new units' starting bias, so that ReLU passes their incoming weights' gradient (see above).
GRADMAX_BIAS = 1e-3
#: How a width seed may start from the statistics (``kasmina.width_init``, besides "zero").
METHODS = ("statistics", "gradmax")


@attrs.frozen
class Moments:
    """``S = E[x x^T]`` and ``M = E[x g^T]`` of one slot on the probe batch (float64)."""

    covariance: torch.Tensor
    cross: torch.Tensor
    samples: int


def features(read: torch.Tensor, read_kind: SlotKind.ValueType, write: SlotShape) -> torch.Tensor:
    """``x``: one row per position the written activation has, the read features that bear on it."""
    if read_kind == CONV:
        patches = functional.unfold(read, PATCH, padding=PATCH // 2)  # (N, C*9, H*W)
        n, width, _ = patches.shape
        maps = patches.view(n, width, *read.shape[2:])
        if write.kind == CONV:
            pooled = functional.adaptive_avg_pool2d(maps, (write.shape[1], write.shape[2]))
            return pooled.flatten(2).transpose(1, 2).reshape(-1, width)
        return maps.mean(dim=(2, 3))
    if read_kind == SEQUENCE and write.kind == SEQUENCE:
        return read.reshape(-1, read.shape[-1])
    return read.reshape(read.shape[0], -1)


def targets(gradient: torch.Tensor, write: SlotShape) -> torch.Tensor:
    """``g``: one row per position of the written activation, matching :func:`features`."""
    if write.kind == CONV:
        return gradient.flatten(2).transpose(1, 2).reshape(-1, gradient.shape[1])
    return gradient.reshape(-1, gradient.shape[-1])


def moments(read: torch.Tensor, gradient: torch.Tensor, slot: SlotShape) -> Moments | None:
    """The slot's moments from the read activation and the per-sample gradient at the write point; ``None`` when
    they hold a non-finite value or the rows do not line up (a host whose positions do not match)."""
    x = features(read.detach().double(), slot.read_kind, slot)
    y = targets(gradient.detach().double(), slot)
    if x.shape[0] != y.shape[0] or not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return None
    rows = x.shape[0]
    return Moments(x.T @ x / rows, x.T @ y / rows, rows)


def _whitened(found: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """``S^-1/2 M`` and ``S^-1/2`` (with a small ridge)."""
    covariance = found.covariance
    scale = float(covariance.diagonal().mean().clamp(min=1e-12))
    values, vectors = torch.linalg.eigh(covariance + RIDGE * scale * torch.eye(len(covariance), dtype=torch.float64))
    inverse_root = vectors @ torch.diag(values.clamp(min=1e-12).rsqrt()) @ vectors.T
    return inverse_root @ found.cross, inverse_root


def predicted_decrease(found: Moments, widths: Sequence[int] = CANDIDATE_WIDTHS) -> list[float]:
    """The quadratic model's loss decrease with ``k`` new units, for each ``k`` in ``widths`` (cumulative)."""
    whitened, _ = _whitened(found)
    values = torch.linalg.svdvals(whitened).pow(2).div(2)
    totals = torch.cumsum(values, dim=0).tolist()
    return [float(totals[min(width, len(totals)) - 1]) if totals else 0.0 for width in widths]


@attrs.frozen
class Initialised:
    """What :func:`initialise` did, for the germination's event."""

    method: str
    scale: float
    predicted_decrease: float
    reason: str = ""

    def describe(self) -> str:
        if self.method == "zero":
            return f"zero start ({self.reason})" if self.reason else "zero start"
        return (
            f"initialised from the host's statistics ({self.method}, predicted loss decrease "
            f"{self.predicted_decrease:.3g} on the probe batch, scale {self.scale:g})"
        )


def is_width_seed(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("grow_in", "grow_out", "hidden"))


def initialise(
    seed: nn.Module,
    slot: SlotShape,
    read: torch.Tensor,
    gradient: torch.Tensor,
    probe_loss: Any,
    method: str = "statistics",
) -> Initialised:
    """Set a width seed's weights from the statistics (see the module's docstring); keep the zero start when that
    is all the statistics support. ``probe_loss(scale)`` is the probe batch's loss with the seed's ``grow_out``
    scaled by ``scale`` and the seed at full strength. ``method``: "statistics" (TINY / least squares) or
    "gradmax"."""
    if method not in METHODS:
        raise ValueError(f"unknown width initialisation {method!r}: choose one of {', '.join(METHODS)} (or zero)")
    if not is_width_seed(seed):
        return Initialised("zero", 0.0, 0.0, "the blueprint has no grow_in/grow_out/hidden structure")
    if not (torch.isfinite(read).all() and torch.isfinite(gradient).all()):
        return Initialised("zero", 0.0, 0.0, "the probe batch's activations or gradients are not finite")
    if float(gradient.abs().sum()) == 0.0:
        return Initialised("zero", 0.0, 0.0, "the loss's gradient at the write point is zero")
    grow_in, grow_out = cast(nn.Module, seed.grow_in), cast(nn.Module, seed.grow_out)
    saved = {name: tensor.detach().clone() for name, tensor in seed.state_dict().items()}
    linear = isinstance(grow_in, nn.Linear) and isinstance(grow_out, nn.Linear)
    with torch.no_grad():
        if linear:
            found = moments(read, gradient, slot)
            if found is None:
                return Initialised("zero", 0.0, 0.0, "the statistics are not usable")
            if method == "gradmax":
                return _gradmax(cast(nn.Linear, grow_in), cast(nn.Linear, grow_out), found)
            used, decrease = "tiny", _paired_linear(cast(nn.Linear, grow_in), cast(nn.Linear, grow_out), found)
        else:
            used = "least squares" if method == "statistics" else "least squares; gradmax needs a vector read"
            decrease = _fit_outgoing(seed, grow_out, read, gradient)
        if not math.isfinite(decrease):
            seed.load_state_dict(saved)
            return Initialised("zero", 0.0, 0.0, "the fit is not finite")
        fitted = {name: tensor.detach().clone() for name, tensor in grow_out.state_dict().items()}
        losses = {}
        for scale in SCALES:
            for name, tensor in grow_out.state_dict().items():
                tensor.copy_(fitted[name] * scale)
            losses[scale] = float(probe_loss())
        best = min(SCALES, key=lambda scale: (losses[scale], scale))
        if best == 0.0 or not math.isfinite(losses[best]):
            seed.load_state_dict(saved)
            return Initialised("zero", 0.0, decrease, "no scale of the fit lowered the probe loss")
        for name, tensor in grow_out.state_dict().items():
            tensor.copy_(fitted[name] * best)
    return Initialised(used, best, decrease)


def _gradmax(grow_in: nn.Linear, grow_out: nn.Linear, found: Moments) -> Initialised:
    """GradMax: zero incoming weights, outgoing weights along the leading left singular vectors of ``E[g a^T]``."""
    width = grow_in.out_features
    u, _values, _vt = torch.linalg.svd(found.cross.T, full_matrices=False)  # E[g a^T]: (D_write, D_read)
    k = min(width, u.shape[1])
    dtype = grow_out.weight.dtype
    grow_in.weight.zero_()
    if grow_in.bias is not None:
        grow_in.bias.fill_(GRADMAX_BIAS)
    grow_out.weight.zero_()
    grow_out.weight[:, :k] = u[:, :k].to(dtype)
    if grow_out.bias is not None:
        grow_out.bias.zero_()
    # Units beyond the rank of E[g a^T] have no direction to take: GradMax gives them none, so they start (almost)
    # without gradient. Said in the event rather than hidden.
    spare = f"; {width - k} of {width} units beyond the statistics' rank start idle" if width > k else ""
    return Initialised("gradmax" + spare, 1.0, predicted_decrease(found, widths=(width,))[0])


def _paired_linear(grow_in: nn.Linear, grow_out: nn.Linear, found: Moments) -> float:
    """Rank ``width // 2`` TINY solution as pairs of units ``(u, -u)`` with outgoing ``(v, -v)``: ``v * u`` exactly."""
    width = grow_in.out_features
    pairs = width // 2
    if pairs == 0:
        return 0.0
    whitened, inverse_root = _whitened(found)
    u, values, vt = torch.linalg.svd(whitened, full_matrices=False)
    k = min(pairs, len(values))
    root = values[:k].sqrt()
    incoming = (root[:, None] * u[:, :k].T) @ inverse_root  # (k, D_read): the new units' directions
    outgoing = -(vt[:k].T * root[None, :])  # (D_write, k)
    dtype = grow_in.weight.dtype
    grow_in.weight.zero_()
    grow_in.bias.zero_()
    grow_out.weight.zero_()
    grow_out.bias.zero_()
    grow_in.weight[:k] = incoming.to(dtype)
    grow_in.weight[pairs : pairs + k] = -incoming.to(dtype)
    grow_out.weight[:, :k] = outgoing.to(dtype)
    grow_out.weight[:, pairs : pairs + k] = -outgoing.to(dtype)
    return float(values[:k].pow(2).sum() / 2)


def _fit_outgoing(seed: nn.Module, grow_out: nn.Module, read: torch.Tensor, gradient: torch.Tensor) -> float:
    """``grow_out`` as the ridge least-squares fit of ``-g`` on what it reads (its own receptive field)."""
    hidden: torch.Tensor = seed.hidden(read.detach()).detach()  # type: ignore[operator]
    if isinstance(grow_out, nn.Conv2d):
        kernel = grow_out.kernel_size
        padding = cast(tuple[int, ...], grow_out.padding)
        columns = functional.unfold(hidden, kernel, padding=padding)  # (N, w*kh*kw, H*W)
        x = columns.transpose(1, 2).reshape(-1, columns.shape[1]).double()
        y = gradient.flatten(2).transpose(1, 2).reshape(-1, gradient.shape[1]).double()
    else:
        x = hidden.reshape(-1, hidden.shape[-1]).double()
        y = gradient.reshape(-1, gradient.shape[-1]).double()
    if x.shape[0] != y.shape[0]:
        return float("nan")
    found = Moments(x.T @ x / x.shape[0], x.T @ y / x.shape[0], x.shape[0])
    covariance = found.covariance
    scale = float(covariance.diagonal().mean().clamp(min=1e-12))
    regularised = covariance + RIDGE * scale * torch.eye(len(covariance), dtype=torch.float64)
    solution = torch.linalg.solve(regularised, found.cross)  # (features, D_write)
    weight = -solution.T  # (D_write, features)
    decrease = float((found.cross * solution).sum() / 2)
    out_weight = cast(torch.Tensor, grow_out.weight)
    out_weight.copy_(weight.reshape(out_weight.shape).to(out_weight.dtype))
    bias = cast(torch.Tensor | None, grow_out.bias)
    if bias is not None:
        bias.zero_()
    return decrease
