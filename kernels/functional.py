"""The public ops: CUDA tensors run the Triton kernels, other tensors the torch references (the CPU path).

`MATHFORGE_CHECK=1` makes both losses validate targets first (one host sync) and raise
`mathforge.errors.DataError` on a target that is neither ignore_index nor in [0, V). Without it an
out-of-range target gives a NaN loss (Triton path) or a torch indexing error (reference path).
"""

from __future__ import annotations

import torch

from mathforge.kernels import reference
from mathforge.kernels._common import check_enabled, check_reduction, check_targets
from mathforge.kernels.cross_entropy import cross_entropy_triton
from mathforge.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy_triton
from mathforge.kernels.rms_norm import rms_norm_triton
from mathforge.kernels.rope import apply_rope_triton
from mathforge.kernels.swiglu import swiglu_triton


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits [N, V] against target [N] with label smoothing, z-loss and soft-capping;
    returns fp32 (a scalar, or [N] for reduction="none"). Semantics: `mathforge.kernels.reference`."""
    check_reduction(reduction)
    if check_enabled():
        check_targets(target, logits.shape[-1], ignore_index)
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                  softcap=softcap)  # fmt: skip
    if logits.is_cuda:
        return cross_entropy_triton(logits, target, **kwargs)
    return reference.cross_entropy(logits, target, **kwargs)


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
) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T + bias, target, ...)` for hidden [N, H], weight [V, H]; on CUDA the
    [N, V] logits are never materialised (token chunks, gradients computed during the forward)."""
    check_reduction(reduction)
    if check_enabled():
        check_targets(target, weight.shape[0], ignore_index)
    kwargs = dict(bias=bias, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                  z_loss=z_loss, softcap=softcap)  # fmt: skip
    if hidden.is_cuda:
        return fused_linear_cross_entropy_triton(hidden, weight, target, **kwargs)
    return reference.fused_linear_cross_entropy(hidden, weight, target, **kwargs)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """x / sqrt(mean(x², -1) + eps) · (offset + weight), in x's dtype; offset=1.0 is Gemma's (1 + w)."""
    if x.is_cuda:
        return rms_norm_triton(x, weight, eps, offset)
    return reference.rms_norm(x, weight, eps, offset)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up, in gate's dtype."""
    if gate.is_cuda:
        return swiglu_triton(gate, up)
    return reference.swiglu(gate, up)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (half-rotation layout of Llama/HF): q, k [tokens, heads, head_dim]; cos, sin
    [tokens, head_dim]. Returns the rotated (q, k)."""
    if q.is_cuda:
        return apply_rope_triton(q, k, cos, sin)
    return reference.apply_rope(q, k, cos, sin)
