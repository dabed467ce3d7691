"""Triton cross-entropy and fused linear cross-entropy (run under TRITON_INTERPRET=1 on CPU) vs the
float64 torch references: vocab sizes, ignore_index, reductions, smoothing, z-loss, softcap, bias, dtypes."""

from __future__ import annotations

import functools

import pytest
import torch
from _kernel_utils import TOL, compare, leaf

from mathforge.errors import DataError
from mathforge.kernels import reference
from mathforge.kernels.cross_entropy import cross_entropy_triton
from mathforge.kernels.fused_linear_cross_entropy import chunk_rows, fused_linear_cross_entropy_triton

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 4.0},
]


def _targets(n: int, v: int, seed: int, ignore_index: int = -100, p_ignore: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, v, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < p_ignore] = ignore_index
    return t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("v", [7, 1000])
def test_cross_entropy_matches_reference(v, options, reduction):
    n = 37  # not a multiple of any block
    logits = torch.randn(n, v, generator=torch.Generator().manual_seed(v)) * 3
    target = _targets(n, v, seed=v + 1)
    kw = dict(options, reduction=reduction)
    compare(
        functools.partial(cross_entropy_triton, target=target, **kw),
        functools.partial(reference.cross_entropy, target=target, **kw),
        [logits],
        TOL[torch.float32],
    )


def test_cross_entropy_large_prime_vocab_and_custom_ignore_index():
    v, n = 32003, 3
    logits = torch.randn(n, v, generator=torch.Generator().manual_seed(0)) * 2
    target = torch.tensor([v - 1, 7, 0])
    target[1] = 7  # a regular index equal to the custom ignore_index below
    kw = dict(ignore_index=7, reduction="sum", label_smoothing=0.1, z_loss=1e-3, softcap=10.0)
    compare(
        functools.partial(cross_entropy_triton, target=target, **kw),
        functools.partial(reference.cross_entropy, target=target, **kw),
        [logits],
        TOL[torch.float32],
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_entropy_low_precision(dtype):
    n, v = 19, 515
    logits = (torch.randn(n, v, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    target = _targets(n, v, seed=4)
    kw = dict(label_smoothing=0.05, z_loss=1e-3, reduction="mean")
    out = cross_entropy_triton(logits, target, **kw)
    assert out.dtype == torch.float32
    compare(
        functools.partial(cross_entropy_triton, target=target, **kw),
        functools.partial(reference.cross_entropy, target=target, **kw),
        [logits],
        TOL[dtype],
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_zero_grads(reduction):
    logits = leaf(torch.randn(6, 11))
    target = torch.full((6,), -100)
    loss = cross_entropy_triton(logits, target, reduction=reduction, z_loss=1e-2)
    assert not torch.isnan(loss).any()
    assert torch.equal(loss, torch.zeros_like(loss))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.equal(grad, torch.zeros_like(grad))
    hidden, weight = leaf(torch.randn(6, 5)), leaf(torch.randn(11, 5))
    loss = fused_linear_cross_entropy_triton(hidden, weight, target, reduction=reduction, chunk=4)
    assert torch.equal(loss, torch.zeros_like(loss))
    grads = torch.autograd.grad(loss.sum(), (hidden, weight))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_out_of_range_target_is_nan_without_check_and_an_error_with_it(monkeypatch):
    logits = torch.randn(4, 9)
    target = torch.tensor([1, 9, -100, 3])
    loss = cross_entropy_triton(logits, target, reduction="none")
    assert torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2, 3]]).any()
    from mathforge.kernels import cross_entropy, fused_linear_cross_entropy

    monkeypatch.setenv("MATHFORGE_CHECK", "1")
    with pytest.raises(DataError, match=r"target\[1\] = 9 is out of range for vocab size 9"):
        cross_entropy(logits, target)
    with pytest.raises(DataError, match="out of range"):
        fused_linear_cross_entropy(torch.randn(4, 3), torch.randn(9, 3), torch.tensor([0, 1, 2, -5]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS[::2], ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("v,chunk", [(7, 5), (1009, 16), (1009, 0)])
def test_fused_linear_cross_entropy_matches_reference(v, chunk, options, reduction):
    n, h = 37, 24
    gen = torch.Generator().manual_seed(v + chunk)
    hidden, weight, bias = (
        torch.randn(n, h, generator=gen),
        torch.randn(v, h, generator=gen) / 3,
        torch.randn(v, generator=gen),
    )
    target = _targets(n, v, seed=v)
    kw = dict(options, reduction=reduction)
    compare(
        lambda hh, ww, bb: fused_linear_cross_entropy_triton(hh, ww, target, bias=bb, chunk=chunk, **kw),
        lambda hh, ww, bb: reference.fused_linear_cross_entropy(hh, ww, target, bias=bb, **kw),
        [hidden, weight, bias],
        TOL[torch.float32],
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_linear_cross_entropy_low_precision_without_bias(dtype):
    n, h, v = 29, 32, 263
    gen = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(n, h, generator=gen).to(dtype), (torch.randn(v, h, generator=gen) / 4).to(dtype)
    target = _targets(n, v, seed=6)
    kw = dict(label_smoothing=0.1, softcap=5.0, reduction="mean")
    compare(
        lambda hh, ww: fused_linear_cross_entropy_triton(hh, ww, target, chunk=8, **kw),
        lambda hh, ww: reference.fused_linear_cross_entropy(hh, ww, target, **kw),
        [hidden, weight],
        TOL[dtype],
    )


def test_fused_linear_cross_entropy_scales_by_the_upstream_scalar():
    n, h, v = 10, 8, 13
    hidden, weight = leaf(torch.randn(n, h)), leaf(torch.randn(v, h))
    target = _targets(n, v, seed=9)
    loss = fused_linear_cross_entropy_triton(hidden, weight, target, chunk=3)
    grads = torch.autograd.grad(loss * 2.5, (hidden, weight))
    h64, w64 = leaf(hidden, torch.float64), leaf(weight, torch.float64)
    ref = torch.autograd.grad(reference.fused_linear_cross_entropy(h64, w64, target) * 2.5, (h64, w64))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


def test_chunk_rows_bounds_the_chunk_buffers():
    rows = chunk_rows(16384, 4096, 128256, torch.bfloat16, torch.device("cpu"))
    assert 1 <= rows <= 16384 and rows * 128256 * 6 <= 64 << 20
    assert chunk_rows(5, 8, 7, torch.float32, torch.device("cpu")) == 5


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_linear_cross_entropy_z_loss_report_across_chunks(reduction):
    n, h, v = 23, 8, 31
    gen = torch.Generator().manual_seed(11)
    hidden, weight = leaf(torch.randn(n, h, generator=gen) * 2), leaf(torch.randn(v, h, generator=gen))
    target = _targets(n, v, seed=12)
    kw = dict(reduction=reduction, z_loss=1e-2, softcap=8.0, return_z_loss=True)
    loss, z = fused_linear_cross_entropy_triton(hidden, weight, target, chunk=5, **kw)
    ref_loss, ref_z = reference.fused_linear_cross_entropy(hidden.double(), weight.double(), target, **kw)
    torch.testing.assert_close(z.double(), ref_z, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    assert not z.requires_grad and z.shape == loss.shape
    if reduction == "none":
        assert torch.all(z[target == -100] == 0) and torch.all(z[target != -100] > 0)
