"""The one-launch training path of the Triton cross-entropy (under TRITON_INTERPRET=1 on CPU): with logits that
need a gradient and reduction "mean"/"sum", the forward writes the gradient of the reduced loss and the backward
only scales it by the upstream scalar. Checked against the float64 reference for values and gradients, for the
launches each path makes, the in-place scaling, the second-backward refusal and torch.compile."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from _kernel_utils import TOL, compare, leaf, record_launches

from mathforge.kernels import reference

ce = importlib.import_module("mathforge.kernels.cross_entropy")  # the package re-exports a function of that name

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 4.0},
]
# one rounding to the dtype, relative (the interpreter rounds fp32 → bf16 toward zero, a GPU to nearest)
ROUNDING = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _targets(n: int, v: int, seed: int, p_ignore: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, v, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < p_ignore] = -100
    return t


def _logits(n: int, v: int, seed: int, scale: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@pytest.fixture
def launches(monkeypatch):
    """Records (forward, backward) of every `_ce_kernel` launch and the scale of every `_scale_kernel` launch."""
    return record_launches(monkeypatch, ce)


def _check(logits, target, upstream, tol, **kw):
    compare(
        functools.partial(ce.cross_entropy_triton, target=target, **kw),
        functools.partial(reference.cross_entropy, target=target, **kw),
        [logits],
        tol,
        upstream=(torch.tensor(upstream, dtype=torch.float64),),
    )


@pytest.mark.parametrize("upstream", [1.0, 3.5, -0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("v", [7, 1000])
def test_fused_path_matches_reference(v, options, reduction, upstream, launches):
    n = 37
    _check(
        _logits(n, v, seed=v), _targets(n, v, seed=v + 1), upstream, TOL[torch.float32], reduction=reduction, **options
    )
    assert launches["ce"] == [(True, True)], "one launch computes the loss and the gradient"
    assert launches["scale"] == [upstream], "the backward only scales by the upstream scalar"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_path_multi_block_row(reduction, launches):
    """V = 40000 > ROW_BLOCK_MAX: the gradient loop reads the row a second time (two blocks per row)."""
    n, v = 3, 40000
    assert v > ce.row_block(v)
    target = torch.tensor([v - 1, -100, 32770])  # one target in the second block
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3, softcap=10.0)
    _check(_logits(n, v, seed=2), target, 2.0, TOL[torch.float32], **kw)
    assert launches["ce"] == [(True, True)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("upstream", [1.0, 3.5])
def test_logits_dtypes(dtype, upstream, launches):
    n, v = 19, 515
    logits = _logits(n, v, seed=3, scale=4.0, dtype=dtype)
    kw = dict(label_smoothing=0.05, z_loss=1e-3, softcap=6.0, reduction="mean")
    tol = TOL.get(dtype, TOL[torch.float32])  # fp64 logits are computed in fp32 by the kernel
    _check(logits, _targets(n, v, seed=4), upstream, tol, **kw)  # also asserts grad dtype == logits dtype
    fused = dtype in ce.FUSED_DTYPES
    assert fused == (dtype != torch.float16)
    assert launches["ce"] == ([(True, True)] if fused else [(True, False), (False, True)])


def test_fp16_logits_keep_small_gradients_under_a_loss_scale():
    """GradScaler-style upstream 2^16 on a mean over 512 tokens: softmax/512 (~6e-6 here) lies in fp16's
    subnormal range (a few bits left), so the gradient must be scaled by the upstream before it is rounded to
    fp16 (a fused fp16 path that scales afterwards is off by ~30% here)."""
    n, v = 512, 300
    logits, target = leaf(_logits(n, v, seed=23, scale=1.0, dtype=torch.float16)), _targets(n, v, seed=24)
    (ce.cross_entropy_triton(logits, target) * 2.0**16).backward()
    x64 = leaf(logits, torch.float64)
    (reference.cross_entropy(x64, target) * 2.0**16).backward()
    valid = target != -100
    rel = ((logits.grad.double() - x64.grad).abs() / x64.grad.abs())[valid]
    assert rel.max() < 2e-3, f"max relative error {rel.max():.3g}"


def test_loss_used_twice_gets_the_summed_upstream_gradient():
    n, v = 11, 29
    logits, target = leaf(_logits(n, v, seed=5)), _targets(n, v, seed=6)
    loss = ce.cross_entropy_triton(logits, target, label_smoothing=0.1)
    (loss + 2 * loss).backward()
    x64 = leaf(logits, torch.float64)
    (3 * reference.cross_entropy(x64, target, label_smoothing=0.1)).backward()
    torch.testing.assert_close(logits.grad.double(), x64.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_rows_give_zero_loss_and_zero_gradient(reduction, launches):
    logits = leaf(_logits(6, 11, seed=7))
    loss = ce.cross_entropy_triton(logits, torch.full((6,), -100), reduction=reduction, z_loss=1e-2)
    (loss * 4.0).backward()
    assert launches["ce"] == [(True, True)]
    assert torch.equal(loss.detach(), torch.zeros(()))
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_out_of_range_target_gives_nan_in_its_row_only():
    logits = leaf(_logits(4, 9, seed=8))
    loss = ce.cross_entropy_triton(logits, torch.tensor([1, 9, -100, 3]), reduction="sum")
    loss.backward()
    assert torch.isnan(loss)
    assert torch.isnan(logits.grad[1]).all()
    assert torch.isfinite(logits.grad[[0, 2, 3]]).all() and torch.equal(logits.grad[2], torch.zeros(9))


def test_second_backward_through_the_fused_path_is_refused():
    logits = leaf(_logits(5, 13, seed=9))
    loss = ce.cross_entropy_triton(logits, _targets(5, 13, seed=10, p_ignore=0.0))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"cross_entropy: backward through the same loss twice is not supported"):
        loss.backward()


def test_reduction_none_keeps_two_launches_and_allows_two_backwards(launches):
    n, v = 9, 31
    logits, target = leaf(_logits(n, v, seed=11)), _targets(n, v, seed=12)
    loss = ce.cross_entropy_triton(logits, target, reduction="none")
    upstream = torch.randn(n, generator=torch.Generator().manual_seed(13))
    (first,) = torch.autograd.grad(loss, logits, upstream, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits, upstream)
    assert torch.equal(first, second)
    assert launches["ce"] == [(True, False), (False, True), (False, True)] and launches["scale"] == []
    x64 = leaf(logits, torch.float64)
    (ref,) = torch.autograd.grad(reference.cross_entropy(x64, target, reduction="none"), x64, upstream.double())
    torch.testing.assert_close(first.double(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("how", ["no_grad", "detached", "inference_mode"])
def test_forward_without_gradient_allocates_none(how, launches):
    logits, target = _logits(6, 17, seed=14), _targets(6, 17, seed=15)
    if how == "detached":
        loss = ce.cross_entropy_triton(logits, target)
    else:
        context = torch.no_grad() if how == "no_grad" else torch.inference_mode()
        with context:
            loss = ce.cross_entropy_triton(leaf(logits), target)
    assert launches["ce"] == [(True, False)], "forward only: no gradient buffer, no gradient written"
    assert loss.grad_fn is None
    torch.testing.assert_close(loss.double(), reference.cross_entropy(logits.double(), target), rtol=1e-6, atol=1e-7)


def test_fused_path_saves_only_the_gradient():
    n, v = 7, 23
    logits = leaf(_logits(n, v, seed=16))
    loss = ce.cross_entropy_triton(logits, _targets(n, v, seed=17))
    saved = loss.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].shape == (n, v) and saved[0].data_ptr() != logits.data_ptr()


def test_non_contiguous_logits_on_the_fused_path():
    n, v = 8, 21
    logits = _logits(v, n, seed=18).T  # [n, v] with a strided last dim
    _check(logits, _targets(n, v, seed=19), 1.5, TOL[torch.float32], reduction="sum", label_smoothing=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_scale_kernel_scales_in_place_with_a_grid_stride(dtype):
    """numel 40000 over 2 programs of SCALE_BLOCK elements: each program strides over several blocks."""
    grad = (torch.randn(40000, generator=torch.Generator().manual_seed(20)) * 5).to(dtype)
    before = grad.clone()
    ce.launch_scale(grad, torch.tensor(1.0), max_programs=2)
    assert torch.equal(grad, before), "scale 1 leaves the gradient bit for bit"
    scale = torch.tensor(1 / 3, dtype=torch.float64)
    ce.launch_scale(grad, scale, max_programs=2)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (before.to(compute) * scale.to(compute)).to(dtype)
    torch.testing.assert_close(grad, expected, rtol=ROUNDING[dtype], atol=0)


def test_new_custom_ops_pass_opcheck():
    x, t = torch.randn(6, 11), torch.tensor([1, -100, 3, 10, 0, 2])
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    for reduction in ("mean", "sum"):
        args = (x, t, -100, reduction, 0.1, 1e-3, 5.0)
        torch.library.opcheck(torch.ops.mathforge.cross_entropy_fwd_grad.default, args, test_utils=tests)
    torch.library.opcheck(
        torch.ops.mathforge.cross_entropy_grad_scale.default, (torch.randn(6, 11), torch.tensor(2.5)), test_utils=tests
    )


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_path_compiles_without_graph_breaks(backend):
    n, v = 13, 37
    x, target = _logits(n, v, seed=21), _targets(n, v, seed=22)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0)

    def step(logits):  # mean (upstream 1 through the sum, 2.5 through the scaled term) and sum losses
        mean = ce.cross_entropy_triton(logits, target, **kw)
        total = ce.cross_entropy_triton(logits * 0.5, target, reduction="sum", **kw)
        return mean + 2.5 * total

    def run(fn):
        logits = leaf(x)
        loss = fn(logits)
        loss.backward()
        return loss.detach(), logits.grad

    eager_loss, eager_grad = run(step)
    loss, grad = run(torch.compile(step, fullgraph=True, backend=backend))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-7)
    x64 = leaf(x, torch.float64)
    ref = reference.cross_entropy(x64, target, **kw) + 2.5 * reference.cross_entropy(
        x64 * 0.5, target, reduction="sum", **kw
    )
    ref.backward()
    torch.testing.assert_close(grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


def test_backward_hands_the_forward_gradient_buffer_to_dot_grad():
    """Eager autograd steals the returned gradient: no [N, V] copy or allocation in the backward."""
    logits, target = leaf(_logits(8, 50, seed=25)), _targets(8, 50, seed=26)
    for upstream in (1.0, 3.5):
        logits.grad = None
        loss = ce.cross_entropy_triton(logits, target)
        buffer = loss.grad_fn.saved_tensors[0].data_ptr()
        (loss * upstream).backward()
        assert logits.grad.data_ptr() == buffer


def _cuda(n: int, v: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, v, generator=g, device="cuda") * 3).to(torch.bfloat16)


@pytest.mark.gpu
def test_fused_path_on_gpu_no_host_sync_and_one_gradient_buffer():
    n, v = 2048, 32000
    logits, target = _cuda(n, v, seed=2).requires_grad_(), torch.randint(0, v, (n,), device="cuda")
    target[::7] = -100
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = ce.cross_entropy_triton(logits, target, label_smoothing=0.1, z_loss=1e-4)
        (loss * 3.5).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= logits.numel() * 2 + (1 << 20), f"{extra / 2**20:.1f} MiB: more than the one gradient"
    x64 = leaf(logits, torch.float64)
    (reference.cross_entropy(x64, target, label_smoothing=0.1, z_loss=1e-4) * 3.5).backward()
    err = (logits.grad.double() - x64.grad).abs().max().item()
    assert err <= TOL[torch.bfloat16] * (1 + x64.grad.abs().max().item())
