"""Fused linear cross-entropy: loss(hidden @ weight.T + bias, target) without ever holding [N, V] logits.

Tokens are processed in chunks of C rows. For each chunk: logits_c = hidden_c @ weight.T (+ bias), by
default in fp32 (cuBLAS' fp32-output GEMM; `chunk_logits="input"` keeps them in hidden's dtype, Liger-style,
the loss and lse still computed in fp32 by the kernel), then `_ce_kernel` computes the loss and writes
dloss/dlogits_c in the weight's dtype (in place when the logits already have that dtype), then
    grad_hidden_c = dlogits_c @ weight,   grad_weight (+)= dlogits_c.T @ hidden_c (fp32 accumulator),
    grad_bias (+)= sum_rows dlogits_c (fp32);
the first chunk writes the accumulators (GEMM with beta = 0), later chunks add into them.
For "mean"/"sum" the gradients are computed during the forward (Liger / CCE style) when a backward can
follow (grad mode on, an input requiring grad) and the backward only scales them by the upstream scalar (in
fp32, skipped when it is 1). For "none" the per-row upstream gradients are unknown until the backward, which
therefore recomputes the chunks (using the lse saved by the forward); fp16 inputs take that path for
"mean"/"sum" too, like `cross_entropy`'s fp16 logits: gradients already divided by n_valid and rounded to fp16
lose their small entries, and GradScaler's first upstream (2^16) is not even an fp16 number. Only the gradients
of inputs that require grad are computed: a frozen LM head (LoRA, a frozen tied embedding) costs neither the
weight-gradient GEMM nor the [V, H] fp32 accumulator; a frozen trunk skips the grad_hidden GEMM. No host
synchronisation: the number of non-ignored tokens stays on the device. The matmuls run with autocast
disabled (the logits are fp32 by contract, also inside a bf16 `torch.autocast` region).
Out-of-range targets behave as in `mathforge.kernels.cross_entropy` (NaN rows; DataError with
`MATHFORGE_CHECK=1`).

Chunk size (`plan_chunk_rows`, a pure function; `chunk_rows` feeds it this device's free memory). The
traffic model (`chunk_traffic`, `predicted_ms`), at matmul rate F and copy bandwidth B (bytes read + written):
- a chunk's three GEMMs do 6·C·H·V flops: 6·C·H·V / F seconds;
- the fp32 weight-gradient accumulator is read and written once per chunk: 8·V·H bytes, 8·V·H / B seconds
  (2 GiB, i.e. 4 GiB of traffic, at H = 4096, V = 128256) — modelled as not overlapping the GEMMs' compute;
- the CE kernel reads the logits twice and writes dlogits: 10·C·V bytes with fp32 logits (6·C·V with
  logits in bf16/fp16, which it updates in place); the GEMMs' operand traffic is assumed hidden under
  their compute.
H and V cancel in accumulator / GEMM time = 8·F / (6·B·C), so the accumulator pass stays under
ACCUMULATOR_OVERHEAD (10%) of a chunk's GEMM time when C ≥ 8·F / (6·B·0.1): 2450 rows at F = 790 TFLOP/s,
B = 4.3 TB/s (H200-like measured rates; these ASSUMED_* constants, not a measurement of this device, are the
default). The CE kernel's traffic is a fixed share of the GEMM time whatever C is: 10·F / (6·B·H), i.e.
7.5% at H = 4096, 20% at H = 1536 with fp32 logits (4.5% and 12% with 16-bit logits). So C starts from the
accumulator target, spread evenly over N // 2450 chunks and rounded up to a multiple of 128 rows (whole GEMM
tiles): 2816 rows at N = 16384 (4096 at H100-like rates, 740 TFLOP/s and 3.0 TB/s: target 3289 rows).
Capped by memory: the chunk buffers (logits + dlogits + a row of hidden in fp32, `chunk_bytes_per_row`) take
at most 1/8 of free device memory and 4 GiB (64 MiB on CPU, where small chunks keep the tests' peak memory
low), and C ≤ N. At C = 2816, V = 128256 the fp32-logit buffers take 2.2 GB (0.8 GB with 16-bit logits), so
for N below ~3·C the op can hold more than the bf16 [N, V] logits would (never more than fp32 logits + bf16
dlogits of all N rows, which unfused torch holds too); the earlier rule (256 MiB of buffers: C = 256 at this V)
paid the accumulator pass 11 times per 2816 rows, 0.96× the GEMM time on its own. Model, fwd+bwd over the
6·N·H·V floor at N = 16384 and H200-like rates: 1.17× / 1.29× / 1.18× for (H, V) = (4096, 128256),
(1536, 151936), (3584, 152064) with fp32 logits, 1.14× / 1.21× / 1.15× with 16-bit logits, 2.0–2.2× at C = 256.
The model is an estimate for choosing C; `mathforge.bench.kernels --flce-chunks` measures the alternatives.
"""

