"""pytest-benchmark benchmarks of the kernel ops (forward + backward through the public API):
`pytest bench/benchmarks --benchmark-only [--benchmark-autosave] [--benchmark-compare --benchmark-compare-fail=median:5%]`.
On CUDA: bf16 LLM-sized inputs through the Triton kernels, each round ending in torch.cuda.synchronize().
On CPU: small fp32 inputs through the torch references (the CPU path)."""

from __future__ import annotations

import pytest
import torch

import mathforge.kernels as K

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
N = 16384 if CUDA else 512


def _leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=DEVICE) * scale).to(DTYPE).requires_grad_()


def _run(benchmark, loss_fn, inputs):
    def step():
        for t in inputs:
            t.grad = None
        out = loss_fn()
        (sum(o.float().sum() for o in out) if isinstance(out, tuple) else out.float().sum()).backward()
        if CUDA:
            torch.cuda.synchronize()

    benchmark(step)


@pytest.mark.parametrize("vocab", [32000, 128256] if CUDA else [32000])
def test_cross_entropy(benchmark, vocab):
    logits, target = _leaf(N, vocab), torch.randint(0, vocab, (N,), device=DEVICE)
    _run(benchmark, lambda: K.cross_entropy(logits, target), [logits])


@pytest.mark.parametrize("hidden,vocab", [(4096, 128256)] if CUDA else [(256, 32000)])
def test_fused_linear_cross_entropy(benchmark, hidden, vocab):
    n = N if CUDA else 256
    h, w = _leaf(n, hidden), _leaf(vocab, hidden, scale=hidden**-0.5)
    target = torch.randint(0, vocab, (n,), device=DEVICE)
    _run(benchmark, lambda: K.fused_linear_cross_entropy(h, w, target), [h, w])


def test_rms_norm(benchmark):
    x = _leaf(N, 4096 if CUDA else 1024)
    w = torch.rand(x.shape[-1], device=DEVICE, dtype=DTYPE).requires_grad_()
    _run(benchmark, lambda: K.rms_norm(x, w), [x, w])


def test_swiglu(benchmark):
    gate, up = _leaf(N, 14336 if CUDA else 2816), _leaf(N, 14336 if CUDA else 2816)
    _run(benchmark, lambda: K.swiglu(gate, up), [gate, up])


def test_apply_rope(benchmark):
    q, k = _leaf(N, 32, 128), _leaf(N, 8, 128)
    ang = torch.arange(N, device=DEVICE, dtype=torch.float32)[:, None] * torch.rand(64, device=DEVICE)
    ang = torch.cat((ang, ang), -1)
    cos, sin = ang.cos().to(DTYPE), ang.sin().to(DTYPE)
    _run(benchmark, lambda: K.apply_rope(q, k, cos, sin), [q, k])
