"""Which path the Triton fused linear cross-entropy takes (under TRITON_INTERPRET=1 on CPU), checked against the
float64 reference: gradients in the forward only when a backward can follow, fp16 inputs recomputing in the
backward so that a loss scale is applied before rounding, and the upstream scalar applied in fp32."""

from __future__ import annotations

import importlib

import pytest
import torch
from _kernel_utils import leaf, record_launches

from mathforge.kernels import reference

ce = importlib.import_module("mathforge.kernels.cross_entropy")
flce = importlib.import_module("mathforge.kernels.fused_linear_cross_entropy")


@pytest.fixture
def launches(monkeypatch):
    """(forward, backward) of every `_ce_kernel` launch the fused linear CE makes, and every upstream scale."""
    return record_launches(monkeypatch, flce)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _inputs(n, h, v, seed, dtype=torch.float32, p_ignore=0.25, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 0.3
    target = torch.randint(0, v, (n,), generator=gen)
    target[torch.rand(n, generator=gen) < p_ignore] = -100
    return hidden.to(device, dtype), weight.to(device, dtype), target.to(device)


def _reference_grads(hidden, weight, target, upstream: float, reduction: str = "mean"):
    h64, w64 = leaf(hidden, torch.float64), leaf(weight, torch.float64)
    loss = reference.fused_linear_cross_entropy(h64, w64, target, reduction=reduction)
    (loss * upstream).backward()
    return loss.detach(), h64.grad, w64.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detached"])
def test_forward_without_a_backward_computes_no_gradient(how, device, launches):
    """Under torch.no_grad the inputs still require grad (autograd's needs_input_grad says True): the forward
    must not do the two gradient GEMMs and fill a [V, H] accumulator that nothing will read."""
    hidden, weight, target = _inputs(24, 8, 40, seed=1, device=device)
    if how == "detached":
        loss = flce.fused_linear_cross_entropy_triton(hidden, weight, target)
    else:
        with torch.no_grad() if how == "no_grad" else torch.inference_mode():
            loss = flce.fused_linear_cross_entropy_triton(leaf(hidden), leaf(weight), target)
    assert launches["ce"] == [(True, False)], "forward only: no gradient written"
    assert loss.grad_fn is None
    ref = reference.fused_linear_cross_entropy(hidden.double(), weight.double(), target)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("upstream", [1.0, 3.5, -0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_gradients_come_from_the_forward_and_take_the_upstream(reduction, upstream, launches):
    hidden, weight, target = _inputs(40, 12, 70, seed=2)
    h, w = leaf(hidden), leaf(weight)
    loss = flce.fused_linear_cross_entropy_triton(h, w, target, reduction=reduction)
    (loss * upstream).backward()
    ref_loss, ref_gh, ref_gw = _reference_grads(hidden, weight, target, upstream, reduction)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad.double(), ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), ref_gw, rtol=1e-4, atol=1e-6)
    assert launches["ce"] == [(True, True)], "one pass: loss and gradient in the forward"
    assert launches["scale"] == [upstream] * 2, "grad_hidden and grad_weight scaled by the upstream, once each"


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_gradients_take_the_loss_scale_before_rounding(device, launches):
    """GradScaler's first scale is 2^16, one past fp16's largest finite value (65504): multiplying fp16
    gradients by it in fp16 gave inf (NaN after the GEMMs), and dividing by n_valid before rounding to fp16 kept
    only the large entries. fp16 inputs recompute in the backward with upstream/n_valid applied in fp32, so the
    error is that of one fp16 rounding of the scaled gradient, smaller than torch's own fp16 GEMMs' here."""
    n, h, v = 512, 32, 1024
    hidden, weight, target = _inputs(n, h, v, seed=3, dtype=torch.float16, p_ignore=0.1, device=device)
    _, ref_gh, ref_gw = _reference_grads(hidden, weight, target, 1.0)
    hh, ww = leaf(hidden), leaf(weight)
    (flce.fused_linear_cross_entropy_triton(hh, ww, target) * 2.0**16).backward()
    assert launches["ce"] == [(True, False), (False, True)], "fp16: forward, then a recomputing backward"
    assert hh.grad.dtype == ww.grad.dtype == torch.float16
    assert torch.isfinite(hh.grad).all() and torch.isfinite(ww.grad).all()
    # torch's fp16 path on the same inputs: fp16 GEMMs, fp32 softmax, the scaled gradient rounded to fp16
    th, tw = leaf(hidden), leaf(weight)
    (torch.nn.functional.cross_entropy((th @ tw.T).float(), target) * 2.0**16).backward()
    for name, ours, torch_fp16, ref in (("hidden", hh.grad, th.grad, ref_gh), ("weight", ww.grad, tw.grad, ref_gw)):
        err, torch_err = _rel(ours.double() / 2.0**16, ref), _rel(torch_fp16.double() / 2.0**16, ref)
        assert err < 2e-3 and err <= 1.5 * torch_err, f"grad_{name}: {err:.3g} (torch fp16: {torch_err:.3g})"


def test_fp16_sum_with_all_rows_ignored_gives_zero_gradients():
    hidden, weight, target = _inputs(16, 8, 30, seed=4, dtype=torch.float16)
    target[:] = -100
    hh, ww = leaf(hidden), leaf(weight)
    loss = flce.fused_linear_cross_entropy_triton(hh, ww, target, reduction="sum")
    (loss * 2.0**16).backward()
    assert loss.item() == 0.0
    assert hh.grad.abs().max().item() == 0.0 and ww.grad.abs().max().item() == 0.0


def _count_weight_accumulations(monkeypatch) -> list:
    calls = []
    accumulate = flce._accumulate_weight_grad
    monkeypatch.setattr(flce, "_accumulate_weight_grad", lambda *a, **k: (calls.append(1), accumulate(*a, **k)))
    return calls


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("trainable", [("hidden",), ("weight", "bias"), ("bias",), ("hidden", "bias")])
def test_only_the_inputs_that_require_grad_get_gradients_computed(trainable, reduction, monkeypatch):
    """A frozen LM head (LoRA) must not pay the weight-gradient GEMM and its [V, H] fp32 accumulator; the
    gradients that are asked for still match the float64 reference (the "none" path recomputes in the
    backward and must skip the same work)."""
    hidden, weight, target = _inputs(30, 8, 50, seed=5)
    bias = torch.randn(50, generator=torch.Generator().manual_seed(6))
    inputs = {"hidden": hidden, "weight": weight, "bias": bias}
    ours = {k: leaf(t) if k in trainable else t.clone() for k, t in inputs.items()}
    ref = {k: leaf(t, torch.float64) if k in trainable else t.double() for k, t in inputs.items()}
    accumulations = _count_weight_accumulations(monkeypatch)
    loss = flce.fused_linear_cross_entropy_triton(
        ours["hidden"], ours["weight"], target, bias=ours["bias"], reduction=reduction
    )
    (loss.sum() * 2.5).backward()
    ref_loss = reference.fused_linear_cross_entropy(
        ref["hidden"], ref["weight"], target, bias=ref["bias"], reduction=reduction
    )
    (ref_loss.sum() * 2.5).backward()
    assert len(accumulations) == ("weight" in trainable), "weight gradient accumulated only when the weight trains"
    for name in inputs:
        if name in trainable:
            torch.testing.assert_close(ours[name].grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6)
        else:
            assert ours[name].grad is None


def test_the_ops_return_only_the_wanted_gradients():
    """The custom ops' contract (also their fake implementations, which torch.compile traces): empty tensors for
    the gradients not asked for."""
    hidden, weight, target = _inputs(12, 4, 9, seed=7)
    bias = torch.zeros(9)
    grad_scale_mean = 1
    for wanted in (flce.GRAD_WEIGHT, flce.GRAD_HIDDEN | flce.GRAD_BIAS, flce.GRAD_ALL):
        _, _, gh, gw, gb = torch.ops.mathforge.flce_fwd(
            hidden, weight, bias, target, -100, 0.0, 0.0, None, grad_scale_mean, 0, "fp32", wanted
        )
        sizes = [g.numel() for g in (gh, gw, gb)]
        assert sizes == [hidden.numel() * bool(wanted & 1), weight.numel() * bool(wanted & 2), 9 * bool(wanted & 4)]
        lse = torch.zeros(12)
        grads = torch.ops.mathforge.flce_bwd(
            torch.ones(12), hidden, weight, bias, target, lse, -100, 0.0, 0.0, None, 0, "fp32", wanted
        )
        assert [g.numel() for g in grads] == sizes
    for name in ("flce_fwd", "flce_bwd"):
        args = (
            (hidden, weight, bias, target, -100, 0.0, 0.0, None, grad_scale_mean, 0, "fp32", flce.GRAD_WEIGHT)
            if name == "flce_fwd"
            else (torch.ones(12), hidden, weight, bias, target, torch.zeros(12), -100, 0.0, 0.0, None, 0, "fp32", 2)
        )
        torch.library.opcheck(getattr(torch.ops.mathforge, name), args, test_utils=("test_schema", "test_faketensor"))
