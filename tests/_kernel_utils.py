"""Shared helpers for the kernel tests: float64 reference gradients and dtype tolerances."""

from __future__ import annotations

import importlib

import torch

_ce = importlib.import_module("mathforge.kernels.cross_entropy")  # the package re-exports a function so named

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def leaf(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return t.detach().to(dtype or t.dtype).requires_grad_(True)


def run_with_grads(fn, inputs: list[torch.Tensor], upstream=None):
    """Calls fn(*inputs) and returns (outputs tuple, grads of every input) for `upstream` (random if None)."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = tuple(torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs)
    grads = torch.autograd.grad(outs, inputs, [u.to(o.dtype) for u, o in zip(upstream, outs)], allow_unused=True)
    return outs, grads, upstream


def compare(ours_fn, ref_fn, inputs: list[torch.Tensor], tol: float, upstream=None) -> None:
    """Checks outputs and gradients of every input of `ours_fn` against `ref_fn` run in float64 on the same
    values; tolerances are relative to the reference's largest magnitude (plus `tol` absolute)."""
    ours_in = [leaf(t) for t in inputs]
    ref_in = [leaf(t, torch.float64) for t in inputs]
    outs, grads, upstream = run_with_grads(ours_fn, ours_in, upstream)
    ref_outs, ref_grads, _ = run_with_grads(ref_fn, ref_in, upstream)
    for name, a, b in [("out", o, r) for o, r in zip(outs, ref_outs)] + [
        (f"grad[{i}]", g, r) for i, (g, r) in enumerate(zip(grads, ref_grads))
    ]:
        assert a is not None and b is not None, name
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a.double() - b).abs().max().item() if b.numel() else 0.0
        assert err <= tol * (1.0 + scale), f"{name}: max error {err:.3g} (scale {scale:.3g}, tol {tol})"
    for t, g in zip(ours_in, grads):
        assert g.dtype == t.dtype, "gradients come back in the input dtypes"


def record_launches(monkeypatch, caller) -> dict[str, list]:
    """Records (forward, backward) of every `_ce_kernel` launch made through `caller.launch_ce` (the CE module, or a
    module that imported `launch_ce` by name) and the upstream scale of every `_scale_kernel` launch."""
    record = {"ce": [], "scale": []}
    launch_ce, launch_scale = caller.launch_ce, _ce.launch_scale

    def counted_ce(*args, **kwargs):
        record["ce"].append((kwargs["loss"] is not None, kwargs["grad"] is not None))
        return launch_ce(*args, **kwargs)

    def counted_scale(grad, scale, *args):
        record["scale"].append(float(scale))
        return launch_scale(grad, scale, *args)

    monkeypatch.setattr(caller, "launch_ce", counted_ce)
    monkeypatch.setattr(_ce, "launch_scale", counted_scale)
    return record
