"""Pure-torch references for every mathforge kernel: the ground truth in tests and the CPU path.

Each computes in fp32 (or fp64 when given fp64) and returns the input's dtype, except the losses,
which return fp32 (fp64 for fp64 input: the tests' ground truth; the public ops cast to fp32). They are
written for clarity, not memory: the losses materialise the full [N, V] logits. They do not validate their
inputs: `mathforge.kernels.validation` does, in front of both paths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mathforge.kernels.validation import check_reduction


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per non-ignored token i, with z = softcap·tanh(logits/softcap) (or the logits) and lse = logsumexp(z):
    loss_i = (1 − ε)(lse − z[target]) + ε(lse − mean(z)) + z_loss·lse². "mean" divides by the number of
    non-ignored tokens (0.0 when there are none); "none" gives 0 at ignored positions. With `return_z_loss`
    returns (loss, z-loss term), the second detached and reduced like the first (see `z_loss_rows`)."""
    check_reduction(reduction)
    z = logits.to(_compute_dtype(logits))
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=-1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    nll = lse - z.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - z.mean(dim=-1)) + z_loss * lse.square()
    loss = reduce_rows(torch.where(valid, loss, torch.zeros_like(loss)), target, ignore_index, reduction)
    if not return_z_loss:
        return loss
    return loss, reduce_rows(z_loss_rows(lse.detach(), target, ignore_index, z_loss), target, ignore_index, reduction)


def z_loss_rows(lse: torch.Tensor, target: torch.Tensor, ignore_index: int, z_loss: float) -> torch.Tensor:
    """The z-loss term z_loss·lse² of each row (0 at ignored rows): the part of the loss `return_z_loss` reports."""
    return torch.where(target != ignore_index, z_loss * lse.square(), torch.zeros_like(lse))


def reduce_rows(loss: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """Applies the reduction to per-row losses (0 at ignored rows); "mean" over non-ignored rows, 0.0 if none."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum().clamp(min=1)


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`cross_entropy(hidden @ weight.T + bias, target, ...)` with the logits computed in fp32 (fp64 for fp64)."""
    dtype = _compute_dtype(hidden)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_z_loss=return_z_loss,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """x / sqrt(mean(x², -1) + eps) · (offset + weight); offset=1.0 is Gemma's (1 + w); weight=None: no affine."""
    dtype = _compute_dtype(x)
    x32 = x.to(dtype)
    y = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (offset + weight.to(dtype))
    return y.to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up."""
    dtype = _compute_dtype(gate)
    return (F.silu(gate.to(dtype)) * up.to(dtype)).to(gate.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding in the half-rotation layout of Llama/HF: q, k [tokens, heads, head_dim];
    cos, sin [tokens, head_dim] (each the per-position angles repeated over both halves)."""
    dtype = _compute_dtype(q)
    c, s = cos.to(dtype).unsqueeze(-2), sin.to(dtype).unsqueeze(-2)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(dtype)
        return (x32 * c + rotate_half(x32) * s).to(x.dtype)

    return rotate(q), rotate(k)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """Packed attention, one scaled_dot_product_attention call per document (q [T, Hq, D], k, v [T, Hkv, D]):
    the readable ground truth the attention backends are tested against; tokens after cu_seqlens[-1] get 0."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            qd, kd, vd = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [heads, len, D]
            attended = F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal, scale=1 / math.sqrt(q.shape[-1]))
            out = out.index_copy(0, torch.arange(start, end, device=q.device), attended.transpose(0, 1))
    return out
