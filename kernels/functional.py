"""The public ops: one validation layer, then CUDA tensors run the Triton kernels, others the torch references.

Every op first runs its check from `mathforge.kernels.validation` (shapes, dtypes, devices, options), so
both paths accept and reject the same inputs with the same messages; the losses return fp32 on both
paths (also for fp64 input), compute their logits with autocast disabled, and the fused linear CE refuses
a second backward through a "mean"/"sum" loss on both paths (its Triton path scales the gradients it
computed in the forward in place). `use_triton` is the one place the path is chosen.

`MATHFORGE_CHECK=1` makes both losses validate targets first (one host sync) and raise
`mathforge.errors.DataError` on a target that is neither ignore_index nor in [0, V). Without it an
out-of-range target gives a NaN loss (Triton path) or a torch indexing error (reference path).
"""

from __future__ import annotations

import torch

from mathforge.kernels import reference
from mathforge.kernels._common import check_enabled, check_targets
from mathforge.kernels.cross_entropy import SECOND_BACKWARD as CE_SECOND_BACKWARD
from mathforge.kernels.cross_entropy import cross_entropy_triton
from mathforge.kernels.fused_linear_cross_entropy import SECOND_BACKWARD as FLCE_SECOND_BACKWARD
from mathforge.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy_triton
from mathforge.kernels.rms_norm import rms_norm_triton
from mathforge.kernels.rope import apply_rope_triton
from mathforge.kernels.swiglu import swiglu_triton
from mathforge.kernels.validation import (
    check_apply_rope,
    check_cross_entropy,
    check_fused_linear_cross_entropy,
    check_rms_norm,
    check_swiglu,
)

LossOut = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def use_triton(t: torch.Tensor) -> bool:
    """The path for an op whose first input is `t`: Triton for CUDA tensors, else the torch reference.
    (The contract tests patch this to run the Triton path on CPU under TRITON_INTERPRET=1.)"""
    return t.is_cuda


def _fp32(out: LossOut) -> LossOut:
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    """Losses are fp32 by contract: their matmuls and reductions run with autocast off for t's device."""
    return torch.autocast(t.device.type, enabled=False)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
) -> LossOut:
    """Cross-entropy of logits [N, V] against target [N] with label smoothing, z-loss and soft-capping;
    returns fp32 (a scalar, or [N] for reduction="none"). With `return_z_loss`, returns (loss, z_loss term):
    the z-loss part already included in `loss`, detached and reduced the same way (for logging).
    Semantics: `mathforge.kernels.reference`."""
    triton = use_triton(logits)
    if not triton:  # the Triton entry point checks its own inputs (once per call)
        check_cross_entropy(
            logits, target, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap
        )
    if check_enabled():
        check_targets(target, logits.shape[-1], ignore_index)
    kwargs = dict(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_z_loss=return_z_loss,
    )
    with _no_autocast(logits):
        if triton:
            out = _fp32(cross_entropy_triton(logits, target, **kwargs))
        else:
            out = _fp32(reference.cross_entropy(logits, target, **kwargs))
    # one contract on both paths: a "mean"/"sum" loss takes one backward (the Triton path scales its saved
    # gradient in place); "none" any number
    return out if reduction == "none" else _backward_once(out, CE_SECOND_BACKWARD)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
) -> LossOut:
    """`cross_entropy(hidden @ weight.T + bias, target, ...)` for hidden [N, H], weight [V, H] (one dtype); the
    logits are fp32 even under autocast. On CUDA the [N, V] logits are never materialised (token chunks,
    gradients computed during the forward, so a "mean"/"sum" loss takes one backward). `return_z_loss` as in
    `cross_entropy`."""
    triton = use_triton(hidden)
    if not triton:  # the Triton entry point checks its own inputs (once per call)
        check_fused_linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )
    if check_enabled():
        check_targets(target, weight.shape[0], ignore_index)
    kwargs = dict(
        bias=bias,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_z_loss=return_z_loss,
    )
    with _no_autocast(hidden):
        if triton:
            return _fp32(fused_linear_cross_entropy_triton(hidden, weight, target, **kwargs))
        out = _fp32(reference.fused_linear_cross_entropy(hidden, weight, target, **kwargs))
    if reduction == "none":  # the Triton path recomputes for "none": any number of backwards
        return out
    return _backward_once(out, FLCE_SECOND_BACKWARD)


def _backward_once(out: LossOut, message: str) -> LossOut:
    """The loss (and the z-loss term, which has no gradient) behind an identity that refuses a second backward."""
    if isinstance(out, tuple):
        return _BackwardOnce.apply(out[0], message), out[1]
    return _BackwardOnce.apply(out, message)


class _BackwardOnce(torch.autograd.Function):
    """Identity that refuses a second backward (raising `message`), as the Triton losses do for "mean"/"sum"."""

    @staticmethod
    def forward(ctx, loss, message):
        ctx.message = message
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        if getattr(ctx, "consumed", False):
            raise RuntimeError(ctx.message)
        ctx.consumed = True
        return grad, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """x / sqrt(mean(x², -1) + eps) · (offset + weight), in x's dtype; offset=1.0 is Gemma's (1 + w);
    weight=None: no affine (offset must be 0.0). weight is exactly [H] (x's last dim): no broadcasting."""
    if use_triton(x):
        return rms_norm_triton(x, weight, eps, offset)  # checks its own inputs
    check_rms_norm(x, weight, eps, offset)
    return reference.rms_norm(x, weight, eps, offset)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up, in gate's dtype; gate and up of the same shape (no broadcasting)."""
    if use_triton(gate):
        return swiglu_triton(gate, up)  # checks its own inputs
    check_swiglu(gate, up)
    return reference.swiglu(gate, up)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (half-rotation layout of Llama/HF): q, k [tokens, heads, head_dim] (head_dim even);
    cos, sin [tokens, head_dim] (or [1, head_dim], [head_dim]). Returns the rotated (q, k)."""
    if use_triton(q):
        return apply_rope_triton(q, k, cos, sin)  # checks its own inputs
    check_apply_rope(q, k, cos, sin)
    return reference.apply_rope(q, k, cos, sin)