from __future__ import annotations

import math

import torch

from mathforge.kernels.cross_entropy import FUSED_DTYPES, REDUCED, launch_ce, reduction_grad_scale
from mathforge.kernels.reference import reduce_rows, z_loss_rows
from mathforge.kernels.validation import check_fused_linear_cross_entropy

_LOW_PRECISION = (torch.float16, torch.bfloat16)

ASSUMED_MATMUL_FLOPS = 790e12  # dense bf16 GEMM rate, FLOP/s: H200-like measured value (datasheet: 989e12)
ASSUMED_COPY_BYTES_PER_S = 4.3e12  # device copy rate, bytes read + written per s: H200-like (datasheet 4.8e12)
ACCUMULATOR_OVERHEAD = 0.10  # the accumulator's read + write at most this share of a chunk's GEMM time
CHUNK_FREE_FRACTION = 8  # chunk buffers take at most 1/8 of free memory: room for activations, allocator slack
CHUNK_BYTES_MAX_CUDA = 4 << 30  # and at most 4 GiB (≥ 4600 rows at V = 152064 with fp32 logits)
CHUNK_BYTES_CPU = 64 << 20  # CPU (the interpreter, tests): small chunks keep the tests' peak memory low
CHUNK_ROW_MULTIPLE = 128  # rows rounded to a multiple of 128: whole tiles for the GEMMs' M dimension
CHUNK_LOGITS = ("fp32", "input")  # logits chunk dtype: fp32 (fp64 for fp64 inputs), or hidden's dtype

SECOND_BACKWARD = "fused_linear_cross_entropy: backward through the same loss twice is not supported"
GRAD_HIDDEN, GRAD_WEIGHT, GRAD_BIAS = 1, 2, 4  # bits of `wanted`: the gradients to compute
GRAD_ALL = GRAD_HIDDEN | GRAD_WEIGHT | GRAD_BIAS


def chunk_logits_bytes(dtype: torch.dtype, chunk_logits: str) -> int:
    """Bytes per logit of the chunk buffer: hidden's dtype for "input", else fp32 (fp64 for fp64)."""
    if chunk_logits == "input" or dtype == torch.float64:
        return torch.finfo(dtype).bits // 8
    return 4


def chunk_bytes_per_row(h: int, v: int, dtype: torch.dtype, chunk_logits: str = "fp32") -> int:
    """Bytes of chunk buffers per token row: the logits, dlogits in `dtype` unless written in place over
    logits of that same dtype, and a row of hidden in fp32 (the CPU path upcasts it)."""
    logits = chunk_logits_bytes(dtype, chunk_logits)
    dlogits = 0 if logits == torch.finfo(dtype).bits // 8 else torch.finfo(dtype).bits // 8
    return v * (logits + dlogits) + 4 * h


def accumulator_rows(
    matmul_flops: float = ASSUMED_MATMUL_FLOPS,
    copy_bytes_per_s: float = ASSUMED_COPY_BYTES_PER_S,
    overhead: float = ACCUMULATOR_OVERHEAD,
) -> int:
    """Fewest rows per chunk for which the fp32 accumulator's read + write (8·V·H bytes at copy_bytes_per_s)
    costs at most `overhead` of the chunk's GEMMs (6·C·H·V flops at matmul_flops): C ≥ 8·F / (6·B·overhead),
    whatever H and V. 2450 at the ASSUMED_* rates."""
    if not (matmul_flops > 0 and copy_bytes_per_s > 0 and overhead > 0):
        raise ValueError(
            f"rates and overhead must be > 0, got matmul_flops={matmul_flops!r}, "
            f"copy_bytes_per_s={copy_bytes_per_s!r}, overhead={overhead!r}"
        )
    return math.ceil(8 * matmul_flops / (6 * copy_bytes_per_s * overhead))


