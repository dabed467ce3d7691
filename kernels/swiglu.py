"""Triton SwiGLU: y = silu(gate) · up, elementwise, computed in fp32.

Backward with s = sigmoid(gate): dgate = dy · up · s · (1 + gate·(1 − s)),  dup = dy · gate · s.
Memory-bound: the forward reads 2 and writes 1 tensor, the backward reads 3 and writes 2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mathforge.kernels._common import INTERPRETER_WARPS, interpreting
from mathforge.kernels.validation import check_swiglu

# Chosen from bench/results/sm90/kernel_resources.json (sm_90; rule in kernels/_common.py): 1024 elements at 4 warps
# (8 per thread) is 32 registers forward and backward, no spills, 16 programs = 64 warps per SM (full occupancy),
# 64 KB (forward) / 96 KB (backward) in flight per SM. The previous 2048 at 8 warps had 8 programs per SM.
BLOCK_ELEMENTS = 1024  # elements per program
BLOCK_ELEMENTS_INTERPRETER = 65536  # the interpreter runs a block as one numpy op: bigger blocks, fewer programs
NUM_WARPS = 4


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, g * tl.sigmoid(g) * u, mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dy_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(dg_ptr + offs, dy * u * s * (1.0 + g * (1.0 - s)), mask=mask)
    tl.store(du_ptr + offs, dy * g * s, mask=mask)


def _block() -> int:
    return BLOCK_ELEMENTS_INTERPRETER if interpreting() else BLOCK_ELEMENTS


def _warps() -> int:
    return INTERPRETER_WARPS if interpreting() else NUM_WARPS


@torch.library.custom_op("mathforge::swiglu_fwd", mutates_args=())
def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    n, block = gate.numel(), _block()
    if n:
        _swiglu_fwd_kernel[(triton.cdiv(n, block),)](gate, up, y, n, BLOCK=block, num_warps=_warps())
    return y


@swiglu_fwd.register_fake
def _(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("mathforge::swiglu_bwd", mutates_args=())
def swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n, block = gate.numel(), _block()
    if n:
        _swiglu_bwd_kernel[(triton.cdiv(n, block),)](dy, gate, up, dg, du, n, BLOCK=block, num_warps=_warps())
    return dg, du


@swiglu_bwd.register_fake
def _(dy, gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format), torch.empty_like(
        up, memory_format=torch.contiguous_format
    )


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.ops.mathforge.swiglu_fwd(gate, up)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        return torch.ops.mathforge.swiglu_bwd(dy, gate, up)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The Triton path of `mathforge.kernels.swiglu` (same checks): gate and up of the same shape."""
    check_swiglu(gate, up)
    return SwiGLUFunction.apply(gate, up)
