"""Contract tests of the public ops: every case runs through both paths — the torch reference (the CPU
path) and the Triton kernels (forced on CPU under TRITON_INTERPRET=1 by patching `functional.use_triton`)
— and expects the same outcome: values (against the float64 reference), output and gradient dtypes for
valid inputs; the same exception and message for invalid ones. Also: return_z_loss, autocast, a second
backward, softcap precision for tiny logits and rms_norm without a weight."""

from __future__ import annotations

import functools

import pytest
import torch
from _kernel_utils import TOL, compare, leaf

import mathforge.kernels as K
from mathforge.kernels import functional, reference

PATHS = ["reference", "triton"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Forces the path every public op takes (the Triton one runs under the interpreter on CPU)."""
    monkeypatch.setattr(functional, "use_triton", lambda t: request.param == "triton")
    return request.param


def _t(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def _target(n: int, v: int, seed: int = 1, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    t = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))
    t[::3] = -100
    return t.to(dtype)


LONG = torch.int64

# (id, call, exception, message regex): each must fail identically on both paths
INVALID = [
    (
        "ce-3d-logits",
        lambda: K.cross_entropy(_t(2, 3, 5), torch.zeros(2, 3, dtype=LONG)),
        ValueError,
        r"logits \(shape \(2, 3, 5\), dtype torch.float32.*must be 2-D \[N, V\]",
    ),
    (
        "ce-target-shape",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(3, dtype=LONG)),
        ValueError,
        r"target \(shape \(3,\).*must be \[N\] with N = 4",
    ),
    (
        "ce-float-target",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(4)),
        ValueError,
        r"target must be an integer tensor.*dtype torch.float32",
    ),
    (
        "ce-int-logits",
        lambda: K.cross_entropy(torch.zeros(4, 5, dtype=LONG), torch.zeros(4, dtype=LONG)),
        ValueError,
        r"logits \(shape \(4, 5\), dtype torch.int64.*dtype must be one of float16, bfloat16",
    ),
    (
        "ce-reduction",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(4, dtype=LONG), reduction="avg"),
        ValueError,
        r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'",
    ),
    (
        "ce-softcap",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(4, dtype=LONG), softcap=0.0),
        ValueError,
        r"softcap must be None or > 0, got 0.0",
    ),
    (
        "ce-smoothing",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(4, dtype=LONG), label_smoothing=1.5),
        ValueError,
        r"label_smoothing must be in \[0, 1\]",
    ),
    (
        "ce-z-loss",
        lambda: K.cross_entropy(_t(4, 5), torch.zeros(4, dtype=LONG), z_loss=-1.0),
        ValueError,
        r"z_loss must be >= 0",
    ),
    (
        "flce-mixed-dtypes",
        lambda: K.fused_linear_cross_entropy(_t(5, 3), _t(7, 3, dtype=torch.bfloat16), torch.zeros(5, dtype=LONG)),
        ValueError,
        r"weight \(shape \(7, 3\), dtype torch.bfloat16.*must have the dtype of hidden \(shape \(5, 3\), dtype torch.float32",
    ),
    (
        "flce-3d-hidden",
        lambda: K.fused_linear_cross_entropy(_t(2, 5, 3), _t(7, 3), torch.zeros(2, 5, dtype=LONG)),
        ValueError,
        r"hidden \(shape \(2, 5, 3\).*must be 2-D \[N, H\]",
    ),
    (
        "flce-weight-h",
        lambda: K.fused_linear_cross_entropy(_t(5, 3), _t(7, 4), torch.zeros(5, dtype=LONG)),
        ValueError,
        r"weight \(shape \(7, 4\).*must be \[V, H\] with H = 3",
    ),
    (
        "flce-bias-shape",
        lambda: K.fused_linear_cross_entropy(_t(5, 3), _t(7, 3), torch.zeros(5, dtype=LONG), bias=_t(6)),
        ValueError,
        r"bias \(shape \(6,\).*must be \[V\] with V = 7",
    ),
    (
        "flce-bias-dtype",
        lambda: K.fused_linear_cross_entropy(
            _t(5, 3), _t(7, 3), torch.zeros(5, dtype=LONG), bias=_t(7, dtype=torch.float64)
        ),
        ValueError,
        r"bias \(shape \(7,\), dtype torch.float64.*dtype of weight",
    ),
    (
        "flce-target-shape",
        lambda: K.fused_linear_cross_entropy(_t(5, 3), _t(7, 3), torch.zeros(4, dtype=LONG)),
        ValueError,
        r"target \(shape \(4,\).*N = 5",
    ),
    (
        "rms-broadcast-weight",
        lambda: K.rms_norm(_t(4, 6), _t(1)),
        ValueError,
        r"weight \(shape \(1,\).*must be \[H\] with H = 6",
    ),
    ("rms-2d-weight", lambda: K.rms_norm(_t(4, 6), _t(1, 6)), ValueError, r"weight \(shape \(1, 6\).*H = 6"),
    (
        "rms-none-offset",
        lambda: K.rms_norm(_t(4, 6), None, 1e-6, 1.0),
        ValueError,
        r"offset=1.0 scales a weight; with weight=None",
    ),
    (
        "swiglu-broadcast-up",
        lambda: K.swiglu(_t(4, 6), _t(6)),
        ValueError,
        r"up \(shape \(6,\).*must have the shape of gate \(shape \(4, 6\)",
    ),
    (
        "rope-odd-head-dim",
        lambda: K.apply_rope(_t(4, 2, 5), _t(4, 1, 5), _t(4, 5), _t(4, 5)),
        ValueError,
        r"q \(shape \(4, 2, 5\).*head_dim 5 must be even",
    ),
    (
        "rope-k-tokens",
        lambda: K.apply_rope(_t(4, 2, 8), _t(3, 1, 8), _t(4, 8), _t(4, 8)),
        ValueError,
        r"k \(shape \(3, 1, 8\).*T = 4, D = 8",
    ),
    (
        "rope-cos-shape",
        lambda: K.apply_rope(_t(4, 2, 8), _t(4, 1, 8), _t(4, 4), _t(4, 4)),
        ValueError,
        r"cos \(shape \(4, 4\).*must be \[T, D\] = \[4, 8\]",
    ),
    (
        "rope-sin-shape",
        lambda: K.apply_rope(_t(4, 2, 8), _t(4, 1, 8), _t(4, 8), _t(1, 8)),
        ValueError,
        r"sin \(shape \(1, 8\).*must have the shape of cos",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_inputs_fail_the_same_way_on_both_paths(path, call, error, message):
    with pytest.raises(error, match=message):
        call()


CE_OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0)

# (id, our call on the inputs, float64 reference, inputs, tolerance dtype, output dtype or None = inputs[0]'s)
VALID = [
    (
        "ce-fp32",
        lambda x: K.cross_entropy(x, _target(9, 13), **CE_OPTIONS),
        lambda x: reference.cross_entropy(x, _target(9, 13), **CE_OPTIONS),
        [_t(9, 13, scale=3)],
        torch.float32,
        torch.float32,
    ),
    (
        "ce-fp64-gives-fp32",
        lambda x: K.cross_entropy(x, _target(9, 13), reduction="none"),
        lambda x: reference.cross_entropy(x, _target(9, 13), reduction="none"),
        [_t(9, 13, dtype=torch.float64)],
        torch.float32,
        torch.float32,
    ),
    (
        "ce-bf16-int32-target",
        lambda x: K.cross_entropy(x, _target(9, 13, dtype=torch.int32), reduction="sum"),
        lambda x: reference.cross_entropy(x, _target(9, 13), reduction="sum"),
        [_t(9, 13, dtype=torch.bfloat16)],
        torch.bfloat16,
        torch.float32,
    ),
    (
        "flce-bias-sum",
        lambda h, w, b: K.fused_linear_cross_entropy(h, w, _target(7, 11), bias=b, reduction="sum", **CE_OPTIONS),
        lambda h, w, b: reference.fused_linear_cross_entropy(
            h, w, _target(7, 11), bias=b, reduction="sum", **CE_OPTIONS
        ),
        [_t(7, 5, seed=1), _t(11, 5, seed=2), _t(11, seed=3)],
        torch.float32,
        torch.float32,
    ),
    (
        "flce-fp64-gives-fp32",
        lambda h, w: K.fused_linear_cross_entropy(h, w, _target(7, 11), reduction="none"),
        lambda h, w: reference.fused_linear_cross_entropy(h, w, _target(7, 11), reduction="none"),
        [_t(7, 5, seed=1, dtype=torch.float64), _t(11, 5, seed=2, dtype=torch.float64)],
        torch.float32,
        torch.float32,
    ),
    (
        "flce-bf16",
        lambda h, w: K.fused_linear_cross_entropy(h, w, _target(7, 11)),
        lambda h, w: reference.fused_linear_cross_entropy(h, w, _target(7, 11)),
        [_t(7, 5, seed=1, dtype=torch.bfloat16), _t(11, 5, seed=2, dtype=torch.bfloat16)],
        torch.bfloat16,
        torch.float32,
    ),
    (
        "rms-no-weight-3d",
        lambda x: K.rms_norm(x, None, 1e-5),
        lambda x: reference.rms_norm(x, None, 1e-5),
        [_t(2, 5, 12, scale=2)],
        torch.float32,
        None,
    ),
    (
        "rms-offset-fp16",
        lambda x, w: K.rms_norm(x, w, 1e-5, 1.0),
        lambda x, w: reference.rms_norm(x, w, 1e-5, 1.0),
        [_t(6, 12, dtype=torch.float16), _t(12, seed=4, dtype=torch.float16)],
        torch.float16,
        None,
    ),
    (
        "rms-fp32-weight-bf16-x",
        K.rms_norm,
        reference.rms_norm,
        [_t(6, 12, dtype=torch.bfloat16), _t(12, seed=4)],
        torch.bfloat16,
        None,
    ),
    (
        "swiglu-bf16",
        K.swiglu,
        reference.swiglu,
        [_t(5, 9, dtype=torch.bfloat16), _t(5, 9, seed=5, dtype=torch.bfloat16)],
        torch.bfloat16,
        None,
    ),
    (
        "rope-table",
        K.apply_rope,
        reference.apply_rope,
        [_t(5, 3, 8), _t(5, 1, 8, seed=1), _t(5, 8, seed=2), _t(5, 8, seed=3)],
        torch.float32,
        None,
    ),
    (
        "rope-broadcast-1d",
        K.apply_rope,
        reference.apply_rope,
        [_t(5, 2, 6), _t(5, 2, 6, seed=1), _t(1, 6, seed=2), _t(1, 6, seed=3)],
        torch.float32,
        None,
    ),
]


@pytest.mark.parametrize(
    ("ours", "ref", "inputs", "tol", "out_dtype"), [c[1:] for c in VALID], ids=[c[0] for c in VALID]
)
def test_valid_inputs_match_the_reference_on_both_paths(path, ours, ref, inputs, tol, out_dtype):
    out = ours(*inputs)
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == (out_dtype or inputs[0].dtype)
    compare(ours, ref, inputs, TOL[tol])


def test_rms_norm_without_weight_is_x_times_rstd(path):
    x = leaf(_t(7, 33, scale=3))
    y = K.rms_norm(x, None, 1e-6)
    x64 = x.detach().double()
    expected = x64 / (x64.square().mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(y.double(), expected, rtol=2e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(y.square().sum(), x)  # d/dx of |x·rstd|² = (sum of x̂²)' ≈ 0 up to eps
    assert grad.abs().max() < 1e-4


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_return_z_loss_is_the_z_term_of_the_loss(path, reduction):
    n, h, v, z_loss = 12, 6, 17, 1e-2
    hidden, weight, target = _t(n, h, seed=1, scale=2), _t(v, h, seed=2), _target(n, v)
    logits = hidden @ weight.T
    for call, ref_call, inputs in (
        (K.cross_entropy, reference.cross_entropy, (logits,)),
        (K.fused_linear_cross_entropy, reference.fused_linear_cross_entropy, (hidden, weight)),
    ):
        kw = dict(reduction=reduction, label_smoothing=0.1, softcap=5.0)
        loss, z = call(*(leaf(t) for t in inputs), target, z_loss=z_loss, return_z_loss=True, **kw)
        ref_loss, ref_z = ref_call(*(t.double() for t in inputs), target, z_loss=z_loss, return_z_loss=True, **kw)
        assert loss.dtype == z.dtype == torch.float32 and z.shape == loss.shape
        assert loss.requires_grad and not z.requires_grad
        torch.testing.assert_close(z.double(), ref_z, rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-5, atol=1e-6)
        without = call(*inputs, target, z_loss=0.0, **kw)  # the loss minus its z-term is the plain loss
        torch.testing.assert_close(loss.detach() - z, without, rtol=2e-5, atol=1e-6)
        assert float(z.sum()) > 0
        _, zero = call(*inputs, target, return_z_loss=True, **kw)
        assert torch.equal(zero, torch.zeros_like(zero))


def test_fused_linear_ce_under_autocast_keeps_fp32_logits(path):
    n, h, v = 16, 64, 50
    hidden, weight, target = leaf(_t(n, h, seed=1)), leaf(_t(v, h, seed=2, scale=0.3)), _target(n, v)
    ref = reference.fused_linear_cross_entropy(hidden, weight, target)  # fp32, no autocast
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = torch.nn.functional.cross_entropy(hidden @ weight.T, target)  # bf16 logits: what to avoid
        loss = K.fused_linear_cross_entropy(hidden, weight, target)
    grads = torch.autograd.grad(loss, (hidden, weight))  # backward outside autocast, as torch recommends
    ref, naive, value = ref.item(), naive.item(), loss.item()
    assert abs(naive - ref) > 1e-4 * abs(ref), "the case must be sensitive to bf16 logits"
    assert loss.dtype == torch.float32
    assert abs(value - ref) <= 2e-6 * abs(ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_is_refused_on_both_paths(path, reduction):
    hidden, weight, target = leaf(_t(6, 4)), leaf(_t(9, 4, seed=1)), _target(6, 9)
    loss = K.fused_linear_cross_entropy(hidden, weight, target, reduction=reduction)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward through the same loss twice is not supported"):
        loss.backward()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy_second_backward_is_refused_on_both_paths(path, reduction, dtype):
    """One contract whatever the path and dtype (the Triton fp16 path recomputes, the others scale in place)."""
    logits, target = leaf(_t(6, 9).to(dtype)), _target(6, 9)
    loss = K.cross_entropy(logits, target, reduction=reduction)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    exact = logits.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(reference.cross_entropy(exact, target, reduction=reduction), exact)
    torch.testing.assert_close(first.double(), expected, rtol=TOL[dtype], atol=TOL[dtype])
    with pytest.raises(RuntimeError, match="cross_entropy: backward through the same loss twice is not supported"):
        loss.backward()


def test_reduction_none_allows_two_backwards_on_both_paths(path):
    hidden, weight, target = leaf(_t(6, 4)), leaf(_t(9, 4, seed=1)), _target(6, 9)
    loss = K.fused_linear_cross_entropy(hidden, weight, target, reduction="none").sum()
    first = torch.autograd.grad(loss, (hidden, weight), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, weight))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_softcap_keeps_relative_precision_for_tiny_logits(path):
    """With V = 1 the z-loss term is exactly z_loss·(c·tanh(x/c))², so it exposes the soft-cap's relative error."""
    c = 30.0
    y = torch.tensor([1e-6, -3e-6, 1e-5, 3e-5, -1e-4, 3e-4, 1e-3, -3e-3, 1e-2, 0.1, -0.5, 0.55, 0.6, 2.0, -10.0])
    logits = (c * y).to(torch.float32)[:, None]
    _, z = K.cross_entropy(
        logits, torch.zeros(len(y), dtype=LONG), z_loss=1.0, softcap=c, reduction="none", return_z_loss=True
    )
    capped = z.double().sqrt()
    exact = c * torch.tanh(logits.double()[:, 0] / c).abs()
    rel = ((capped - exact).abs() / exact).max().item()
    assert rel < 5e-7, rel  # the former 1 − 2/(exp(2y) + 1) was off by up to ~8% at |y| = 1e-6


def test_cross_entropy_softcap_tiny_logits_matches_reference(path):
    logits = _t(5, 64, scale=1e-4)
    target = _target(5, 64)
    kw = dict(softcap=20.0, label_smoothing=0.3, reduction="none")
    compare(
        functools.partial(K.cross_entropy, target=target, **kw),
        functools.partial(reference.cross_entropy, target=target, **kw),
        [logits],
        1e-6,
    )
