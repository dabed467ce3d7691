"""Triton cross-entropy with label smoothing, z-loss and logit soft-capping.

Per row i (token) with z = softcap·tanh(x/softcap) (or x) and lse = logsumexp(z):
    loss_i = (1 − ε)(lse − z[t]) + ε(lse − mean z) + z_loss·lse²,   0 when t == ignore_index,
    dloss_i/dz = (1 + 2·z_loss·lse)·softmax(z) − (1 − ε)·onehot(t) − ε/V.
The forward reads each row once (online softmax) and stores lse; the backward reads the row again and
writes the gradient scaled by the row's upstream gradient, so every reduction (and "none" with any
upstream gradient) is exact and nothing [N, V]-sized is kept between forward and backward.

Soft-capping uses `_tanh`, accurate to ~2e-7 relative at every magnitude (the textbook
1 − 2/(exp(2y) + 1) loses up to ~8% relative for |y| ≲ 1e-5 to cancellation; libdevice's tanh has no
interpreter implementation, so the CPU tests could not check it).
Out-of-range targets (not ignore_index, not in [0, V)) give a NaN loss and NaN gradient for that row
(never an out-of-bounds read); `MATHFORGE_CHECK=1` turns them into a DataError instead.
The same `_ce_kernel` also serves the fused linear cross-entropy, which runs it on chunks of logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mathforge.kernels._common import last_dim_contiguous, num_warps_for, row_block
from mathforge.kernels.reference import reduce_rows, z_loss_rows
from mathforge.kernels.validation import check_cross_entropy

# |y| below which `_tanh` sums the odd Taylor series (8 terms: < 2.1e-7 relative error up to 0.55); above it
# 1 - 2/(exp(2|y|) + 1) loses under 2 ulp to cancellation. Checked against float64 over 1e-8..30.
TANH_SERIES_LIMIT = tl.constexpr(0.55)


@triton.jit
def _tanh(y):
    """tanh(y) in fp32 with small relative error for every |y| (odd series near 0, exp form elsewhere)."""
    a = tl.abs(y)
    a2 = a * a
    p = -0.0014558343870513183 * a2 + 0.0035921280365724811  # Taylor coefficients of tanh, x^15 down to x
    p = p * a2 - 0.008863235529902197
    p = p * a2 + 0.021869488536155203
    p = p * a2 - 0.05396825396825397
    p = p * a2 + 0.13333333333333333
    p = p * a2 - 0.3333333333333333
    p = p * a2 + 1.0
    r = tl.where(a < TANH_SERIES_LIMIT, a * p, 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0))
    return tl.where(y < 0, -r, r)


@triton.jit
def _ce_kernel(
    logits_ptr,
    logits_stride,
    target_ptr,
    loss_ptr,
    lse_ptr,
    grad_ptr,
    grad_stride,
    scale_ptr,
    scale_stride,
    n_cols,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    FORWARD: tl.constexpr,
    BACKWARD: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row. FORWARD: compute lse and the loss (stored to lse_ptr, loss_ptr).
    BACKWARD: write scale[row]·dloss/dx to grad_ptr (using the lse just computed, or loaded)."""
    row = tl.program_id(0).to(tl.int64)
    logits_ptr += row * logits_stride
    target = tl.load(target_ptr + row).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_cols)
    cols = tl.arange(0, BLOCK)

    if FORWARD:
        m = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane running max and sum: one pass over the row
        d = tl.zeros([BLOCK], tl.float32)
        z_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            z = tl.load(logits_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z = softcap * _tanh(z / softcap)
            z_sum += tl.where(mask, z, 0.0)
            z = tl.where(mask, z, float("-inf"))
            m_new = tl.maximum(m, z)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            d = d * tl.exp(m - m_safe) + tl.exp(z - m_safe)
            m = m_new
        m_row = tl.max(m, 0)
        lse = m_row + tl.log(tl.sum(d * tl.exp(m - m_row), 0))
        z_t = tl.load(logits_ptr + target, mask=in_range & ~ignored, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z_t = softcap * _tanh(z_t / softcap)
        loss = (1.0 - label_smoothing) * (lse - z_t) + label_smoothing * (lse - tl.sum(z_sum, 0) / n_cols)
        loss += z_loss * lse * lse
        loss = tl.where(in_range, loss, float("nan"))
        loss = tl.where(ignored, 0.0, loss)
        tl.store(loss_ptr + row, loss)
        tl.store(lse_ptr + row, lse)
    else:
        lse = tl.load(lse_ptr + row)

    if BACKWARD:
        grad_ptr += row * grad_stride
        scale = tl.load(scale_ptr + row * scale_stride).to(tl.float32)
        scale = tl.where(in_range, scale, float("nan"))
        scale = tl.where(ignored, 0.0, scale)
        p_coef = 1.0 + 2.0 * z_loss * lse
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = offs < n_cols
            x = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z = softcap * _tanh(x / softcap)
            else:
                z = x
            g = p_coef * tl.exp(z - lse) - label_smoothing / n_cols
            g = tl.where(offs == target, g - (1.0 - label_smoothing), g)
            if HAS_SOFTCAP:
                t = z / softcap
                g = g * (1.0 - t * t)
            tl.store(grad_ptr + offs, g * scale, mask=mask)


def launch_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: torch.Tensor | None,
    lse: torch.Tensor,
    grad: torch.Tensor | None,
    scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> None:
    """Runs `_ce_kernel` over the rows of `logits` [n, V] (last dim contiguous). `loss` given → forward
    (fills loss and lse); `grad` given → backward with per-row `scale` ([n], or [1] broadcast)."""
    n, v = logits.shape
    if n == 0:
        return
    forward, backward = loss is not None, grad is not None
    block = row_block(v)
    _ce_kernel[(n,)](
        logits,
        logits.stride(0),
        target,
        loss if forward else lse,
        lse,
        grad if backward else logits,
        grad.stride(0) if backward else 0,
        scale if backward else lse,
        (1 if scale.numel() > 1 else 0) if backward else 0,
        v,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap if softcap is not None else 1.0,
        FORWARD=forward,
        BACKWARD=backward,
        HAS_SOFTCAP=softcap is not None,
        BLOCK=block,
        num_warps=num_warps_for(block),
    )


@torch.library.custom_op("mathforge::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss [N] and lse [N], both fp32."""
    logits = last_dim_contiguous(logits)
    loss = torch.empty(logits.shape[0], device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    launch_ce(
        logits,
        target,
        loss=loss,
        lse=lse,
        grad=None,
        scale=None,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return loss, lse


@cross_entropy_fwd.register_fake
def _(logits, target, ignore_index, label_smoothing, z_loss, softcap):
    loss = logits.new_empty(logits.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("mathforge::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> torch.Tensor:
    """dlogits in the logits' dtype, each row scaled by grad_loss[row]."""
    logits = last_dim_contiguous(logits)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    launch_ce(
        logits,
        target,
        loss=None,
        lse=lse,
        grad=grad,
        scale=grad_loss.contiguous(),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return grad


@cross_entropy_bwd.register_fake
def _(grad_loss, logits, target, lse, ignore_index, label_smoothing, z_loss, softcap):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


class CrossEntropyFunction(torch.autograd.Function):
    """Per-row losses [N] (fp32) and lse [N] (no gradient) from logits [N, V]; reductions are applied outside,
    by autograd-aware torch."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, z_loss, softcap):
        loss, lse = torch.ops.mathforge.cross_entropy_fwd(
            logits, target, ignore_index, label_smoothing, z_loss, softcap
        )
        ctx.save_for_backward(logits, target, lse)
        ctx.mark_non_differentiable(lse)
        ctx.args = (ignore_index, label_smoothing, z_loss, softcap)
        return loss, lse

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse):
        logits, target, lse = ctx.saved_tensors
        grad = torch.ops.mathforge.cross_entropy_bwd(grad_loss, logits, target, lse, *ctx.args)
        return grad, None, None, None, None, None


def cross_entropy_triton(
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
    """The Triton path of `mathforge.kernels.cross_entropy` (any device Triton can run on); same checks."""
    check_cross_entropy(
        logits, target, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap
    )
    target = target.contiguous()
    loss, lse = CrossEntropyFunction.apply(
        logits,
        target,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
    )
    loss = reduce_rows(loss, target, ignore_index, reduction)
    if not return_z_loss:
        return loss
    return loss, reduce_rows(z_loss_rows(lse, target, ignore_index, float(z_loss)), target, ignore_index, reduction)
