"""Triton RMSNorm, SwiGLU and RoPE (under TRITON_INTERPRET=1 on CPU) vs the float64 torch references,
gradients of every input included, in fp32 / fp16 / bf16."""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOL, compare

from mathforge.kernels import reference
from mathforge.kernels.rms_norm import rms_norm_triton
from mathforge.kernels.rope import apply_rope_triton
from mathforge.kernels.swiglu import swiglu_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,offset", [((37, 96), 0.0), ((3, 7, 130), 1.0), ((1, 5), 0.0)])
def test_rms_norm_matches_reference(shape, offset, dtype):
    x = _randn(*shape, seed=len(shape), dtype=dtype) * 2
    w = _randn(shape[-1], seed=7, dtype=dtype)
    compare(
        lambda xx, ww: rms_norm_triton(xx, ww, 1e-5, offset),
        lambda xx, ww: reference.rms_norm(xx, ww, 1e-5, offset),
        [x, w],
        TOL[dtype],
    )


def test_rms_norm_accepts_strided_rows():
    base = _randn(10, 64, seed=1)
    x, w = base[:, :48], _randn(48, seed=2)  # rows with stride 64
    compare(rms_norm_triton, reference.rms_norm, [x, w], TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 97), (2, 3, 1001)])
def test_swiglu_matches_reference(shape, dtype):
    gate, up = _randn(*shape, seed=1, dtype=dtype) * 3, _randn(*shape, seed=2, dtype=dtype)
    compare(swiglu_triton, reference.swiglu, [gate, up], TOL[dtype])


def _cos_sin(tokens: int, dim: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = torch.arange(tokens, dtype=torch.float64)[:, None] * inv
    ang = torch.cat((ang, ang), -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,q_heads,k_heads,dim", [(37, 4, 2, 16), (5, 3, 1, 10)])
def test_rope_matches_reference(tokens, q_heads, k_heads, dim, dtype):
    q, k = _randn(tokens, q_heads, dim, seed=1, dtype=dtype), _randn(tokens, k_heads, dim, seed=2, dtype=dtype)
    cos, sin = _cos_sin(tokens, dim, dtype)
    compare(
        lambda qq, kk: apply_rope_triton(qq, kk, cos, sin),
        lambda qq, kk: reference.apply_rope(qq, kk, cos.double(), sin.double()),
        [q, k],
        TOL[dtype],
    )


def test_rope_gradients_of_cos_sin_and_strided_qk():
    tokens, dim = 11, 12
    qkv = _randn(tokens, 7, dim, seed=3)
    q, k = qkv[:, :4], qkv[:, 4:6]  # views with a token stride of 7 heads
    cos, sin = _randn(tokens, dim, seed=4), _randn(tokens, dim, seed=5)  # arbitrary, halves differ
    compare(apply_rope_triton, reference.apply_rope, [q, k, cos, sin], TOL[torch.float32])


def test_rope_broadcast_cos_sin_gets_summed_gradient():
    q, k = _randn(6, 2, 8, seed=6), _randn(6, 1, 8, seed=7)
    cos, sin = _randn(1, 8, seed=8), _randn(1, 8, seed=9)
    compare(apply_rope_triton, reference.apply_rope, [q, k, cos, sin], TOL[torch.float32])
