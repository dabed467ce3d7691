"""The fused linear CE's chunking: the traffic-model chunk policy (pure functions, made-up device numbers), the
first-chunk write of the fp32 accumulators, results independent of the chunk size against the float64
reference, 16-bit chunk logits within a derived rounding bound, and the bench's chunk sweep on CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _kernel_utils import TOL, compare, leaf

from mathforge.kernels import reference
from mathforge.kernels.fused_linear_cross_entropy import (
    CHUNK_BYTES_CPU,
    CHUNK_BYTES_MAX_CUDA,
    CHUNK_FREE_FRACTION,
    CHUNK_ROW_MULTIPLE,
    _accumulate_bias_grad,
    _accumulate_weight_grad,
    accumulator_rows,
    chunk_budget_bytes,
    chunk_bytes_per_row,
    chunk_traffic,
    fused_linear_cross_entropy_triton,
    plan_chunk_rows,
    predicted_ms,
)

H200 = dict(matmul_flops=790e12, copy_bytes_per_s=4.3e12)
H100 = dict(matmul_flops=740e12, copy_bytes_per_s=3.0e12)
GB = 10**9
ISSUE_SHAPES = [(4096, 128256), (1536, 151936), (3584, 152064)]


# ---- the policy: pure functions of (n, h, v, dtype, free bytes, rates) ------------------------------------


def test_accumulator_rows_is_the_traffic_threshold():
    # 8·F / (6·B·0.1): the accumulator's 8·V·H bytes cost 10% of the chunk's 6·C·H·V flops
    assert accumulator_rows(**H200) == math.ceil(8 * 790e12 / (6 * 4.3e12 * 0.1)) == 2450
    assert accumulator_rows(1e12, 1e12, overhead=0.5) == math.ceil(8 / 3)
    for c in (2449, 2450):
        t = chunk_traffic(c, 4096, 128256)
        ratio = (t["accumulator_bytes"] / 4.3e12) / (t["gemm_flops"] / 790e12)
        assert (ratio <= 0.1) == (c == 2450), ratio
    with pytest.raises(ValueError, match="copy_bytes_per_s=0"):
        accumulator_rows(790e12, 0)


def test_issue_shape_gets_big_chunks_at_h200_rates():
    rows = plan_chunk_rows(16384, 4096, 128256, torch.bfloat16, free_bytes=80 * GB, **H200)
    assert rows >= 2048
    # 16384 // 2450 = 6 chunks of ceil(16384 / 6) = 2731 rows, rounded up to 128: 2816
    assert rows == 2816 and rows % CHUNK_ROW_MULTIPLE == 0
    assert rows * chunk_bytes_per_row(4096, 128256, torch.bfloat16) <= chunk_budget_bytes(80 * GB)


@pytest.mark.parametrize("h,v", ISSUE_SHAPES)
@pytest.mark.parametrize("free", [80 * GB, 141 * GB])
def test_every_chunk_meets_the_accumulator_target_when_memory_allows(h, v, free):
    for rates in (H200, H100):
        rows = plan_chunk_rows(16384, h, v, torch.bfloat16, free_bytes=free, **rates)
        want = accumulator_rows(**rates)
        chunks = -(-16384 // rows)
        assert rows >= want and chunks <= 16384 // want
        # so all the accumulator passes together cost at most 10% of the GEMMs
        acc_s = chunks * chunk_traffic(rows, h, v)["accumulator_bytes"] / rates["copy_bytes_per_s"]
        assert acc_s <= 0.1 * chunk_traffic(16384, h, v)["gemm_flops"] / rates["matmul_flops"]
        assert predicted_ms(16384, h, v, rows, **rates)["x_floor"] < predicted_ms(16384, h, v, 256, **rates)["x_floor"]


def test_memory_caps_the_chunk():
    # 8 GB free → budget 1 GB; fp32 logits + bf16 dlogits + fp32 hidden row per token
    per_row = chunk_bytes_per_row(3584, 152064, torch.bfloat16)
    assert per_row == 152064 * 6 + 4 * 3584
    rows = plan_chunk_rows(16384, 3584, 152064, torch.bfloat16, free_bytes=8 * GB, **H200)
    assert rows == (GB // per_row) // 128 * 128 == 1024
    # 16-bit logits are written in place: a third of the bytes per row, so bigger chunks in the same budget
    rows16 = plan_chunk_rows(16384, 3584, 152064, torch.bfloat16, free_bytes=8 * GB, chunk_logits="input", **H200)
    assert chunk_bytes_per_row(3584, 152064, torch.bfloat16, "input") == 152064 * 2 + 4 * 3584
    assert rows16 == 2816 > rows
    # the absolute cap binds when free memory is huge and the accumulator target is far away
    slow_copy = dict(matmul_flops=790e12, copy_bytes_per_s=0.1e12)
    rows = plan_chunk_rows(1 << 20, 4096, 128256, torch.bfloat16, free_bytes=10**15, **slow_copy)
    assert rows * chunk_bytes_per_row(4096, 128256, torch.bfloat16) <= CHUNK_BYTES_MAX_CUDA
    assert rows == CHUNK_BYTES_MAX_CUDA // chunk_bytes_per_row(4096, 128256, torch.bfloat16) // 128 * 128


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunk_logits", ["fp32", "input"])
def test_policy_bounds_over_a_grid(dtype, chunk_logits):
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        n, h, v = (int(x) for x in torch.randint(1, 40000, (3,), generator=gen))
        free = None if torch.rand(1, generator=gen) < 0.2 else int(torch.randint(1, 200, (1,), generator=gen)) * GB
        f, b = float(torch.rand(1, generator=gen)) * 2e15 + 1e12, float(torch.rand(1, generator=gen)) * 8e12 + 1e11
        rows = plan_chunk_rows(
            n, h, v, dtype, free_bytes=free, matmul_flops=f, copy_bytes_per_s=b, chunk_logits=chunk_logits
        )
        per_row = chunk_bytes_per_row(h, v, dtype, chunk_logits)
        budget = CHUNK_BYTES_CPU if free is None else min(CHUNK_BYTES_MAX_CUDA, free // CHUNK_FREE_FRACTION)
        assert chunk_budget_bytes(free) == budget
        assert 1 <= rows <= n
        assert rows * per_row <= max(budget, per_row), (n, h, v, free, rows)
        if rows < n and rows >= CHUNK_ROW_MULTIPLE:
            assert rows % CHUNK_ROW_MULTIPLE == 0, (n, h, v, free, rows)


def test_small_n_is_one_chunk_and_cpu_keeps_its_small_budget():
    assert plan_chunk_rows(5, 8, 7, torch.float32, free_bytes=80 * GB, **H200) == 5
    assert plan_chunk_rows(1000, 64, 500, torch.float32, free_bytes=None, **H200) == 1000
    assert plan_chunk_rows(0, 8, 7, torch.float32, free_bytes=None) == 1  # no chunk runs
    rows = plan_chunk_rows(16384, 4096, 128256, torch.bfloat16, free_bytes=None, **H200)
    assert rows * chunk_bytes_per_row(4096, 128256, torch.bfloat16) <= CHUNK_BYTES_CPU and rows < 128
    with pytest.raises(ValueError, match="n=-1"):
        plan_chunk_rows(-1, 8, 7, torch.float32, free_bytes=None)


def test_predicted_ms_adds_up():
    n, h, v, c = 16384, 4096, 128256, 2816
    p = predicted_ms(n, h, v, c, **H200)
    assert p["gemm_ms"] == pytest.approx(6 * n * h * v / 790e12 * 1e3) == pytest.approx(p["floor_ms"])
    assert p["ce_ms"] == pytest.approx(n * v * 10 / 4.3e12 * 1e3)  # fp32 logits read twice, bf16 dlogits written
    chunks = 6  # first chunk writes (4·V·H), later ones read + write (8·V·H), then 4 read + 2 written to bf16
    assert p["accumulator_ms"] == pytest.approx((4 + 8 * (chunks - 1) + 6) * v * h / 4.3e12 * 1e3)
    assert p["total_ms"] == pytest.approx(p["gemm_ms"] + p["ce_ms"] + p["accumulator_ms"])
    assert p["x_floor"] == pytest.approx(p["total_ms"] / p["floor_ms"])
    assert predicted_ms(n, h, v, c, logits_bytes=2, **H200)["ce_ms"] == pytest.approx(n * v * 6 / 4.3e12 * 1e3)


# ---- the first chunk writes the fp32 accumulators -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_chunk_overwrites_the_accumulators(dtype):
    gen = torch.Generator().manual_seed(3)
    g, h = torch.randn(5, 7, generator=gen).to(dtype), torch.randn(5, 3, generator=gen).to(dtype)
    expect = g.double().T @ h.double()
    acc = torch.full((7, 3), float("nan"))
    _accumulate_weight_grad(acc, g, h, first=True)  # NaN in the uninitialised buffer must not propagate
    torch.testing.assert_close(acc.double(), expect, rtol=1e-6, atol=1e-6)
    _accumulate_weight_grad(acc, g, h, first=False)
    torch.testing.assert_close(acc.double(), 2 * expect, rtol=1e-6, atol=1e-6)
    bias_acc = torch.full((7,), float("nan"))
    _accumulate_bias_grad(bias_acc, g, first=True)
    torch.testing.assert_close(bias_acc.double(), g.double().sum(0), rtol=1e-6, atol=1e-6)
    _accumulate_bias_grad(bias_acc, g, first=False)
    torch.testing.assert_close(bias_acc.double(), 2 * g.double().sum(0), rtol=1e-6, atol=1e-6)


# ---- results do not depend on the chunk size ----------------------------------------------------------------

N, HID, VOC = 70, 12, 37


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, HID, generator=gen)
    weight = torch.randn(VOC, HID, generator=gen) / 3
    bias = torch.randn(VOC, generator=gen)
    target = torch.randint(0, VOC, (N,), generator=gen)
    target[::5] = -100  # ignored rows, including in the first chunk
    return hidden, weight, bias, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [1, 7, 64, N])
def test_every_chunk_size_matches_the_float64_reference(chunk, reduction):
    hidden, weight, bias, target = _inputs(seed=chunk)
    kw = dict(reduction=reduction, label_smoothing=0.05, z_loss=1e-3)
    compare(
        lambda hh, ww, bb: fused_linear_cross_entropy_triton(hh, ww, target, bias=bb, chunk=chunk, **kw),
        lambda hh, ww, bb: reference.fused_linear_cross_entropy(hh, ww, target, bias=bb, **kw),
        [hidden, weight, bias],
        TOL[torch.float32],
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunk_sizes_agree_with_each_other(reduction):
    hidden, weight, bias, target = _inputs(seed=21)
    results = []
    for chunk in (1, 7, 64, N):
        hh, ww, bb = leaf(hidden), leaf(weight), leaf(bias)
        loss = fused_linear_cross_entropy_triton(hh, ww, target, bias=bb, chunk=chunk, reduction=reduction)
        results.append([loss.detach(), *torch.autograd.grad(loss.sum(), (hh, ww, bb))])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [1, 7, N])
def test_all_rows_ignored_gives_zeros_with_a_bias(chunk, reduction):
    hidden, weight, bias, _ = _inputs(seed=5)
    hh, ww, bb = leaf(hidden), leaf(weight), leaf(bias)
    loss = fused_linear_cross_entropy_triton(hh, ww, torch.full((N,), -100), bias=bb, chunk=chunk, reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    for g in torch.autograd.grad(loss.sum(), (hh, ww, bb)):
        assert torch.equal(g, torch.zeros_like(g))


def test_bad_chunk_arguments_are_refused():
    hidden, weight, _, target = _inputs(seed=1)
    with pytest.raises(ValueError, match="chunk_logits must be one of .* got 'bf16'"):
        fused_linear_cross_entropy_triton(hidden, weight, target, chunk_logits="bf16")
    with pytest.raises(ValueError, match="chunk must be >= 0.* got -3"):
        fused_linear_cross_entropy_triton(hidden, weight, target, chunk=-3)


# ---- 16-bit chunk logits ------------------------------------------------------------------------------------

U_BF16 = 2.0**-8  # unit roundoff of bf16 (8 significant bits, round to nearest)


def _bf16_logit_bounds(hidden, weight, bias, target, split_k_rounding: bool = False):
    """Reference (float64) mean loss and gradients, and per-element error bounds for logits rounded once to bf16.

    Each logit z becomes z(1 + δ), |δ| ≤ u, so row i's logits move by at most u·M_i (M_i = max_j |z_ij|);
    lse is 1-Lipschitz in the max norm, so the loss lse − z_t (and its label-smoothing mix) moves by ≤ 2u·M_i.
    softmax p_ij is multiplied by exp(Δz_ij − Δlse_i): |Δp_ij| ≤ p_ij·(exp(2u·M_i) − 1) =: e_ij. dlogits
    (s·(p − onehot), s = 1/valid rows) are then stored in bf16 (another u relative, as in the fp32-logit path),
    so each dlogit is off by ≤ E_ij = s·(e_ij(1 + u) + u|d_ij|). The gradients are sums of dlogits times
    exact bf16 values, rounded once more to bf16: |Δg| ≤ (1 + u)·(E @ |operand|) + u·|g|. fp32 arithmetic
    (≈1e-7 relative) is covered by 1e-5 of the largest magnitude. `split_k_rounding` (CUDA: torch lets cuBLAS
    round split-K partial sums of a bf16 GEMM to bf16) adds u·(|d| @ |W|) to grad_hidden's bound, the one
    16-bit-output GEMM that sums over V."""
    h, w, b = hidden.double(), weight.double(), bias.double()
    z = h @ w.T + b
    valid = target != -100
    s = 1.0 / valid.sum().item()
    p = torch.softmax(z, -1)
    onehot = torch.zeros_like(z)
    onehot[valid, target[valid]] = 1.0
    d = s * (p - onehot) * valid[:, None]
    m = z.abs().amax(1, keepdim=True)
    e = p * torch.expm1(2 * U_BF16 * m) * valid[:, None]
    err = s * e * (1 + U_BF16) + U_BF16 * d.abs()
    loss_bound = (2 * U_BF16 * m[valid]).mean().item()
    grads = {"hidden": d @ w, "weight": d.T @ h, "bias": d.sum(0)}
    raw = {"hidden": err @ w.abs(), "weight": err.T @ h.abs(), "bias": err.sum(0)}
    if split_k_rounding:
        raw["hidden"] = raw["hidden"] + U_BF16 * (d.abs() @ w.abs())
    bounds = {k: (1 + U_BF16) * raw[k] + U_BF16 * grads[k].abs() + 1e-5 * grads[k].abs().max() for k in grads}
    return loss_bound, grads, bounds


def _check_bf16_chunk_logits(device: str, n: int, h: int, v: int, chunk: int) -> None:
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randn(n, h, generator=gen).to(torch.bfloat16)
    weight = (torch.randn(v, h, generator=gen) / 2).to(torch.bfloat16)
    bias = torch.randn(v, generator=gen).to(torch.bfloat16)
    target = torch.randint(0, v, (n,), generator=gen)
    target[3::7] = -100
    loss_bound, ref_grads, bounds = _bf16_logit_bounds(hidden, weight, bias, target, device == "cuda")
    ref_loss = reference.fused_linear_cross_entropy(hidden.double(), weight.double(), target, bias=bias.double())
    losses = {}
    for mode in ("fp32", "input"):
        hh, ww, bb = (leaf(t.to(device)) for t in (hidden, weight, bias))
        loss = fused_linear_cross_entropy_triton(hh, ww, target.to(device), bias=bb, chunk=chunk, chunk_logits=mode)
        grads = dict(zip(("hidden", "weight", "bias"), torch.autograd.grad(loss, (hh, ww, bb))))
        losses[mode] = loss.item()
        assert abs(loss.item() - ref_loss.item()) <= loss_bound + 1e-6 * abs(ref_loss.item())
        for name, g in grads.items():
            excess = ((g.cpu().double() - ref_grads[name]).abs() - bounds[name]).max().item()
            assert g.dtype == torch.bfloat16 and excess <= 0, f"{mode} grad_{name}: {excess:.3g} over the bound"
    # the "input" path really rounds the logits: its loss differs from the fp32-logit loss by more than fp32 noise
    assert abs(losses["input"] - losses["fp32"]) > 1e-5


def test_bf16_chunk_logits_stay_within_the_rounding_bound():
    _check_bf16_chunk_logits("cpu", 40, 16, 97, chunk=16)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [0, 128])
def test_bf16_chunk_logits_stay_within_the_rounding_bound_on_cuda(chunk):
    _check_bf16_chunk_logits("cuda", 1000, 256, 32003, chunk=chunk)


@pytest.mark.gpu
def test_first_chunk_overwrites_the_accumulators_on_cuda():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(300, 130, generator=gen).to(torch.bfloat16)
    h = torch.randn(300, 64, generator=gen).to(torch.bfloat16)
    expect = g.double().T @ h.double()
    acc = torch.full((130, 64), float("nan"), device="cuda")
    _accumulate_weight_grad(acc, g.cuda(), h.cuda(), first=True)  # cuBLAS addmm(out_dtype=fp32) with beta = 0
    torch.testing.assert_close(acc.cpu().double(), expect, rtol=1e-5, atol=1e-4)
    _accumulate_weight_grad(acc, g.cuda(), h.cuda(), first=False)
    torch.testing.assert_close(acc.cpu().double(), 2 * expect, rtol=1e-5, atol=2e-4)


def test_chunk_logits_input_is_exact_for_fp32_inputs():
    hidden, weight, bias, target = _inputs(seed=13)
    kw = dict(reduction="none", chunk=7)
    a = fused_linear_cross_entropy_triton(hidden, weight, target, bias=bias, chunk_logits="input", **kw)
    b = fused_linear_cross_entropy_triton(hidden, weight, target, bias=bias, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["flce_fwd", "flce_bwd"])
def test_custom_ops_with_16_bit_chunk_logits_pass_opcheck(name):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(6, 4, generator=gen).to(torch.bfloat16)
    w, b = torch.randn(11, 4, generator=gen).to(torch.bfloat16), torch.randn(11, generator=gen).to(torch.bfloat16)
    t = torch.tensor([1, -100, 3, 10, 0, 2])
    lse = torch.logsumexp((h.float() @ w.float().T + b.float()), -1)
    args = {
        "flce_fwd": (h, w, b, t, -100, 0.0, 0.0, None, 1, 4, "input"),
        "flce_bwd": (torch.rand(6), h, w, b, t, lse, -100, 0.0, 0.0, None, 4, "input"),
    }[name]
    torch.library.opcheck(
        getattr(torch.ops.mathforge, name).default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


# ---- the bench's chunk sweep on CPU -------------------------------------------------------------------------


def test_bench_flce_chunks_on_cpu_gives_a_row_per_variant(tmp_path, capsys, monkeypatch):
    from mathforge.bench import kernels as bench

    monkeypatch.setenv("COLUMNS", "250")  # the summary table wide enough for whole provider names

    argv = ["--quick", "--ops", "flce", "--flce-tokens", "6", "--flce-shapes", "8x16", "--flce-chunks", "2,4"]
    path = bench.main([*argv, "--flce-logits", "fp32,input", "--out", str(tmp_path)])
    rows = [r for r in json.loads(path.read_text())["rows"] if r["mode"] == "full"]
    by_provider = {r["provider"]: r for r in rows}
    expected = {
        "mathforge": None,  # the public API: the torch reference on CPU, no chunks
        "mathforge[chunk=2]": 2,
        "mathforge[chunk=4]": 4,
        "mathforge[logits=input]": 6,  # automatic: one chunk of all 6 rows
        "mathforge[chunk=2,logits=input]": 2,
        "mathforge[chunk=4,logits=input]": 4,
        "torch": None,
    }
    assert set(by_provider) == set(expected)
    for provider, chunk in expected.items():
        row = by_provider[provider]
        assert "error" not in row and row["median_ms"] > 0, row
        assert row.get("chunk_rows") == chunk
        assert row["shape"] == {"tokens": 6, "hidden": 8, "vocab": 16}
    assert (tmp_path / "kernels_quick.csv").read_text().count("mathforge[chunk=") == 3 * 4  # fwd, full, bwd rows
    assert "mathforge[chunk=2,logits=input]" in capsys.readouterr().out  # printed as text, not as rich markup


def test_bench_rows_get_the_floor_and_the_model():
    from mathforge.bench import kernels as bench

    case = bench.fused_linear_cross_entropy_case(4, 8, 16, torch.float32, "cpu", True, chunks=(2,))
    ceilings = {"matmul_tflops": 1e-6, "copy_gbs": 1e-3}  # made up, so floor and model are easy to check
    rows = bench.run_case(case, "cpu", True, ceilings)
    bench.add_flce_model(rows, ceilings)
    full = {r["provider"]: r for r in rows if r["mode"] == "full"}
    floor_ms = 6 * 4 * 8 * 16 / 1e6 * 1e3
    for row in full.values():
        assert row["floor_ms"] == pytest.approx(floor_ms)
        assert row["x_floor"] == pytest.approx(row["median_ms"] / floor_ms)
    model = predicted_ms(4, 8, 16, 2, matmul_flops=1e6, copy_bytes_per_s=1e6)
    assert full["mathforge[chunk=2]"]["model_ms"] == pytest.approx(model["total_ms"])
    assert "model_ms" not in full["torch"]


def test_bench_rejects_bad_flce_options():
    from mathforge.bench import kernels as bench

    for argv in (["--flce-chunks", "0,4"], ["--flce-shapes", "8by16"], ["--flce-logits", "bf16"]):
        with pytest.raises(SystemExit):
            bench.main(["--quick", "--ops", "flce", *argv])