def chunk_budget_bytes(free_bytes: int | None) -> int:
    """Bytes the chunk buffers may take: CHUNK_BYTES_CPU on CPU (free_bytes None), else 1/CHUNK_FREE_FRACTION
    of the device's free memory, at most CHUNK_BYTES_MAX_CUDA."""
    if free_bytes is None:
        return CHUNK_BYTES_CPU
    return min(CHUNK_BYTES_MAX_CUDA, free_bytes // CHUNK_FREE_FRACTION)


def _round_rows(rows: int, multiple: int, up: bool) -> int:
    if rows < multiple:
        return rows
    return -(-rows // multiple) * multiple if up else rows - rows % multiple


def plan_chunk_rows(
    n: int,
    h: int,
    v: int,
    dtype: torch.dtype,
    *,
    free_bytes: int | None,
    matmul_flops: float = ASSUMED_MATMUL_FLOPS,
    copy_bytes_per_s: float = ASSUMED_COPY_BYTES_PER_S,
    chunk_logits: str = "fp32",
) -> int:
    """Rows per chunk for N tokens, hidden size H, vocab V (a pure function; see the module docstring).
    Traffic: `accumulator_rows` rows at least, spread evenly over max(1, N // that) chunks and rounded up to a
    multiple of CHUNK_ROW_MULTIPLE. Memory: at most `chunk_budget_bytes(free_bytes)` of chunk buffers (rounded
    down to a multiple of CHUNK_ROW_MULTIPLE when that is at least one multiple), and at most N rows (1 for
    N = 0)."""
    if n < 0 or h < 1 or v < 1:
        raise ValueError(f"need n >= 0 and h, v >= 1, got n={n}, h={h}, v={v}")
    if n == 0:  # no chunk runs; the loop's step must still be positive
        return 1
    want = accumulator_rows(matmul_flops, copy_bytes_per_s)
    chunks = max(1, n // want)
    rows = min(n, _round_rows(-(-n // chunks), CHUNK_ROW_MULTIPLE, up=True))
    cap = max(1, chunk_budget_bytes(free_bytes) // chunk_bytes_per_row(h, v, dtype, chunk_logits))
    return rows if rows <= cap else _round_rows(cap, CHUNK_ROW_MULTIPLE, up=False)


def chunk_rows(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device, chunk_logits: str = "fp32") -> int:
    """`plan_chunk_rows` with this device's free memory (CUDA) or the CPU budget, at the ASSUMED_* rates."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return plan_chunk_rows(n, h, v, dtype, free_bytes=free, chunk_logits=chunk_logits)


def chunk_traffic(c: int, h: int, v: int, logits_bytes: int = 4) -> dict[str, float]:
    """The model's work for one chunk of c rows: GEMM flops, accumulator bytes (read + write of the [V, H]
    fp32 sum) and CE-kernel bytes (logits read twice, dlogits written in 16 bits; in place for 16-bit logits)."""
    return {
        "gemm_flops": 6.0 * c * h * v,
        "accumulator_bytes": 8.0 * v * h,
        "ce_bytes": float(c * v * (2 * logits_bytes + 2)),
    }


def predicted_ms(
    n: int,
    h: int,
    v: int,
    rows: int,
    *,
    matmul_flops: float = ASSUMED_MATMUL_FLOPS,
    copy_bytes_per_s: float = ASSUMED_COPY_BYTES_PER_S,
    logits_bytes: int = 4,
) -> dict[str, float]:
    """Modelled forward + backward milliseconds ("mean" loss, 16-bit weights) with chunks of `rows`: GEMM time
    at matmul_flops plus, not overlapped, the CE kernel's and the accumulator's traffic at copy_bytes_per_s.
    The first chunk writes the accumulator (4·V·H bytes, no read) and the last pass converts it to the weight
    dtype (4·V·H read, 2·V·H written). Also floor_ms = 6·N·H·V / matmul_flops and x_floor = total / floor."""
    chunks = -(-n // rows)
    per_row = chunk_traffic(1, h, v, logits_bytes)
    acc_bytes = chunk_traffic(rows, h, v)["accumulator_bytes"] * chunks - 4.0 * v * h + 6.0 * v * h
    parts = {
        "gemm_ms": per_row["gemm_flops"] * n / matmul_flops * 1e3,
        "ce_ms": per_row["ce_bytes"] * n / copy_bytes_per_s * 1e3,
        "accumulator_ms": acc_bytes / copy_bytes_per_s * 1e3,
    }
    total = sum(parts.values())
    return {**parts, "total_ms": total, "floor_ms": parts["gemm_ms"], "x_floor": total / parts["gemm_ms"]}


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_logits: str) -> torch.Tensor:
    """h @ weight.T (+ bias): fp32 output (fp64 for fp64 input) for "fp32", h's dtype for "input" (one rounding
    of the fp32 sum). fp16/bf16 inputs keep tensor-core speed on CUDA through cuBLAS' fp32-output GEMM."""
    low = h.dtype in _LOW_PRECISION
    if low and chunk_logits == "input":
        if h.is_cuda:
            return torch.mm(h, weight.T) if bias is None else torch.addmm(bias, h, weight.T)
        return _logits(h, weight, bias, "fp32").to(h.dtype)
    if low and h.is_cuda:
        try:
            out = torch.mm(h, weight.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without mm(out_dtype=): fp32 logits rounded once to 16 bits
            out = torch.mm(h, weight.T).float()
    elif low:
        out = h.float() @ weight.float().T
    else:
        out = h @ weight.T
    if bias is not None:
        out += bias
    return out


def _accumulate_weight_grad(acc: torch.Tensor, grad_logits: torch.Tensor, h: torch.Tensor, first: bool) -> None:
    """acc (fp32) = grad_logits.T @ h when `first` (acc's old contents, even NaN, are ignored: beta = 0), else
    acc += grad_logits.T @ h; accumulates in fp32 without a [V, H] temporary."""
    beta = 0.0 if first else 1.0
    if grad_logits.dtype in _LOW_PRECISION and acc.dtype == torch.float32 and h.is_cuda:
        try:
            torch.addmm(acc, grad_logits.T, h, beta=beta, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):  # torch without addmm(out_dtype=): upcast the chunk (slower, same sums)
            pass
    acc.addmm_(grad_logits.T.to(acc.dtype), h.to(acc.dtype), beta=beta)


def _accumulate_bias_grad(acc: torch.Tensor, grad_logits: torch.Tensor, first: bool) -> None:
    """acc = (first) or += (later chunks) the column sums of grad_logits, in acc's dtype."""
    if first:
        torch.sum(grad_logits, 0, dtype=acc.dtype, out=acc)
    else:
        acc += grad_logits.sum(0, dtype=acc.dtype)


def _chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    loss: torch.Tensor | None,
    lse: torch.Tensor,
    scale: torch.Tensor | None,
    wanted: int,
    chunk: int,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_logits: str,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the token chunks. `loss` given → fill loss/lse; `wanted` (GRAD_* bits) → return
    (grad_hidden, grad_weight, grad_bias), each None unless wanted, with row i scaled by scale[i] (or scale[0]);
    the GEMM and accumulator of a gradient not wanted are skipped (a frozen LM head costs no [V, H] buffer). The
    first chunk writes the fp32 accumulators (so they start uninitialised; zeros only when there is no chunk)."""
    n, v = hidden.shape[0], weight.shape[0]
    acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    new_acc = torch.zeros if n == 0 else torch.empty
    want_bias = bool(wanted & GRAD_BIAS) and bias is not None
    grad_hidden = torch.empty_like(hidden) if wanted & GRAD_HIDDEN else None
    grad_weight = new_acc(weight.shape, device=weight.device, dtype=acc_dtype) if wanted & GRAD_WEIGHT else None
    grad_bias = new_acc(v, device=weight.device, dtype=acc_dtype) if want_bias else None
    grads = any(g is not None for g in (grad_hidden, grad_weight, grad_bias))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        h = hidden[start:stop]
        logits = _logits(h, weight, bias, chunk_logits)
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
        if grad_hidden is not None:
            torch.mm(dlogits, weight, out=grad_hidden[start:stop])
        if grad_weight is not None:
            _accumulate_weight_grad(grad_weight, dlogits, h, first=start == 0)
        if grad_bias is not None:
            _accumulate_bias_grad(grad_bias, dlogits, first=start == 0)
        del logits, dlogits
    grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
    grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
    return grad_hidden, grad_weight, grad_bias


def wanted_grads(needs_hidden: bool, needs_weight: bool, needs_bias: bool) -> int:
    """The GRAD_* bits of the gradients a backward needs."""
    return GRAD_HIDDEN * needs_hidden | GRAD_WEIGHT * needs_weight | GRAD_BIAS * needs_bias


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
    chunk_logits: str = "fp32",
    wanted: int = GRAD_ALL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss [N] and lse [N] (fp32); with grad_scale_mode 1 ("mean") or 2 ("sum") also the `wanted`
    gradients of the reduced loss (grad_hidden, grad_weight, grad_bias; empty tensors for the others, when mode
    is 0 or there is no bias)."""
    n = hidden.shape[0]
    loss = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    scale = None
    if grad_scale_mode:
        scale = reduction_grad_scale(target, ignore_index, {1: "mean", 2: "sum"}[grad_scale_mode])
    with torch.autocast(hidden.device.type, enabled=False):
        gh, gw, gb = _chunked(
            hidden,
            weight,
            bias,
            target,
            loss,
            lse,
            scale,
            wanted if grad_scale_mode else 0,
            chunk or chunk_rows(n, hidden.shape[1], weight.shape[0], weight.dtype, hidden.device, chunk_logits),
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            chunk_logits,
        )
    return loss, lse, *_or_empty(hidden, (gh, gw, gb))


def _or_empty(like: torch.Tensor, grads: tuple) -> tuple[torch.Tensor, ...]:
    """The gradients with each None as a new empty tensor (a custom op's outputs are tensors and may not alias)."""
    return tuple(like.new_empty(0) if g is None else g for g in grads)


@flce_fwd.register_fake
def _(
    hidden,
    weight,
    bias,
    target,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    grad_scale_mode,
    chunk,
    chunk_logits="fp32",
    wanted=GRAD_ALL,
):
    loss = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    return (loss, torch.empty_like(loss), *_fake_grads(hidden, weight, bias, wanted if grad_scale_mode else 0))


def _fake_grads(hidden, weight, bias, wanted: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes of (grad_hidden, grad_weight, grad_bias) for `wanted`: empty tensors for the others."""
    want_bias = wanted & GRAD_BIAS and bias is not None
    return (
        torch.empty_like(hidden) if wanted & GRAD_HIDDEN else hidden.new_empty(0),
        torch.empty_like(weight) if wanted & GRAD_WEIGHT else hidden.new_empty(0),
        torch.empty_like(bias) if want_bias else hidden.new_empty(0),
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
    chunk_logits: str = "fp32",
    wanted: int = GRAD_ALL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `wanted` gradients (empty tensors for the others), recomputing each chunk, row i scaled by
    grad_loss[i] (or grad_loss[0])."""
    n, h, v = hidden.shape[0], hidden.shape[1], weight.shape[0]
    with torch.autocast(hidden.device.type, enabled=False):
        gh, gw, gb = _chunked(
            hidden,
            weight,
            bias,
            target,
            None,
            lse,
            grad_loss.to(torch.float32).contiguous(),
            wanted,
            chunk or chunk_rows(n, h, v, weight.dtype, hidden.device, chunk_logits),
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            chunk_logits,
        )
    return _or_empty(hidden, (gh, gw, gb))


@flce_bwd.register_fake
def _(
    grad_loss,
    hidden,
    weight,
    bias,
    target,
    lse,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    chunk,
    chunk_logits="fp32",
    wanted=GRAD_ALL,
):
    return _fake_grads(hidden, weight, bias, wanted)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Reduced loss (fp32 scalar, or [N] for "none") of hidden @ weight.T + bias against target, and the
    per-row lse [N] (no gradient; for the z-loss report)."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        target,
        bias,
        grad_mode,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        chunk,
        chunk_logits,
    ):
        # needs_input_grad follows requires_grad even under torch.no_grad: `grad_mode` (the caller's
        # torch.is_grad_enabled()) tells whether a backward can follow at all
        needs = ctx.needs_input_grad
        wanted = wanted_grads(needs[0], needs[1], needs[3] and bias is not None) if grad_mode else 0
        fused = bool(wanted) and reduction in REDUCED and hidden.dtype in FUSED_DTYPES
        mode = {"mean": 1, "sum": 2}[reduction] if fused else 0
        options = (ignore_index, label_smoothing, z_loss, softcap)
        loss, lse, gh, gw, gb = torch.ops.mathforge.flce_fwd(
            hidden, weight, bias, target, *options, mode, chunk, chunk_logits, wanted
        )
        ctx.reduction, ctx.wanted, ctx.fused = reduction, wanted, fused
        ctx.args = (*options, chunk, chunk_logits, wanted)
        if fused:
            ctx.save_for_backward(gh, gw, gb)
        elif wanted:
            ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.mark_non_differentiable(lse)
        return reduce_rows(loss, target, ignore_index, reduction), lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        if not ctx.fused:  # recompute the chunks with each row's upstream gradient, applied in fp32
            hidden, weight, bias, target, lse = ctx.saved_tensors
            if ctx.reduction in REDUCED:  # one upstream scalar: the per-row gradient of the reduction, on device
                grad_out = grad_out.reshape(1).float() * reduction_grad_scale(target, ctx.args[0], ctx.reduction)
            gh, gw, gb = torch.ops.mathforge.flce_bwd(grad_out, hidden, weight, bias, target, lse, *ctx.args)
        else:  # gradients of the reduced loss were computed in the forward: scale them by the upstream scalar,
            # in place so no second [V, H] buffer appears (hence a second backward through this node is refused)
            if getattr(ctx, "consumed", False):
                raise RuntimeError(SECOND_BACKWARD)
            ctx.consumed = True
            gh, gw, gb = ctx.saved_tensors
            for bit, g in zip((GRAD_HIDDEN, GRAD_WEIGHT, GRAD_BIAS), (gh, gw, gb)):
                if not ctx.wanted & bit:
                    continue
                if torch.compiler.is_compiling():  # an opaque in-place op would be functionalised into a copy
                    g.mul_(grad_out.to(g.dtype))
                else:  # in fp32 on the device, and no pass over the gradient when the upstream is 1
                    torch.ops.mathforge.cross_entropy_grad_scale(g, grad_out)
        gh, gw, gb = (
            g if ctx.wanted & bit else None for bit, g in zip((GRAD_HIDDEN, GRAD_WEIGHT, GRAD_BIAS), (gh, gw, gb))
        )
        return gh, gw, None, gb, None, None, None, None, None, None, None, None


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
    chunk_logits: str = "fp32",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of `mathforge.kernels.fused_linear_cross_entropy` (same checks); `chunk` > 0 fixes the
    rows per chunk (0: `chunk_rows`); `chunk_logits` is the dtype of the chunk's logits: "fp32" (fp64 for
    fp64 inputs) or "input" (hidden's dtype: half the chunk memory for bf16/fp16, logits rounded to 16 bits
    before the fp32 loss; the same as "fp32" for fp32/fp64 inputs)."""
    if chunk_logits not in CHUNK_LOGITS:
        raise ValueError(f"chunk_logits must be one of {CHUNK_LOGITS}, got {chunk_logits!r}")
    if int(chunk) < 0:
        raise ValueError(f"chunk must be >= 0 (0: chosen by chunk_rows), got {chunk!r}")
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
        torch.is_grad_enabled(),
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        int(chunk),
        chunk_logits,
    )
    if not return_z_loss:
        return loss
    return loss, reduce_rows(z_loss_rows(lse, target, ignore_index, float(z_loss)), target, ignore_index, reduction)
