"""Triton rotary embedding (RoPE) in the half-rotation layout of Llama / Hugging Face.

q, k: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim]. With x = (x1, x2) split into halves and
cos = (c1, c2), sin = (s1, s2) likewise:  y1 = x1·c1 − x2·s1,  y2 = x2·c2 + x1·s2  (HF passes c1 == c2).
The backward is the transposed rotation: dx1 = dy1·c1 + dy2·s2,  dx2 = dy2·c2 − dy1·s1; when cos/sin
need gradients, dc1 = Σ_heads dy1·x1, dc2 = Σ dy2·x2, ds1 = −Σ dy1·x2, ds2 = Σ dy2·x1 (over q and k).
One program handles BLOCK_T tokens of both q and k, so cos/sin are read once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mathforge.kernels._common import INTERPRETER_WARPS, interpreting, last_dim_contiguous
from mathforge.kernels.validation import check_apply_rope

# Checked against bench/results/sm90/kernel_resources.json (sm_90, q 32 heads, k 8, D 128; rule in _common.py): one
# token per program at 4 warps is 56 registers (78 with cos/sin gradients), no spills, 9 programs per SM; 8 tokens spill.
TILE_ELEMENTS = 2048  # tokens × (Hq + Hk) × D/2 per program: both halves of q and k stay in registers at 4 warps
TILE_ELEMENTS_INTERPRETER = 16384  # the interpreter runs a tile as one numpy op: bigger tiles, fewer programs
MAX_TOKENS_PER_PROGRAM = 64  # few heads: at most 64 tokens per program, so short inputs still fill the SMs
NUM_WARPS = 4  # the tile is small (≤ 2K elements): 4 warps = 16 elements per thread


@triton.jit
def _rope_one(
    x_ptr,
    xs_t,
    xs_h,
    y_ptr,
    ys_t,
    ys_h,
    dx_src_ptr,
    dxs_t,
    dxs_h,
    c1,
    c2,
    s1,
    s2,
    t,
    n_tokens,
    n_heads,
    half,
    BACKWARD: tl.constexpr,
    COS_GRAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rotates one tensor (q or k) for tokens t; returns its contributions to (dc1, dc2, ds1, ds2)."""
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (t < n_tokens)[:, None, None] & (h < n_heads)[None, :, None] & (d < half)[None, None, :]
    src = x_ptr + t[:, None, None] * xs_t + h[None, :, None] * xs_h + d[None, None, :]
    a1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    a2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # a = dy
        o1 = a1 * c1 + a2 * s2
        o2 = a2 * c2 - a1 * s1
    else:
        o1 = a1 * c1 - a2 * s1
        o2 = a2 * c2 + a1 * s2
    dst = y_ptr + t[:, None, None] * ys_t + h[None, :, None] * ys_h + d[None, None, :]
    tl.store(dst, o1, mask=mask)
    tl.store(dst + half, o2, mask=mask)
    dc1 = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    dc2, ds1, ds2 = dc1, dc1, dc1
    if COS_GRAD:  # x (the forward input) is needed for d(cos), d(sin)
        xsrc = dx_src_ptr + t[:, None, None] * dxs_t + h[None, :, None] * dxs_h + d[None, None, :]
        x1 = tl.load(xsrc, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xsrc + half, mask=mask, other=0.0).to(tl.float32)
        dc1, dc2 = tl.sum(a1 * x1, 1), tl.sum(a2 * x2, 1)
        ds1, ds2 = -tl.sum(a1 * x2, 1), tl.sum(a2 * x1, 1)
    return dc1, dc2, ds1, ds2


