"""Liger-Kernel's own test cases, ported as data (tests/cases/peers/liger_*.jsonl), run on mathforge's Triton
kernels (under TRITON_INTERPRET=1 on CPU) against torch built the way Liger's tests build their reference, with
Liger's atol/rtol, torch.allclose-style, on the outputs and on the input gradients.

Each case names its reference (`reference`), the tensors it compares (`checks`), its peer shape and, where the
interpreter would be too slow for it, a smaller `cpu_shape` (ours; a GPU runs the peer's shape). Cases whose
feature mathforge lacks carry an `unsupported` reason and are skipped and counted; the peer's large shapes are
`gpu_only` (marked `gpu`). `test_summary` prints the counts and checks them against tests/cases/peers/README.md.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from _peer_cases import PEERS, case_counts
from _peer_cases import readme_counts as _readme_counts

from mathforge.errors import DataError
from mathforge.kernels import functional
from mathforge.kernels.cross_entropy import cross_entropy_triton
from mathforge.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy_triton
from mathforge.kernels.rms_norm import rms_norm_triton
from mathforge.kernels.rope import apply_rope_triton
from mathforge.kernels.swiglu import swiglu_triton

pytestmark = pytest.mark.peer_cases  # a GPU plan runs them at the peers' full shapes (bench.gpu_session)

OPS = ("cross_entropy", "fused_linear_cross_entropy", "rms_norm", "swiglu", "rope")
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# When ours and the peer's torch reference differ by more than the peer's tolerance, a case that can compute the
# same tensors in float64 (`exact`, the cross-entropy cases) is judged against that: it passes only if ours is
# within the peer's tolerance of float64 at every element and nearer to it than torch on every mismatched element
# (torch's side is then the less exact one); such a case is counted apart ("torch less exact") and warns with the
# numbers, so a run shows how many cases pass the peer's own assert and how many only against float64. Measured
# on CPU: 10 CE gradient cases (8 bf16: torch's bf16 backward is exp of the bf16-rounded log_softmax; 2 fp32
# label-smoothed "sum"); numbers in tests/cases/peers/README.md.
RESULTS: Counter = Counter()
LESS_EXACT: set[str] = set()  # ids of the cases judged "torch less exact" in this session


def load_cases(op: str) -> list[dict]:
    """The cases of liger_<op>.jsonl, one dict a line."""
    lines = (PEERS / f"liger_{op}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _param(case: dict):
    marks = [pytest.mark.gpu] if case["gpu_only"] and not case["unsupported"] else []
    return pytest.param(case, id=case["id"], marks=marks)


class ReferenceLessExact(UserWarning):
    """A case whose peer assert failed where float64 shows torch's reference, not ours, to be off."""


ALL_CASES = [case for op in OPS for case in load_cases(op)]


# ---------------------------------------------------------------- helpers


def _shape(case: dict) -> dict:
    """The peer's shape on a GPU; on CPU the case's `cpu_shape` when it has one (ours, stated in the case)."""
    return case["shape"] if DEVICE.type == "cuda" or case["cpu_shape"] is None else case["cpu_shape"]


def _gen(case: dict) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + case["seed"])


def _randn(gen: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def _rand(gen: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=gen).to(DEVICE, dtype)


def _leaves(t: torch.Tensor, copies: int = 2) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for _ in range(copies)]


