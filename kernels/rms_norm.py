"""Triton RMSNorm: y = x / sqrt(mean(x², -1) + eps) · (offset + w); offset=1.0 gives Gemma's (1 + w);
weight None: y = x / sqrt(mean(x², -1) + eps) (no affine; HAS_WEIGHT=False, w' = 1 below).

Forward: a program normalises BLOCK_M rows at once (the whole row in registers) and stores rstd [N] fp32.
Backward: with w' = offset + w and x̂ = x·rstd,
    dx = rstd · (dy·w' − x̂ · mean(dy·w'·x̂)),   dw = Σ_rows dy·x̂,
each of a fixed number of programs walks its share of row tiles and keeps a fp32 partial dw, summed at
the end (no atomics, deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mathforge.kernels._common import INTERPRETER_WARPS, interpreting, last_dim_contiguous
from mathforge.kernels.validation import check_rms_norm

# Chosen from bench/results/sm90/kernel_resources.json (sm_90, bf16, H = 2048, 4096 (issue 11), 8192; rule in
# kernels/_common.py): one row per program for H ≥ 2048, no spills. Forward at 32 elements per thread (H = 4096:
# 4 warps, 54 registers, 9 programs per SM, 72 KB in flight); backward at 8 (H = 4096: 16 warps, 63 registers,
# 2 programs per SM). The previous 8192-element tile at 8 warps had 1 backward program per SM (162 registers).
# Not covered: H = 16384 puts 16 elements per thread in the backward at 32 warps and spills ~124 B/thread.
TILE_ELEMENTS = 2048  # elements per program tile (BLOCK_M rows × row, at least one row): x, dy stay in registers
TILE_ELEMENTS_INTERPRETER = 65536  # the interpreter runs a tile as one numpy op: bigger tiles, fewer programs
FWD_ELEMENTS_PER_THREAD = 32  # forward warps = tile / (32 · this), within 4..32
BWD_ELEMENTS_PER_THREAD = 8  # backward warps = tile / (32 · this), within 4..32
MAX_ROWS_PER_PROGRAM = 64  # narrow rows: at most 64 per program, so short inputs still spread over many SMs
BWD_PROGRAMS_PER_SM = 2  # backward: persistent programs per SM, as many as fit (2 at H = 4096; few dw partials)


@triton.jit
def _rms_fwd_kernel(
    x_ptr,
    x_stride,
    w_ptr,
    y_ptr,
    rstd_ptr,
    n_rows,
    n_cols,
    eps,
    offset,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) / n_cols + eps)
    y = x * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32) + offset
        y = y * w[None, :]
    tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], y, mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)


@triton.jit
def _rms_bwd_kernel(
    dy_ptr,
    dy_stride,
    x_ptr,
    x_stride,
    w_ptr,
    rstd_ptr,
    dx_ptr,
    dw_partial_ptr,
    n_rows,
    n_cols,
    offset,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32) + offset
    else:
        w = tl.full([BLOCK_N], 1.0, tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs):
        rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * dy_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        x_hat = x * rstd[:, None]
        dyw = dy * w[None, :]
        dot = tl.sum(dyw * x_hat, 1) / n_cols
        dx = rstd[:, None] * (dyw - x_hat * dot[:, None])
        tl.store(dx_ptr + rows[:, None] * n_cols + cols[None, :], dx, mask=mask)
        if HAS_WEIGHT:
            dw += tl.sum(dy * x_hat, 0)
    if HAS_WEIGHT:
        tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=col_mask)


def _tile_rows(n_cols: int, tile: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): whole rows of `n_cols` per `tile` elements (at least one, at most MAX_ROWS_PER_PROGRAM)."""
    block_n = triton.next_power_of_2(n_cols)
    return max(1, min(MAX_ROWS_PER_PROGRAM, tile // block_n)), block_n


def launch_params(n_cols: int, backward: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) on a GPU for rows of `n_cols`: rows per TILE_ELEMENTS tile, warps by tile."""
    block_m, block_n = _tile_rows(n_cols, TILE_ELEMENTS)
    per_thread = BWD_ELEMENTS_PER_THREAD if backward else FWD_ELEMENTS_PER_THREAD
    return block_m, block_n, min(32, max(4, block_m * block_n // (32 * per_thread)))


def _blocks(n_cols: int, backward: bool) -> tuple[int, int, int]:
    """`launch_params`, or the interpreter's big tiles at INTERPRETER_WARPS."""
    if not interpreting():
        return launch_params(n_cols, backward)
    return *_tile_rows(n_cols, TILE_ELEMENTS_INTERPRETER), INTERPRETER_WARPS


def _rows2d(t: torch.Tensor) -> torch.Tensor:
    return last_dim_contiguous(t.reshape(-1, t.shape[-1]))


@torch.library.custom_op("mathforge::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (x's dtype and shape) and rstd [rows] fp32."""
    x2 = _rows2d(x)
    n, h = x2.shape
    y = torch.empty((n, h), device=x.device, dtype=x.dtype)
    rstd = torch.empty(n, device=x.device, dtype=torch.float32)
    block_m, block_n, warps = _blocks(h, backward=False)
    if n:
        _rms_fwd_kernel[(triton.cdiv(n, block_m),)](
            x2,
            x2.stride(0),
            x2 if weight is None else weight,
            y,
            rstd,
            n,
            h,
            eps,
            offset,
            HAS_WEIGHT=weight is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=warps,
        )
    return y.view(x.shape), rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps, offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        x.numel() // x.shape[-1], dtype=torch.float32
    )


@torch.library.custom_op("mathforge::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (x's dtype) and dweight (weight's dtype; accumulated in fp32; empty when weight is None)."""
    x2, dy2 = _rows2d(x), _rows2d(dy)
    n, h = x2.shape
    block_m, block_n, warps = _blocks(h, backward=True)
    programs = _bwd_programs(triton.cdiv(n, block_m), x.device)
    dx = torch.empty((n, h), device=x.device, dtype=x.dtype)
    if weight is None:
        w, partial = x2, dx  # placeholders: HAS_WEIGHT=False reads no weight and writes no partial dw
    else:
        w, partial = weight, torch.zeros((max(programs, 1), h), device=x.device, dtype=torch.float32)
    if n:
        _rms_bwd_kernel[(programs,)](
            dy2,
            dy2.stride(0),
            x2,
            x2.stride(0),
            w,
            rstd,
            dx,
            partial,
            n,
            h,
            offset,
            HAS_WEIGHT=weight is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=warps,
        )
    if weight is None:
        return dx.view(x.shape), x.new_empty(0)
    return dx.view(x.shape), partial.sum(0).to(weight.dtype)


def _bwd_programs(tiles: int, device: torch.device) -> int:
    """Persistent backward programs: one per tile under the interpreter, else at most BWD_PROGRAMS_PER_SM per SM."""
    if interpreting() or device.type != "cuda":
        return tiles
    return min(tiles, BWD_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, offset):
    dw = x.new_empty(0) if weight is None else torch.empty_like(weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset):
        y, rstd = torch.ops.mathforge.rms_norm_fwd(x, weight, eps, offset)
        ctx.save_for_backward(x, weight, rstd)
        ctx.offset = offset
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.mathforge.rms_norm_bwd(dy, x, weight, rstd, ctx.offset)
        return dx, None if weight is None else dw, None, None


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, offset: float = 0.0
) -> torch.Tensor:
    """The Triton path of `mathforge.kernels.rms_norm` (same checks): x [..., H], weight [H] or None."""
    check_rms_norm(x, weight, eps, offset)
    return RMSNormFunction.apply(x, weight, float(eps), float(offset))