@triton.jit
def _rope_kernel(
    q_ptr,
    qs_t,
    qs_h,
    k_ptr,
    ks_t,
    ks_h,
    yq_ptr,
    yk_ptr,
    xq_ptr,
    xk_ptr,
    cos_ptr,
    sin_ptr,
    cs_t,
    dcos_ptr,
    dsin_ptr,
    n_tokens,
    n_qh,
    n_kh,
    half,
    BACKWARD: tl.constexpr,
    COS_GRAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    cmask = (t < n_tokens)[:, None] & (d < half)[None, :]
    coff = t[:, None] * cs_t + d[None, :]
    c1 = tl.load(cos_ptr + coff, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + coff + half, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + coff, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + coff + half, mask=cmask, other=0.0).to(tl.float32)
    qc1, qc2, qs1, qs2 = _rope_one(
        q_ptr,
        qs_t,
        qs_h,
        yq_ptr,
        n_qh * 2 * half,
        2 * half,
        xq_ptr,
        n_qh * 2 * half,
        2 * half,
        c1[:, None, :],
        c2[:, None, :],
        s1[:, None, :],
        s2[:, None, :],
        t,
        n_tokens,
        n_qh,
        half,
        BACKWARD,
        COS_GRAD,
        BLOCK_T,
        BLOCK_QH,
        BLOCK_D,
    )
    kc1, kc2, ks1, ks2 = _rope_one(
        k_ptr,
        ks_t,
        ks_h,
        yk_ptr,
        n_kh * 2 * half,
        2 * half,
        xk_ptr,
        n_kh * 2 * half,
        2 * half,
        c1[:, None, :],
        c2[:, None, :],
        s1[:, None, :],
        s2[:, None, :],
        t,
        n_tokens,
        n_kh,
        half,
        BACKWARD,
        COS_GRAD,
        BLOCK_T,
        BLOCK_KH,
        BLOCK_D,
    )
    if COS_GRAD:
        doff = t[:, None] * 2 * half + d[None, :]
        tl.store(dcos_ptr + doff, qc1 + kc1, mask=cmask)
        tl.store(dcos_ptr + doff + half, qc2 + kc2, mask=cmask)
        tl.store(dsin_ptr + doff, qs1 + ks1, mask=cmask)
        tl.store(dsin_ptr + doff + half, qs2 + ks2, mask=cmask)


def _launch(q, k, cos, sin, backward: bool, xq=None, xk=None):
    """Rotates (or, backward, un-rotates) q and k; returns (yq, yk, dcos, dsin) — dcos/dsin when xq is given."""
    q, k, cos, sin = (last_dim_contiguous(t) for t in (q, k, cos, sin))
    n_tokens, n_qh, dim = q.shape
    n_kh = k.shape[1]
    half = dim // 2
    yq, yk = torch.empty(q.shape, device=q.device, dtype=q.dtype), torch.empty(k.shape, device=k.device, dtype=k.dtype)
    cos_grad = xq is not None
    dcos = torch.empty((n_tokens, dim), device=q.device, dtype=torch.float32) if cos_grad else None
    dsin = torch.empty_like(dcos) if cos_grad else None
    block_qh, block_kh, block_d = (
        triton.next_power_of_2(n_qh),
        triton.next_power_of_2(n_kh),
        triton.next_power_of_2(half),
    )
    tile = TILE_ELEMENTS_INTERPRETER if interpreting() else TILE_ELEMENTS
    block_t = _tokens_per_program(block_qh + block_kh, block_d, tile)
    if n_tokens:
        if cos_grad:
            xq, xk = last_dim_contiguous(xq).contiguous(), last_dim_contiguous(xk).contiguous()
        _rope_kernel[(triton.cdiv(n_tokens, block_t),)](
            q,
            q.stride(0),
            q.stride(1),
            k,
            k.stride(0),
            k.stride(1),
            yq,
            yk,
            xq if cos_grad else q,
            xk if cos_grad else k,
            cos,
            sin,
            cos.stride(0),
            dcos if cos_grad else yq,
            dsin if cos_grad else yq,
            n_tokens,
            n_qh,
            n_kh,
            half,
            BACKWARD=backward,
            COS_GRAD=cos_grad,
            BLOCK_T=block_t,
            BLOCK_QH=block_qh,
            BLOCK_KH=block_kh,
            BLOCK_D=block_d,
            num_warps=INTERPRETER_WARPS if interpreting() else NUM_WARPS,
        )
    return yq, yk, dcos, dsin


def _tokens_per_program(heads: int, block_d: int, tile: int) -> int:
    """BLOCK_T: the power of 2 of tokens (≤ MAX_TOKENS_PER_PROGRAM, ≥ 1) whose `heads` × `block_d` fit in `tile`."""
    block_t = max(1, min(MAX_TOKENS_PER_PROGRAM, tile // (heads * block_d)))
    return 1 << (block_t.bit_length() - 1)


def launch_params(q_heads: int, kv_heads: int, head_dim: int) -> tuple[int, int]:
    """(BLOCK_T, num_warps) on a GPU for q with `q_heads` and k with `kv_heads` heads of `head_dim`."""
    heads = triton.next_power_of_2(q_heads) + triton.next_power_of_2(kv_heads)
    return _tokens_per_program(heads, triton.next_power_of_2(head_dim // 2), TILE_ELEMENTS), NUM_WARPS


@torch.library.custom_op("mathforge::rope_fwd", mutates_args=())
def rope_fwd(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    yq, yk, _, _ = _launch(q, k, cos, sin, backward=False)
    return yq, yk


@rope_fwd.register_fake
def _(q, k, cos, sin):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    )


@torch.library.custom_op("mathforge::rope_bwd", mutates_args=())
def rope_bwd(
    dq: torch.Tensor,
    dk: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q: torch.Tensor | None,
    k: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk and, when q and k are given, dcos, dsin (in cos/sin dtypes; empty otherwise)."""
    gq, gk, dcos, dsin = _launch(dq, dk, cos, sin, backward=True, xq=q, xk=k)
    if dcos is None:
        return gq, gk, cos.new_empty(0), sin.new_empty(0)
    return gq, gk, dcos.to(cos.dtype), dsin.to(sin.dtype)


@rope_bwd.register_fake
def _(dq, dk, cos, sin, q, k):
    grads = q is not None
    return (
        torch.empty_like(dq, memory_format=torch.contiguous_format),
        torch.empty_like(dk, memory_format=torch.contiguous_format),
        torch.empty(cos.shape, dtype=cos.dtype, device=cos.device) if grads else cos.new_empty(0),
        torch.empty(sin.shape, dtype=sin.dtype, device=sin.device) if grads else sin.new_empty(0),
    )


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.cos_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        ctx.save_for_backward(cos, sin, *((q, k) if ctx.cos_grad else ()))
        return torch.ops.mathforge.rope_fwd(q, k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin, *qk = ctx.saved_tensors
        q, k = qk if ctx.cos_grad else (None, None)
        gq, gk, dcos, dsin = torch.ops.mathforge.rope_bwd(dq, dk, cos, sin, q, k)
        return gq, gk, dcos if ctx.cos_grad else None, dsin if ctx.cos_grad else None


def apply_rope_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of `mathforge.kernels.apply_rope`: q [T, Hq, D], k [T, Hk, D], cos/sin [T, D] (or
    broadcastable to it: [1, D] or [D]); same checks as the public op."""
    check_apply_rope(q, k, cos, sin)
    shape = (q.shape[0], q.shape[2])
    return RoPEFunction.apply(q, k, cos.expand(shape), sin.expand(shape))
