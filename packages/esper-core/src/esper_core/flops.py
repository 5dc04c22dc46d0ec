"""Counted FLOPs of a model's forward and backward passes, for compute budgets (Kasmina's G4) and accounting (Tolaria).

Counting rather than timing makes a number that depends on the model and the batch only, never on how busy the
machine is. The counter is PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode`: it sees every ATen operator
that runs and adds the FLOPs of those it has a formula for, a multiply-add being 2 FLOPs:

- counted: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``: linear layers, ``matmul``, ``einsum``),
  convolutions forward and backward, and scaled dot-product attention (the CUDA kernels natively; the CPU kernel
  through :data:`EXTRA_FORMULAS` below);
- not counted (0): normalization (batch, layer, group norm), activations, pooling, dropout, element-wise arithmetic
  (biases, residual sums, a seed's blend), softmax outside attention, embeddings (a lookup) and the loss. In the
  models Esper grows these are a few percent of the counted work; custom kernels that bypass ATen are not seen.

The counted operators' FLOPs are proportional to the batch size, so a count on one batch, divided by its size,
gives an exact per-sample cost: callers count once per configuration of the model, on a few samples
(:data:`COUNT_SAMPLES`: the counter's own overhead, a Python call per operator, dwarfs their compute), and multiply;
never per batch.

Passes are counted in eval mode with ``torch.autograd.grad`` (see :func:`count_training_step`): they move no
batch-norm statistics, draw no dropout masks, touch no ``.grad`` and advance no counter that a training-mode
forward would, so counting changes nothing a run computes afterwards. The counted operators are the same in both
modes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = [
    "COUNT_SAMPLES",
    "EXTRA_FORMULAS",
    "StepFlops",
    "count_flops",
    "count_step",
    "count_training_step",
    "evaluation_mode",
    "first",
    "flop_counter",
]

#: How many samples a pass is counted on. Any batch gives the exact per-sample cost; a small one keeps a count
#: (about 10 ms on a small CNN, most of it the counter's per-operator overhead) cheap.
COUNT_SAMPLES = 8


def _cpu_attention(
    query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *_: Any, **__: Any
) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]


def _cpu_attention_backward(
    grad_out_shape: Sequence[int],
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *_: Any,
    **__: Any,
) -> int:
    return int(sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]


#: Operators PyTorch's counter has no formula for (yet) that seeds use: scaled dot-product attention's CPU kernel
#: (the attention blueprints call ``scaled_dot_product_attention``; on CUDA it dispatches to kernels that are
#: counted already). Counted with PyTorch's own attention formulas.
EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def flop_counter() -> FlopCounterMode:
    """A counter to use as a context manager (``get_total_flops()`` reads it, also while it runs), with the
    formulas of :data:`EXTRA_FORMULAS` and no printed table."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)


def count_flops(function: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``function`` and return its result with the FLOPs it ran (see the module's notes for what counts)."""
    with flop_counter() as counter:
        result = function()
    return result, int(counter.get_total_flops())


@attrs.frozen
class StepFlops:
    """The counted FLOPs of one forward and backward pass over ``samples`` samples."""

    forward: int
    backward: int
    samples: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def per_sample(self) -> float:
        """Exact for the counted operators, whose cost is proportional to the batch size."""
        return self.total / self.samples if self.samples else 0.0


def _tensors(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [tensor for item in outputs for tensor in _tensors(item)]
    if isinstance(outputs, dict):
        return [tensor for item in outputs.values() for tensor in _tensors(item)]
    return []


def count_step(forward: Callable[[], Any], parameters: Sequence[torch.Tensor], samples: int) -> StepFlops:
    """Count ``forward()`` and the backward pass that gives the gradients of ``parameters``.

    The backward pass starts from a gradient of ones on every output tensor that carries a gradient: the same
    operators run as under any loss (the loss's own arithmetic is not counted anyway), and no loss function is
    called (a task's loss may have side effects). Only parameters that require a gradient are differentiated, as
    a training step's ``backward()`` would; autograd skips what none of them needs (the input's own gradient).
    """
    outputs, forward_flops = count_flops(forward)
    wanted = [p for p in parameters if p.requires_grad]
    roots = [tensor for tensor in _tensors(outputs) if tensor.requires_grad]
    backward_flops = 0
    if wanted and roots:

        def backward() -> None:
            torch.autograd.grad(
                roots, wanted, grad_outputs=[torch.ones_like(root) for root in roots], allow_unused=True
            )

        _, backward_flops = count_flops(backward)
    return StepFlops(forward=forward_flops, backward=backward_flops, samples=samples)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the duration, every submodule's mode restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def first(value: Any, samples: int) -> Any:
    """The first ``samples`` samples of a batch: a tensor, or a tuple or list of them (other values as they are)."""
    if isinstance(value, torch.Tensor):
        return value[:samples]
    if isinstance(value, (tuple, list)):
        return type(value)(first(item, samples) for item in value)
    return value


def _batch_size(inputs: Any) -> int:
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return int(first.shape[0])


def count_training_step(model: nn.Module, inputs: Any, parameters: Sequence[torch.Tensor]) -> StepFlops:
    """The counted FLOPs of a training step's forward and backward on ``inputs`` (the optimizer's update is not
    included: it is element-wise), leaving no trace in the model (eval mode, the random number generators
    restored, no ``.grad`` touched)."""
    devices = sorted({p.device.index or 0 for p in parameters if p.device.type == "cuda"})

    def forward() -> Any:
        return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)

    with torch.random.fork_rng(devices=devices), evaluation_mode(model), torch.enable_grad():
        return count_step(forward, parameters, _batch_size(inputs))