def _targets(case: dict, n: int, v: int, gen: torch.Generator) -> torch.Tensor:
    """randint(0, V) targets; with `ignore_some`, a random 1..n//2 of them set to ignore_index (as the peer)."""
    target = torch.randint(0, v, (n,), generator=gen)
    if case.get("ignore_some"):
        count = int(torch.randint(1, n // 2, (1,), generator=gen))
        target[torch.randperm(n, generator=gen)[:count]] = case["options"].get("ignore_index", -100)
    return target.to(DEVICE)


def _mismatch(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> str | None:
    """None when torch.allclose(ours, ref, atol, rtol) (compared in the wider of the two dtypes), else the
    numbers: max abs error, max relative error, elements over the bound."""
    assert ours is not None and ref is not None, f"{name}: missing tensor"
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    dtype = torch.promote_types(ours.dtype, ref.dtype)
    a, b = ours.detach().to(dtype), ref.detach().to(dtype)
    if torch.allclose(a, b, atol=atol, rtol=rtol):
        return None
    diff = (a.double() - b.double()).abs()
    over = diff > atol + rtol * b.double().abs()
    rel = (diff / b.double().abs().clamp_min(1e-30)).max().item()
    return (
        f"{name}: max abs err {diff.max().item():.3g}, max rel err {rel:.3g}, {int(over.sum())}/{over.numel()} "
        f"elements over atol {atol:g} + rtol {rtol:g}*|ref| (ref max |{b.abs().max().item():.3g}|)"
    )


class PeerMismatch(AssertionError):
    """Ours and the peer's torch reference differ by more than the peer's tolerance (the peer's own assert)."""


def _check_all(case: dict, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], exact=None) -> str:
    """Compares every (ours, reference) pair the case lists in `checks`: "passed" when all are within the peer's
    tolerance; else, when `exact()` (the same tensors in float64) shows torch's reference to be the less exact
    side for every mismatch, "torch less exact" (with a ReferenceLessExact warning giving the numbers); else
    PeerMismatch (or the AssertionError of the float64 check) with every mismatch."""
    missing = [c for c in case["checks"] if c not in pairs]
    assert not missing, f"{case['id']}: no tensors for checks {missing}"
    errors = {name: _mismatch(name, *pairs[name], case["atol"], case["rtol"]) for name in case["checks"]}
    errors = {name: e for name, e in errors.items() if e}
    if not errors:
        return "passed"
    if exact is None:
        raise PeerMismatch(f"{case['id']}:\n  " + "\n  ".join(errors.values()))
    fp64 = exact()
    verdicts = [_reference_less_exact(case, name, *pairs[name], fp64[name]) for name in errors]
    warnings.warn(ReferenceLessExact(f"{case['id']}: " + "; ".join(verdicts)), stacklevel=2)
    LESS_EXACT.add(case["id"])
    return "torch less exact"


def _reference_less_exact(case: dict, name: str, ours, ref, fp64: torch.Tensor) -> str:
    """Asserts ours within the peer's tolerance of float64 everywhere, and nearer to it than torch's reference on
    the elements where the two differ by more than that tolerance; returns the numbers."""
    atol, rtol = case["atol"], case["rtol"]
    ours, ref = ours.detach().double(), ref.detach().double()
    assert torch.allclose(ours, fp64, atol=atol, rtol=rtol), (
        f"{case['id']} {name}: differs from the peer's reference and is not within its tolerance of float64 "
        f"(max abs err {(ours - fp64).abs().max().item():.3g})"
    )
    flagged = (ours - ref).abs() > atol + rtol * ref.abs()
    err_ours, err_ref = ((t - fp64).abs()[flagged].max().item() for t in (ours, ref))
    assert err_ours < err_ref, f"{case['id']} {name}: float64 error ours {err_ours:.3g} vs torch {err_ref:.3g}"
    return f"{name}: {int(flagged.sum())} elements over the peer tolerance; float64 error ours {err_ours:.2g}, torch {err_ref:.2g}"


def _grads(outs, inputs, upstream) -> tuple:
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    upstream = upstream if isinstance(upstream, (tuple, list)) else (upstream,)
    return torch.autograd.grad(outs, inputs, [u.to(o.dtype) for o, u in zip(outs, upstream)], allow_unused=True)


def _loss_and_z(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    return out if isinstance(out, tuple) else (out, None)


# ---------------------------------------------------------------- cross entropy


def _ce_kwargs(options: dict) -> dict:
    """Our cross_entropy keyword arguments from the case's options (the peer's names mapped: lse_square_scale ->
    z_loss)."""
    keys = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "return_z_loss")
    return {k: options[k] for k in keys if k in options}


def _torch_ce(x: torch.Tensor, target: torch.Tensor, options: dict) -> torch.Tensor:
    """torch.nn.CrossEntropyLoss(ignore_index, reduction, label_smoothing) on x in its dtype (the peer's reference)."""
    return F.cross_entropy(
        x,
        target,
        ignore_index=options.get("ignore_index", -100),
        reduction=options.get("reduction", "mean"),
        label_smoothing=options.get("label_smoothing", 0.0),
    )


def _torch_ce_softcap(x: torch.Tensor, target: torch.Tensor, options: dict) -> torch.Tensor:
    """CE of softcap * tanh(x.float() / softcap), cast back to x's dtype (the peer's softcap reference)."""
    cap = options["softcap"]
    return F.cross_entropy(cap * torch.tanh(x.float() / cap), target, reduction=options["reduction"]).to(x.dtype)


def _torch_ce_zloss(x: torch.Tensor, target: torch.Tensor, options: dict, out_dtype: torch.dtype, compute_dtype=None):
    """The peer's CrossEntropyWithZLoss: on fp32 logits, F.cross_entropy plus scale * lse² of the non-ignored rows
    (summed; "mean" divides by their count), each cast to `out_dtype` and then added; returns (total, z).
    (`compute_dtype` float64 gives the float64 computation that a mismatch with the peer is judged against.)"""
    logits = x.to(compute_dtype or torch.float32)
    ignore_index, reduction = options.get("ignore_index", -100), options.get("reduction", "mean")
    valid = target != ignore_index
    ce = F.cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=options.get("label_smoothing", 0.0),
    )
    z = torch.where(valid, options.get("z_loss", 0.0) * torch.logsumexp(logits, dim=-1) ** 2, 0.0)
    z = {"mean": lambda: z.sum() / valid.sum(), "sum": z.sum, "none": lambda: z}[reduction]()
    ce, z = ce.to(out_dtype), z.to(out_dtype)
    return ce + z, z


CE_REFERENCES = {  # reference name -> (loss, z-loss term or None) of logits x in their dtype
    "torch_ce": lambda x, target, options: (_torch_ce(x, target, options), None),
    "torch_ce_softcap": lambda x, target, options: (_torch_ce_softcap(x, target, options), None),
    "torch_ce_zloss": lambda x, target, options: _torch_ce_zloss(x, target, options, x.dtype),
}


def _ce_vs_reference(case: dict, x: torch.Tensor, target: torch.Tensor, monkeypatch) -> None:
    """Ours (cross_entropy_triton) against the case's torch reference; backward with ones * upstream_scale."""
    options, scale = case["options"], case["upstream_scale"]
    x_ref, x_ours = _leaves(x)
    ref, z_ref = CE_REFERENCES[case["reference"]](x_ref, target, options)
    ours, z_ours = _loss_and_z(cross_entropy_triton(x_ours, target, **_ce_kwargs(options)))
    (g_ref,) = _grads(ref * scale, [x_ref], torch.ones_like(ref))
    (g_ours,) = _grads(ours * scale, [x_ours], torch.ones_like(ours))
    pairs = {"loss": (ours, ref), "z_loss": (z_ours, z_ref), "grad_logits": (g_ours, g_ref)}
    _check_all(case, pairs, exact=lambda: _exact_ce(x, target, options, scale))


def _exact_ce(x: torch.Tensor, target: torch.Tensor, options: dict, scale: float) -> dict[str, torch.Tensor]:
    """The peer's CE reference (softcap, label smoothing, ignore_index, z-loss, reduction) computed in float64:
    loss, z_loss and the gradient of scale * loss (upstream ones) with respect to the logits."""
    x64 = x.detach().double().requires_grad_(True)
    logits = options["softcap"] * torch.tanh(x64 / options["softcap"]) if options.get("softcap") else x64
    total, z = _torch_ce_zloss(logits, target, options, torch.float64, compute_dtype=torch.float64)
    (grad,) = _grads(total * scale, [x64], torch.ones_like(total))
    return {"loss": total.detach(), "z_loss": z.detach(), "grad_logits": grad}


def _ce_functional(case: dict, x: torch.Tensor, target: torch.Tensor, monkeypatch) -> None:
    """The public op (the torch reference path on CPU, Triton on CUDA) against the Triton entry point."""
    kwargs = _ce_kwargs(case["options"])
    x_pub, x_tri = _leaves(x)
    pub, z_pub = _loss_and_z(functional.cross_entropy(x_pub, target, **kwargs))
    tri, z_tri = _loss_and_z(cross_entropy_triton(x_tri, target, **kwargs))
    upstream = torch.randn(tri.shape, generator=_gen(case)).to(DEVICE)
    (g_pub,) = _grads(pub, [x_pub], upstream)
    (g_tri,) = _grads(tri, [x_tri], upstream)
    _check_all(case, {"loss": (pub, tri), "z_loss": (z_pub, z_tri), "grad_logits": (g_pub, g_tri)})


def _ce_out_of_bounds(case: dict, x: torch.Tensor, target: torch.Tensor, monkeypatch) -> None:
    """mathforge's documented behaviour where Liger raises: NaN at each out-of-range row (so a NaN mean), finite
    elsewhere; MATHFORGE_CHECK=1 makes the public op raise DataError."""
    v, n, ignore_index = x.shape[1], x.shape[0], case["options"]["ignore_index"]
    gen = _gen(case)
    count = int(torch.randint(1, n // 2, (1,), generator=gen))
    rows = torch.randperm(n, generator=gen)[:count]
    target = target.clone()
    target[rows.to(DEVICE)] = torch.randint(v, 2 * v, (count,), generator=gen).to(DEVICE)
    bad = (target >= v).cpu()
    per_row = cross_entropy_triton(x, target, ignore_index=ignore_index, reduction="none").cpu()
    assert bool(per_row[bad].isnan().all()), f"{case['id']}: out-of-range rows must be NaN, got {per_row[bad]}"
    assert bool(per_row[~bad].isfinite().all()), f"{case['id']}: in-range rows must be finite"
    mean = cross_entropy_triton(x, target, ignore_index=ignore_index, reduction="mean")
    assert bool(mean.isnan()), f"{case['id']}: the mean over a NaN row is NaN, got {mean.item()}"
    monkeypatch.setenv("MATHFORGE_CHECK", "1")
    with pytest.raises(DataError, match="out of range"):
        functional.cross_entropy(x, target, ignore_index=ignore_index)


def _ce_fp32_internal(case: dict, x: torch.Tensor, target: torch.Tensor, monkeypatch) -> None:
    """Per-row losses of bf16 logits against those of the same values upcast to fp32."""
    rows_bf16 = cross_entropy_triton(x, target, reduction="none")
    rows_fp32 = cross_entropy_triton(x.float(), target, reduction="none")
    _check_all(case, {"loss_rows": (rows_bf16, rows_fp32)})


def run_cross_entropy(case: dict, monkeypatch) -> None:
    shape = _shape(case)
    n, v = shape["B"] * shape["T"], shape["V"]
    gen = _gen(case)
    x = _randn(gen, n, v, dtype=DTYPES[case["dtype"]])
    target = _targets(case, n, v, gen)
    CE_RUNS[case["reference"]](case, x, target, monkeypatch)


CE_RUNS = {  # reference name -> check of one CE case on logits x and target
    "oob": _ce_out_of_bounds,
    "functional": _ce_functional,
    "fp32_internal": _ce_fp32_internal,
    **dict.fromkeys(CE_REFERENCES, _ce_vs_reference),
}


# ---------------------------------------------------------------- fused linear cross entropy


def _torch_lm_head(x, weight, bias, target, options: dict):
    """The peer's TorchLMHeadCE: nn.Linear in the inputs' dtype, logits .float(), softcap, CrossEntropyWithZLoss
    (fp32 outputs); returns (total, z)."""
    logits = F.linear(x, weight, bias).float()
    cap = options.get("softcap")
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return _torch_ce_zloss(logits, target, options, torch.float32)


def _flce_vs_reference(case: dict, x, weight, bias, target, monkeypatch) -> None:
    options = case["options"]
    inputs_ref = [_leaves(t, 1)[0] for t in (x, weight)] + ([_leaves(bias, 1)[0]] if bias is not None else [])
    inputs_ours = [_leaves(t, 1)[0] for t in (x, weight)] + ([_leaves(bias, 1)[0]] if bias is not None else [])
    ref, z_ref = _torch_lm_head(*inputs_ref[:2], inputs_ref[2] if bias is not None else None, target, options)
    ours, z_ours = _loss_and_z(
        fused_linear_cross_entropy_triton(
            *inputs_ours[:2], target, bias=inputs_ours[2] if bias is not None else None, **_ce_kwargs(options)
        )
    )
    if not options.get("return_z_loss"):
        z_ref = None
    g_ref = _grads(ref, inputs_ref, torch.ones_like(ref))
    g_ours = _grads(ours, inputs_ours, torch.ones_like(ours))
    pairs = {"loss": (ours, ref), "z_loss": (z_ours, z_ref)}
    pairs.update({n: (a, b) for n, a, b in zip(("grad_hidden", "grad_weight", "grad_bias"), g_ours, g_ref)})
    _check_all(case, pairs)


def _flce_functional(case: dict, x, weight, bias, target, monkeypatch) -> None:
    kwargs = _ce_kwargs(case["options"])
    x_pub, x_tri = _leaves(x)
    pub, z_pub = _loss_and_z(functional.fused_linear_cross_entropy(x_pub, weight, target, bias=bias, **kwargs))
    tri, z_tri = _loss_and_z(fused_linear_cross_entropy_triton(x_tri, weight, target, bias=bias, **kwargs))
    upstream = torch.randn(tri.shape, generator=_gen(case)).to(DEVICE)
    (g_pub,) = _grads(pub, [x_pub], upstream)
    (g_tri,) = _grads(tri, [x_tri], upstream)
    _check_all(case, {"loss": (pub, tri), "z_loss": (z_pub, z_tri), "grad_hidden": (g_pub, g_tri)})


def _flce_amp(case: dict, x, weight, bias, target, monkeypatch) -> None:
    """fp32 parameters under autocast(cast dtype): the peer's torch reference (logits in the cast dtype) against
    the public op taking its Triton path (autocast off inside, by contract: fp32 logits)."""
    monkeypatch.setattr(functional, "use_triton", lambda t: True)
    cast = DTYPES[case["options"]["autocast"]]
    x_ref, x_ours = _leaves(x)
    w_ref, w_ours = _leaves(weight)
    with torch.autocast(DEVICE.type, dtype=cast):
        ref, _ = _torch_lm_head(x_ref, w_ref, bias, target, {"reduction": "mean"})
        ours = functional.fused_linear_cross_entropy(x_ours, w_ours, target, bias=bias, reduction="mean")
        g_ref = _grads(ref, [x_ref, w_ref], torch.ones_like(ref))
        g_ours = _grads(ours, [x_ours, w_ours], torch.ones_like(ours))
    pairs = {"loss": (ours, ref), "grad_hidden": (g_ours[0], g_ref[0]), "grad_weight": (g_ours[1], g_ref[1])}
    _check_all(case, pairs)


def run_fused_linear_cross_entropy(case: dict, monkeypatch) -> None:
    shape, options = _shape(case), case["options"]
    n, h, v = shape["B"] * shape["T"], shape["H"], shape["V"]
    dtype, gen = DTYPES[case["dtype"]], _gen(case)
    draw_weight, draw_bias, check = FLCE_RUNS[case["reference"]]
    x = _randn(gen, n, h, dtype=dtype)
    target = _targets(case, n, v, gen)
    weight = draw_weight(gen, v, h, dtype=dtype)
    bias = draw_bias(gen, v, h).to(dtype) if options["bias"] else None
    check(case, x, weight, bias, target, monkeypatch)


FLCE_RUNS = {  # reference name -> (weight [V, H] as the peer draws it, bias [V] likewise, check)
    "functional": (_randn, lambda gen, v, h: _randn(gen, v), _flce_functional),
    # the peer leaves nn.Linear's default bias init here: uniform(-1/sqrt(H), 1/sqrt(H))
    "torch_lm_head_amp": (_rand, lambda gen, v, h: (_rand(gen, v) * 2 - 1) / math.sqrt(h), _flce_amp),
    "torch_lm_head": (_rand, lambda gen, v, h: _rand(gen, v), _flce_vs_reference),
}


# ---------------------------------------------------------------- RMSNorm


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


RMS_REFERENCES = {  # the peer's reference modules, by casting mode (weight w, eps)
    "rms_llama": lambda x, w, eps: w * _rms(x.float(), eps).to(x.dtype),
    "rms_gemma": lambda x, w, eps: (_rms(x.float(), eps) * (1.0 + w.float())).type_as(x),
    "rms_none": lambda x, w, eps: w * _rms(x, eps).to(x.dtype),
}


def run_rms_norm(case: dict, monkeypatch) -> None:
    shape, options = _shape(case), case["options"]
    dims = (shape["bs"], shape["sl"], shape["hd"])
    dtype, gen = DTYPES[case["dtype"]], _gen(case)
    eps, offset = options["eps"], options["offset"]
    x = _randn(gen, *dims, dtype=dtype)
    x_ref, x_ours = _leaves(x)
    if case["reference"] == "functional":
        w = _randn(gen, dims[-1], dtype=dtype)
        y_pub = functional.rms_norm(x_ref, w, eps, offset)
        y_tri = rms_norm_triton(x_ours, w, eps, offset)
        upstream = torch.randn(dims, generator=gen).to(DEVICE, dtype)
        _check_all(
            case,
            {
                "out": (y_pub, y_tri),
                "grad_x": (_grads(y_pub, [x_ref], upstream)[0], _grads(y_tri, [x_ours], upstream)[0]),
            },
        )
        return
    dy = _randn(gen, *dims, dtype=dtype)
    w_ref, w_ours = _leaves(torch.ones(dims[-1], device=DEVICE, dtype=dtype))
    y_ref = RMS_REFERENCES[case["reference"]](x_ref, w_ref, eps)
    y_ours = rms_norm_triton(x_ours, w_ours, eps, offset)
    gx_ref, gw_ref = _grads(y_ref, [x_ref, w_ref], dy)
    gx_ours, gw_ours = _grads(y_ours, [x_ours, w_ours], dy)
    _check_all(case, {"out": (y_ours, y_ref), "grad_weight": (gw_ours, gw_ref), "grad_x": (gx_ours, gx_ref)})


# ---------------------------------------------------------------- SwiGLU


def _llama_mlp(act, x, gate_w, up_w, down_w):
    """HF LlamaMLP with `act(gate, up)` for its silu(gate) * up."""
    return F.linear(act(F.linear(x, gate_w), F.linear(x, up_w)), down_w)


def _phi3_mlp(act, x, gate_up_w, down_w):
    """HF Phi3MLP: gate, up = gate_up(x).chunk(2); down(act(gate, up)) for its up * silu(gate)."""
    gate, up = F.linear(x, gate_up_w).chunk(2, dim=-1)
    return F.linear(act(gate, up), down_w)


def _torch_swiglu(gate, up):
    return F.silu(gate) * up


def run_swiglu(case: dict, monkeypatch) -> None:
    shape, dtype, gen = _shape(case), DTYPES[case["dtype"]], _gen(case)
    reference = case["reference"]
    if reference == "functional":
        dims = (shape["bsz"], shape["seq_len"], shape["size"])
        a_pub, a_tri = _leaves(_randn(gen, *dims, dtype=dtype))
        b_pub, b_tri = _leaves(_randn(gen, *dims, dtype=dtype))
        y_pub, y_tri = functional.swiglu(a_pub, b_pub), swiglu_triton(a_tri, b_tri)
        dy = _randn(gen, *dims, dtype=dtype)
        g_pub, g_tri = _grads(y_pub, [a_pub, b_pub], dy), _grads(y_tri, [a_tri, b_tri], dy)
        _check_all(case, {"out": (y_pub, y_tri), "grad_gate": (g_pub[0], g_tri[0]), "grad_up": (g_pub[1], g_tri[1])})
        return
    h, i = shape["hidden_size"], shape["intermediate_size"]
    x = _randn(gen, shape["bsz"], shape["seq_len"], h, dtype=dtype)
    if reference == "llama_mlp":  # the peer's G, U [h, i] and D [i, h], set as nn.Linear weights (transposed)
        weights = [_randn(gen, h, i, dtype=dtype).T, _randn(gen, h, i, dtype=dtype).T, _randn(gen, i, h, dtype=dtype).T]
        mlp, names = _llama_mlp, ("grad_x", "grad_gate_proj", "grad_up_proj", "grad_down_proj")
    else:
        weights = [_randn(gen, h, 2 * i, dtype=dtype).T, _randn(gen, i, h, dtype=dtype).T]
        mlp, names = _phi3_mlp, ("grad_x", "grad_gate_up_proj", "grad_down_proj")
    ins_ref = [_leaves(t, 1)[0] for t in (x, *weights)]
    ins_ours = [_leaves(t, 1)[0] for t in (x, *weights)]
    y_ref, y_ours = mlp(_torch_swiglu, *ins_ref), mlp(swiglu_triton, *ins_ours)
    dy = torch.randn(y_ref.shape, generator=gen).to(DEVICE, dtype)
    g_ref, g_ours = _grads(y_ref, ins_ref, dy), _grads(y_ours, ins_ours, dy)
    pairs = {"out": (y_ours, y_ref)}
    pairs.update({n: (a, b) for n, a, b in zip(names, g_ours, g_ref)})
    _check_all(case, pairs)


# ---------------------------------------------------------------- RoPE


def _hf_cos_sin(bsz: int, seq: int, dim: int, expand: bool, dtype: torch.dtype):
    """HF LlamaRotaryEmbedding's default rope (theta 10000): fp32 angles pos * inv_freq repeated over both
    halves, cos/sin cast to the dtype; [1 or bsz, seq, dim] as position_ids are expanded or not."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    pos = torch.arange(seq).unsqueeze(0)
    pos = pos.expand(bsz, -1) if expand else pos
    freqs = pos[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _hf_rope(q, k, cos, sin):
    """HF apply_rotary_pos_emb on q, k [bsz, heads, seq, dim] in their dtype."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """[bsz, heads, seq, dim] -> our [bsz*seq, heads, dim]."""
    b, h, s, d = t.shape
    return t.transpose(1, 2).reshape(b * s, h, d)


def _untokens(t: torch.Tensor, bsz: int) -> torch.Tensor:
    n, h, d = t.shape
    return t.reshape(bsz, n // bsz, h, d).transpose(1, 2)


def _our_rope(rope, q, k, cos, sin):
    """Our rope on the HF layout: tokens-major q, k and a [bsz*seq, dim] table (expanded over the batch)."""
    bsz, _, seq, dim = q.shape
    table = [t.expand(bsz, seq, dim).reshape(bsz * seq, dim) for t in (cos, sin)]
    out_q, out_k = rope(_tokens(q), _tokens(k), *table)
    return _untokens(out_q, bsz), _untokens(out_k, bsz)


def run_rope(case: dict, monkeypatch) -> None:
    shape, dtype, gen = _shape(case), DTYPES[case["dtype"]], _gen(case)
    bsz, seq, dim = shape["bsz"], shape["seq_len"], shape["head_dim"]
    if case["reference"] == "functional":  # randn in the dtype, already [bsz, heads, seq, dim]
        q = _randn(gen, bsz, shape["num_q_heads"], seq, dim, dtype=dtype)
        k = _randn(gen, bsz, shape["num_kv_heads"], seq, dim, dtype=dtype)
    else:  # randn [bsz, seq, heads, dim] (fp32), transposed, then cast
        q = _randn(gen, bsz, seq, shape["num_q_heads"], dim).transpose(1, 2).to(dtype)
        k = _randn(gen, bsz, seq, shape["num_kv_heads"], dim).transpose(1, 2).to(dtype)
    cos, sin = _hf_cos_sin(bsz, seq, dim, case["options"]["expand_position_ids"], dtype)
    q_ref, q_ours = _leaves(q)
    k_ref, k_ours = _leaves(k)
    if case["reference"] == "functional":
        ref = _our_rope(functional.apply_rope, q_ref, k_ref, cos, sin)
    else:
        ref = _hf_rope(q_ref, k_ref, cos, sin)
    ours = _our_rope(apply_rope_triton, q_ours, k_ours, cos, sin)
    upstream = [torch.randn(t.shape, generator=gen).to(DEVICE, dtype) for t in ref]
    g_ref, g_ours = _grads(ref, [q_ref, k_ref], upstream), _grads(ours, [q_ours, k_ours], upstream)
    _check_all(
        case,
        {
            "out_q": (ours[0], ref[0]),
            "out_k": (ours[1], ref[1]),
            "grad_q": (g_ours[0], g_ref[0]),
            "grad_k": (g_ours[1], g_ref[1]),
        },
    )


RUNNERS = {
    "cross_entropy": run_cross_entropy,
    "fused_linear_cross_entropy": run_fused_linear_cross_entropy,
    "rms_norm": run_rms_norm,
    "swiglu": run_swiglu,
    "rope": run_rope,
}


@pytest.mark.parametrize("case", [_param(c) for c in ALL_CASES])
def test_peer_case(case, monkeypatch):
    """One ported Liger case on our Triton path against the peer's torch reference, at the peer's tolerances."""
    if case["unsupported"]:
        RESULTS[(case["op"], "unsupported")] += 1
        pytest.skip(f"unsupported: {case['unsupported']}")
    try:
        RUNNERS[case["op"]](case, monkeypatch)
    except PeerMismatch:
        RESULTS[(case["op"], "mismatch")] += 1
        raise
    except BaseException:
        RESULTS[(case["op"], "error")] += 1
        raise
    RESULTS[(case["op"], "torch less exact" if case["id"] in LESS_EXACT else "passed")] += 1


# ---------------------------------------------------------------- counts


def data_counts() -> dict[str, dict[str, int]]:
    """Per file: `case_counts` of its cases."""
    return {f"liger_{op}.jsonl": case_counts(load_cases(op)) for op in OPS}


def readme_counts() -> dict[str, dict[str, int]]:
    """The Liger rows of tests/cases/peers/README.md's counts table: `| liger_x.jsonl | n | n | n | n | n |`."""
    return _readme_counts(r"(liger_\w+\.jsonl)")


def test_summary(capsys):
    """The data's counts match the README's table; prints them with this session's outcomes (the cases run
    before this test: "passed" the peer's own assert, "torch less exact" passed only against float64,
    "gpu_only skipped" the cases needing CUDA)."""
    counts = data_counts()
    with capsys.disabled():
        print("\nLiger peer cases (data counts; this session's outcomes):")
        for name, row in counts.items():
            op = name.removeprefix("liger_").removesuffix(".jsonl")
            ran = {k: RESULTS[(op, k)] for k in ("passed", "torch less exact", "mismatch", "error", "unsupported")}
            ran["gpu_only skipped"] = 0 if DEVICE.type == "cuda" else row["gpu_only"]
            print(f"  {name}: {row}; {ran}")
    assert counts == readme_counts()
    for op in OPS:
        for case in load_cases(op):
            assert case["source"]["licence"] == "BSD-2-Clause" and case["source"]["repo"] == "linkedin/Liger-Kernel"
            assert case["unsupported"] is None or case["unsupported"], case["id"]
