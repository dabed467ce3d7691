"""Fused linear cross-entropy: loss(hidden @ weight.T + bias, target) without ever holding [N, V] logits.

Tokens are processed in chunks of C rows (C chosen from N, H, V and free memory, see `chunk_rows`). For
each chunk: logits_c = hidden_c @ weight.T (+ bias) in fp32 (cuBLAS), then `_ce_kernel` computes the loss
and writes dloss/dlogits_c in the weight's dtype (in place when that is fp32), then
    grad_hidden_c = dlogits_c @ weight,   grad_weight += dlogits_c.T @ hidden_c (fp32 accumulator),
    grad_bias += sum_rows dlogits_c (fp32).
For "mean"/"sum" the gradients are computed during the forward (Liger / CCE style) and the backward only
scales them by the upstream scalar. For "none" the per-row upstream gradients are unknown until the
backward, which therefore recomputes the chunks (using the lse saved by the forward). No host
synchronisation: the number of non-ignored tokens stays on the device. The matmuls run with autocast
disabled (the logits are fp32 by contract, also inside a bf16 `torch.autocast` region).
Out-of-range targets behave as in `mathforge.kernels.cross_entropy` (NaN rows; DataError with
`MATHFORGE_CHECK=1`).
"""

from __future__ import annotations

import torch

from mathforge.kernels.cross_entropy import launch_ce
from mathforge.kernels.reference import reduce_rows, z_loss_rows
from mathforge.kernels.validation import check_fused_linear_cross_entropy

_LOW_PRECISION = (torch.float16, torch.bfloat16)

CHUNK_BYTES_CUDA = 256 << 20  # chunk buffers: ≥ 256 rows at V = 128K (fp32 + bf16), enough for GEMM peak
CHUNK_FREE_FRACTION = 8  # and at most 1/8 of free memory: room for activations and allocator slack
CHUNK_BYTES_CPU = 64 << 20  # CPU (the interpreter, tests): small chunks keep the tests' peak memory low
CHUNK_ROW_MULTIPLE = 128  # rows rounded down to a multiple of 128: whole tiles for the GEMMs' M dimension

SECOND_BACKWARD = "fused_linear_cross_entropy: backward through the same loss twice is not supported"


def chunk_rows(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per chunk: the per-chunk buffers (fp32 logits + dlogits in `dtype`) take at most
    1/CHUNK_FREE_FRACTION of free device memory and CHUNK_BYTES_CUDA (CHUNK_BYTES_CPU on CPU), rounded down
    to a multiple of CHUNK_ROW_MULTIPLE rows when that is at least one multiple."""
    per_row = v * (4 + (0 if dtype in (torch.float32, torch.float64) else torch.finfo(dtype).bits // 8))
    per_row = max(per_row, v * 4) + 4 * h
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(CHUNK_BYTES_CUDA, free // CHUNK_FREE_FRACTION)
    else:
        budget = CHUNK_BYTES_CPU
    rows = max(1, min(n, budget // per_row))
    return rows - rows % CHUNK_ROW_MULTIPLE if rows >= CHUNK_ROW_MULTIPLE else rows


def _logits_f32(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h @ weight.T (+ bias) with fp32 output (fp64 for fp64 input); fp16/bf16 inputs keep tensor-core speed
    on CUDA through cuBLAS' fp32-output GEMM."""
    if h.dtype in _LOW_PRECISION and h.is_cuda:
        try:
            out = torch.mm(h, weight.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without mm(out_dtype=): fp32 logits rounded once to 16 bits
            out = torch.mm(h, weight.T).float()
    elif h.dtype in _LOW_PRECISION:
        out = h.float() @ weight.float().T
    else:
        out = h @ weight.T
    if bias is not None:
        out += bias
    return out


def _accumulate_weight_grad(acc: torch.Tensor, grad_logits: torch.Tensor, h: torch.Tensor) -> None:
    """acc (fp32) += grad_logits.T @ h, accumulating in fp32 without a [V, H] temporary."""
    if grad_logits.dtype in _LOW_PRECISION and acc.dtype == torch.float32 and h.is_cuda:
        try:
            torch.addmm(acc, grad_logits.T, h, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):  # torch without addmm(out_dtype=): upcast the chunk (slower, same sums)
            pass
    acc.addmm_(grad_logits.T.to(acc.dtype), h.to(acc.dtype))


def _chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    loss: torch.Tensor | None,
    lse: torch.Tensor,
    scale: torch.Tensor | None,
    grads: bool,
    chunk: int,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the token chunks. `loss` given → fill loss/lse; `grads` → return (grad_hidden,
    grad_weight, grad_bias) with row i scaled by scale[i] (or scale[0])."""
    n, v = hidden.shape[0], weight.shape[0]
    acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    grad_hidden = torch.empty_like(hidden) if grads else None
    grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc_dtype) if grads else None
    grad_bias = torch.zeros(v, device=weight.device, dtype=acc_dtype) if grads and bias is not None else None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        h = hidden[start:stop]
        logits = _logits_f32(h, weight, bias)
        dlogits = None
        if grads:
            dlogits = logits if logits.dtype == weight.dtype else torch.empty_like(logits, dtype=weight.dtype)
        launch_ce(
            logits,
            target[start:stop],
            loss=None if loss is None else loss[start:stop],
            lse=lse[start:stop],
            grad=dlogits,
            scale=None if scale is None else (scale if scale.numel() == 1 else scale[start:stop]),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )
        if grads:
            torch.mm(dlogits, weight, out=grad_hidden[start:stop])
            _accumulate_weight_grad(grad_weight, dlogits, h)
            if grad_bias is not None:
                grad_bias += dlogits.sum(0, dtype=acc_dtype)
        del logits, dlogits
    if grads:
        grad_weight = grad_weight.to(weight.dtype)
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
    return grad_hidden, grad_weight, grad_bias


@torch.library.custom_op("mathforge::flce_fwd", mutates_args=())
def flce_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad_scale_mode: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss [N] and lse [N] (fp32); with grad_scale_mode 1 ("mean") or 2 ("sum") also the gradients
    of the reduced loss (grad_hidden, grad_weight, grad_bias; empty tensors when mode is 0 or no bias)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return _flce_fwd(
            hidden, weight, bias, target, ignore_index, label_smoothing, z_loss, softcap, grad_scale_mode, chunk
        )


def _flce_fwd(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss, softcap, grad_scale_mode, chunk):
    n = hidden.shape[0]
    loss = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    scale = None
    if grad_scale_mode == 1:
        scale = 1.0 / (target != ignore_index).sum().clamp(min=1).to(torch.float32).reshape(1)
    elif grad_scale_mode == 2:
        scale = torch.ones(1, device=hidden.device, dtype=torch.float32)
    gh, gw, gb = _chunked(
        hidden,
        weight,
        bias,
        target,
        loss,
        lse,
        scale,
        grad_scale_mode > 0,
        chunk or chunk_rows(n, hidden.shape[1], weight.shape[0], weight.dtype, hidden.device),
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
    )

    def or_empty(t: torch.Tensor | None) -> torch.Tensor:  # outputs may not alias each other
        return hidden.new_empty(0) if t is None else t

    return loss, lse, or_empty(gh), or_empty(gw), or_empty(gb)


@flce_fwd.register_fake
def _(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss, softcap, grad_scale_mode, chunk):
    loss = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    grads = grad_scale_mode > 0
    return (
        loss,
        torch.empty_like(loss),
        torch.empty_like(hidden) if grads else hidden.new_empty(0),
        torch.empty_like(weight) if grads else hidden.new_empty(0),
        torch.empty_like(bias) if grads and bias is not None else hidden.new_empty(0),
    )


@torch.library.custom_op("mathforge::flce_bwd", mutates_args=())
def flce_bwd(
    grad_loss: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for reduction "none": recomputes each chunk, row i scaled by grad_loss[i]."""
    with torch.autocast(hidden.device.type, enabled=False):
        gh, gw, gb = _chunked(
            hidden,
            weight,
            bias,
            target,
            None,
            lse,
            grad_loss.to(torch.float32).contiguous(),
            True,
            chunk or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0], weight.dtype, hidden.device),
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
        )
    return gh, gw, hidden.new_empty(0) if gb is None else gb


