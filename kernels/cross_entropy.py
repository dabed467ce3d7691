"""Triton cross-entropy with label smoothing, z-loss and logit soft-capping.

Per row i (token) with z = softcap·tanh(x/softcap) (or x) and lse = logsumexp(z):
    loss_i = (1 − ε)(lse − z[t]) + ε(lse − mean z) + z_loss·lse²,   0 when t == ignore_index,
    dloss_i/dz = (1 + 2·z_loss·lse)·softmax(z) − (1 − ε)·onehot(t) − ε/V.

Launch structure (one `_ce_kernel` program per row; [N, V] traffic per call):
- logits need a gradient, reduction "mean"/"sum", logits not fp16 (training): ONE launch computes the
  loss and writes the gradient of the reduced loss (scale 1/n_valid for "mean", computed on the device;
  1 for "sum"). Reads the logits once from memory, writes the gradient once: for V ≤ ROW_BLOCK_MAX the
  program keeps the row it loaded and computes the gradient from it (SINGLE_BLOCK; registers, no spills on
  sm_90); for larger V the gradient loop reads the row a second time, which a GPU should serve from L2 (a bf16
  row of V = 151936 is 300 KB; with one 32-warp program per SM about 40 MB of rows are in flight, under H200's
  50 MB L2). Launch parameters: `ce_launch_params` (chosen from bench/results/sm90/kernel_resources_triton*.json).
  Only the gradient is kept for the backward (not the logits), which multiplies it in place by the
  upstream scalar with `_scale_kernel`: when that scalar is 1 (`loss.backward()`) the kernel reads 4 bytes
  and returns, so the backward touches no [N, V] memory; otherwise it reads and writes the gradient once.
  Because the scaling is in place, a second backward through the same loss raises (`SECOND_BACKWARD`).
  Under torch.compile the in-place scaling would be functionalised, and inductor (torch 2.13) left a copy
  of the gradient onto itself in the compiled backward (4 passes over [N, V]), so compiled code takes the
  two-launch path below (3 passes).
- reduction "none" (per-row upstream gradients are unknown until the backward), fp16 logits (see
  FUSED_DTYPES), or under torch.compile, with a gradient: the forward reads the logits once (loss, lse); the backward reads them
  again and writes the gradient scaled by each row's upstream gradient, computed in fp32.
- no gradient (torch.no_grad, or logits that do not require grad): one forward-only read, no gradient buffer.
Host synchronisations: none on any path.

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

from mathforge.kernels._common import (
    INTERPRETER_ROW_BLOCK,
    INTERPRETER_WARPS,
    ROW_BLOCK_MAX,
    interpreting,
    last_dim_contiguous,
    row_block,
    warps_for_block,
)
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
def _softcapped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    """z = softcap·tanh(x/softcap) when HAS_SOFTCAP, else x (fp32)."""
    z = x
    if HAS_SOFTCAP:
        z = softcap * _tanh(x / softcap)
    return z


@triton.jit
def _lse_of_block(z, mask):
    """(logsumexp, sum) of the lanes of `z` where `mask` holds: a whole row already in registers."""
    zm = tl.where(mask, z, float("-inf"))
    m = tl.max(zm, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    lse = m_safe + tl.log(tl.sum(tl.exp(zm - m_safe), 0))
    return lse, tl.sum(tl.where(mask, z, 0.0), 0)


@triton.jit
def _lse_online(row_ptr, n_cols, softcap, HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    """(logsumexp, sum) of the soft-capped row at `row_ptr`, read once in BLOCK-wide pieces (online softmax
    with per-lane running max and sum)."""
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    z_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        z = _softcapped(tl.load(row_ptr + start + cols, mask=mask, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
        z_sum += tl.where(mask, z, 0.0)
        z = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, z)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - m_safe) + tl.exp(z - m_safe)
        m = m_new
    m_row = tl.max(m, 0)
    return m_row + tl.log(tl.sum(d * tl.exp(m - m_row), 0)), tl.sum(z_sum, 0)


@triton.jit
def _grad_of(z, offs, target, lse, p_coef, label_smoothing, n_cols, softcap, HAS_SOFTCAP: tl.constexpr):
    """dloss/dx at columns `offs` of a row from its soft-capped values `z` (unscaled)."""
    g = p_coef * tl.exp(z - lse) - label_smoothing / n_cols
    g = tl.where(offs == target, g - (1.0 - label_smoothing), g)
    if HAS_SOFTCAP:
        t = z / softcap
        g = g * (1.0 - t * t)
    return g


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
    SINGLE_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row. FORWARD: compute lse and the loss (stored to lse_ptr, loss_ptr).
    BACKWARD: write scale[row]·dloss/dx to grad_ptr (using the lse just computed, or loaded).
    SINGLE_BLOCK (n_cols ≤ BLOCK): the row is loaded once into registers and serves both parts;
    otherwise each part loops over the row in BLOCK-wide pieces."""
    row = tl.program_id(0).to(tl.int64)
    logits_ptr += row * logits_stride
    target = tl.load(target_ptr + row).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_cols)
    cols = tl.arange(0, BLOCK)
    if SINGLE_BLOCK:
        row_mask = cols < n_cols
        z_row = _softcapped(tl.load(logits_ptr + cols, mask=row_mask, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)

    if FORWARD:
        if SINGLE_BLOCK:
            lse, z_sum = _lse_of_block(z_row, row_mask)
        else:
            lse, z_sum = _lse_online(logits_ptr, n_cols, softcap, HAS_SOFTCAP, BLOCK)
        z_t = tl.load(logits_ptr + target, mask=in_range & ~ignored, other=0.0).to(tl.float32)
        z_t = _softcapped(z_t, softcap, HAS_SOFTCAP)
        loss = (1.0 - label_smoothing) * (lse - z_t) + label_smoothing * (lse - z_sum / n_cols)
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
        if SINGLE_BLOCK:
            g = _grad_of(z_row, cols, target, lse, p_coef, label_smoothing, n_cols, softcap, HAS_SOFTCAP)
            tl.store(grad_ptr + cols, g * scale, mask=row_mask)
        else:
            for start in range(0, n_cols, BLOCK):
                offs = start + cols
                mask = offs < n_cols
                z = _softcapped(tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
                g = _grad_of(z, offs, target, lse, p_coef, label_smoothing, n_cols, softcap, HAS_SOFTCAP)
                tl.store(grad_ptr + offs, g * scale, mask=mask)


# V > ROW_BLOCK_MAX: the row is looped over in LOOP_BLOCK pieces by one 32-warp program per SM, so the 132 rows the
# fused launch reads twice are in L2 for the second read (40 MB at V = 151936 bf16; 4 programs per SM would need
# 160 MB and send that read to HBM). The widest block without spills at 32 warps (sm_90) under every Triton in
# bench/results/sm90/kernel_resources_triton*.json, for the fused, forward-only and backward-only launches and the
# fused linear CE's fp32 chunk logits: 8192 (41-58 registers). 16384 for 16-bit logits fits 64 registers with
# Triton 3.9 but spills 40 B/thread with Triton 3.6 (the GPU image's); softcap at 16384 spills under both.
# The 16384 block (32 KB in flight per SM instead of 16 KB) and 3 programs of 4096 × 8 warps at V = 32000 (rows
# still fit L2) are timed against this by `mathforge.bench.kernels --ce-launch`.
LOOP_WARPS = 32
LOOP_BLOCK = 8192
SCALE_BLOCK = 4096  # elements per program and step of `_scale_kernel` (8 KB of bf16)
SCALE_WARPS = 4  # 30 registers: 16 programs per SM (full occupancy), 128 KB in flight per SM
SCALE_PROGRAMS_MAX = 1024  # grid-stride over the gradient: ~8 programs per SM, so the "scale is 1" exit is cheap


@triton.jit
def _scale_kernel(grad_ptr, scale_ptr, numel, BLOCK: tl.constexpr):
    """grad (flat, `numel` elements) *= the scalar at scale_ptr, in place, computed in the scalar's dtype.
    When the scalar is 1 the program returns after reading it: no pass over the gradient."""
    s = tl.load(scale_ptr)
    if s != 1.0:
        cols = tl.arange(0, BLOCK)
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):
            offs = start + cols
            mask = offs < numel
            g = tl.load(grad_ptr + offs, mask=mask)
            tl.store(grad_ptr + offs, (g.to(s.dtype) * s).to(g.dtype), mask=mask)


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
    (fills loss and lse); `grad` given → backward with per-row `scale` ([n], or [1] broadcast); both → one
    launch that reads each row from memory once when V ≤ ROW_BLOCK_MAX."""
    n, v = logits.shape
    if n == 0:
        return
    forward, backward = loss is not None, grad is not None
    if interpreting():
        block, warps = row_block(v, INTERPRETER_ROW_BLOCK), INTERPRETER_WARPS
    else:
        block, warps = ce_launch_params(v)
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
        SINGLE_BLOCK=v <= block,
        BLOCK=block,
        num_warps=warps,
    )


def ce_launch_params(n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of `_ce_kernel` on a GPU for rows of `n_cols` logits: the whole row up to ROW_BLOCK_MAX,
    else LOOP_BLOCK at LOOP_WARPS (the same for every logits dtype and softcap: see LOOP_BLOCK)."""
    if n_cols <= ROW_BLOCK_MAX:
        block = row_block(n_cols)
        return block, warps_for_block(block)
    return LOOP_BLOCK, LOOP_WARPS


def launch_scale(grad: torch.Tensor, scale: torch.Tensor, max_programs: int = SCALE_PROGRAMS_MAX) -> None:
    """grad (contiguous) *= scale (one element, on grad's device) in place, without a host sync; no pass over
    grad when scale is 1. fp64 gradients are scaled in fp64, the others in fp32."""
    if grad.numel() == 0:
        return
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    programs = min(triton.cdiv(grad.numel(), SCALE_BLOCK), max_programs)
    _scale_kernel[(programs,)](
        grad,
        scale.reshape(1).to(dtype),
        grad.numel(),
        BLOCK=SCALE_BLOCK,
        num_warps=INTERPRETER_WARPS if interpreting() else SCALE_WARPS,
    )


def reduction_grad_scale(target: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """[1] fp32 on target's device: the factor that turns per-row gradients into the gradient of the reduced
    loss (1/n_valid for "mean", counted on the device with n_valid clamped to ≥ 1; 1 for "sum")."""
    if reduction == "sum":
        return torch.ones(1, device=target.device, dtype=torch.float32)
    return 1.0 / (target != ignore_index).sum().clamp(min=1).to(torch.float32).reshape(1)


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


@torch.library.custom_op("mathforge::cross_entropy_fwd_grad", mutates_args=())
def cross_entropy_fwd_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss [N] and lse [N] (fp32), and the gradient of the `reduction` ("mean" or "sum") of the
    per-row losses with respect to the logits (logits' dtype, contiguous), all from one launch."""
    logits = last_dim_contiguous(logits)
    loss = torch.empty(logits.shape[0], device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    launch_ce(
        logits,
        target,
        loss=loss,
        lse=lse,
        grad=grad,
        scale=reduction_grad_scale(target, ignore_index, reduction),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return loss, lse, grad


@cross_entropy_fwd_grad.register_fake
def _(logits, target, ignore_index, reduction, label_smoothing, z_loss, softcap):
    loss = logits.new_empty(logits.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss), torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("mathforge::cross_entropy_grad_scale", mutates_args=("grad",))
def cross_entropy_grad_scale(grad: torch.Tensor, grad_out: torch.Tensor) -> None:
    """grad *= grad_out (a one-element tensor) in place; reads no [N, V] memory when grad_out is 1."""
    launch_scale(grad, grad_out)


@cross_entropy_grad_scale.register_fake
def _(grad, grad_out):
    return None


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


SECOND_BACKWARD = "cross_entropy: backward through the same loss twice is not supported"
REDUCED = ("mean", "sum")  # reductions whose gradient the forward computes (the upstream is one scalar)
# logits dtypes for that one-launch path. Not fp16: its gradient would be stored already divided by n_valid
# and only then multiplied by the upstream scalar, so under a loss scale (GradScaler's 2^16) the small
# entries softmax/n_valid would lose bits below fp16's normal range (6e-5) and become 0 below 6e-8; the
# two-launch path multiplies by the upstream in fp32 before rounding to fp16.
FUSED_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


class CrossEntropyFunction(torch.autograd.Function):
    """Reduced loss (fp32 scalar, or [N] for "none") of logits [N, V] against target, and the per-row lse [N]
    (no gradient; for the z-loss report). With a gradient needed, reduction "mean"/"sum" and logits in
    FUSED_DTYPES, the forward computes that gradient too (one launch) and the backward only scales it by the
    upstream scalar; otherwise the backward recomputes the gradient from the saved logits and lse."""

    @staticmethod
    def forward(ctx, logits, target, grad_mode, ignore_index, reduction, label_smoothing, z_loss, softcap):
        # needs_input_grad follows requires_grad even under torch.no_grad: `grad_mode` (the caller's
        # torch.is_grad_enabled()) tells whether a backward can follow at all
        # under torch.compile the in-place scaling would be functionalised into a copy of the gradient onto
        # itself (4 passes over [N, V]); the two-launch path makes 3 there
        ctx.fused = (
            grad_mode
            and ctx.needs_input_grad[0]
            and reduction in REDUCED
            and logits.dtype in FUSED_DTYPES
            and not torch.compiler.is_compiling()
        )
        options = (label_smoothing, z_loss, softcap)
        if ctx.fused:
            loss, lse, grad = torch.ops.mathforge.cross_entropy_fwd_grad(
                logits, target, ignore_index, reduction, *options
            )
            ctx.save_for_backward(grad)
        else:
            loss, lse = torch.ops.mathforge.cross_entropy_fwd(logits, target, ignore_index, *options)
            if grad_mode and ctx.needs_input_grad[0]:
                ctx.save_for_backward(logits, target, lse)
        ctx.mark_non_differentiable(lse)
        ctx.args, ctx.reduction = (ignore_index, *options), reduction
        return reduce_rows(loss, target, ignore_index, reduction), lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        if ctx.fused:  # scaled in place (no second [N, V] buffer), hence one backward only
            if getattr(ctx, "consumed", False):
                raise RuntimeError(SECOND_BACKWARD)
            ctx.consumed = True
            (grad,) = ctx.saved_tensors
            torch.ops.mathforge.cross_entropy_grad_scale(grad, grad_out)
        else:
            logits, target, lse = ctx.saved_tensors
            if ctx.reduction in REDUCED:  # one upstream scalar: the per-row gradient of the reduction, on device
                grad_out = grad_out.reshape(1).float() * reduction_grad_scale(target, ctx.args[0], ctx.reduction)
            grad = torch.ops.mathforge.cross_entropy_bwd(grad_out, logits, target, lse, *ctx.args)
        return grad, None, None, None, None, None, None, None


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
        torch.is_grad_enabled(),
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
    )
    if not return_z_loss:
        return loss
    return loss, reduce_rows(z_loss_rows(lse, target, ignore_index, float(z_loss)), target, ignore_index, reduction)