@flce_bwd.register_fake
def _(grad_loss, hidden, weight, bias, target, lse, ignore_index, label_smoothing, z_loss, softcap, chunk):
    return (
        torch.empty_like(hidden),
        torch.empty_like(weight),
        (hidden.new_empty(0) if bias is None else torch.empty_like(bias)),
    )


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Reduced loss (fp32 scalar, or [N] for "none") of hidden @ weight.T + bias against target, and the
    per-row lse [N] (no gradient; for the z-loss report)."""

    @staticmethod
    def forward(ctx, hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk):
        needs_grad = any(ctx.needs_input_grad[i] for i in (0, 1, 3))
        mode = {"mean": 1, "sum": 2}.get(reduction, 0) if needs_grad else 0
        loss, lse, gh, gw, gb = torch.ops.mathforge.flce_fwd(
            hidden, weight, bias, target, ignore_index, label_smoothing, z_loss, softcap, mode, chunk
        )
        ctx.reduction, ctx.has_bias = reduction, bias is not None
        ctx.args = (ignore_index, label_smoothing, z_loss, softcap, chunk)
        if mode:
            ctx.save_for_backward(gh, gw, gb)
        else:
            ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.mark_non_differentiable(lse)
        return reduce_rows(loss, target, ignore_index, reduction), lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        if ctx.reduction == "none":
            hidden, weight, bias, target, lse = ctx.saved_tensors
            gh, gw, gb = torch.ops.mathforge.flce_bwd(grad_out, hidden, weight, bias, target, lse, *ctx.args)
        else:  # gradients of the reduced loss were computed in the forward: scale them by the upstream scalar,
            # in place so no second [V, H] buffer appears (hence a second backward through this node is refused)
            if getattr(ctx, "consumed", False):
                raise RuntimeError(SECOND_BACKWARD)
            ctx.consumed = True
            gh, gw, gb = ctx.saved_tensors
            for g in (gh, gw, gb):
                g.mul_(grad_out.to(g.dtype))
        return gh, gw, None, gb if ctx.has_bias else None, None, None, None, None, None, None


def fused_linear_cross_entropy_triton(
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
    chunk: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of `mathforge.kernels.fused_linear_cross_entropy` (same checks); `chunk` > 0 fixes the
    rows per chunk."""
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
    target = target.contiguous()
    loss, lse = FusedLinearCrossEntropyFunction.apply(
        hidden,
        weight,
        target,
        bias,
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        int(chunk),
    )
    if not return_z_loss:
        return loss
    return loss, reduce_rows(z_loss_rows(lse, target, ignore_index, float(z_loss)), target, ignore_index, reduction)
