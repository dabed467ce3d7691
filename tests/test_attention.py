"""varlen_attention: document isolation, causality, GQA, backend dispatch and agreement between backends."""

import math

import pytest
import torch

from mathforge.errors import ConfigError
from mathforge.kernels import varlen_attention
from mathforge.kernels.attention import usable_backends
from mathforge.kernels.backends import ATTENTION_BACKENDS, attention_backends

LENGTHS = [7, 1, 12, 5]


def packed(lengths, hq=4, hkv=2, dim=16, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, generator=gen).to(device=device, dtype=dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k, v, cu


def dense_reference(q, k, v, cu, causal=True):
    """Softmax over an explicit [T, T] document(-causal) mask, in fp64."""
    total = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(cu) - 1), (cu[1:] - cu[:-1]).long().cpu())
    allowed = doc[:, None] == doc[None, :]
    if causal:
        allowed &= torch.arange(total)[None, :] <= torch.arange(total)[:, None]
    groups = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(groups, dim=1) for x in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed.to(q.device), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (4, 1)])
def test_sdpa_matches_dense_reference(causal, hq, hkv):
    q, k, v, cu = packed(LENGTHS, hq, hkv)
    out = varlen_attention(q, k, v, cu, max(LENGTHS), causal=causal, backend="sdpa")
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, cu, causal), rtol=1e-5, atol=1e-6)


def check_isolation(backend, device="cpu", dtype=torch.float32, tol=0.0):
    """Perturbing document 2 or a doc's future never moves other outputs; perturbing a visible token does."""
    q, k, v, cu = packed(LENGTHS, dtype=dtype, device=device)
    base = varlen_attention(q, k, v, cu, max(LENGTHS), backend=backend)
    start, end = int(cu[2]), int(cu[3])
    k2, v2 = k.clone(), v.clone()
    k2[start:end] += 3.0
    v2[start:end] -= 5.0
    moved = varlen_attention(q, k2, v2, cu, max(LENGTHS), backend=backend)
    outside = torch.ones(q.shape[0], dtype=torch.bool, device=device)
    outside[start:end] = False
    assert (moved[outside] - base[outside]).abs().max() <= tol  # no token attends across documents
    assert (moved[start:end] - base[start:end]).abs().max() > 0.1  # the perturbation is visible inside
    mid = start + 6  # perturb the future of document 2 from token `mid` on
    k3, v3 = k.clone(), v.clone()
    k3[mid:end] += 3.0
    v3[mid:end] -= 5.0
    future = varlen_attention(q, k3, v3, cu, max(LENGTHS), backend=backend)
    assert (future[:mid] - base[:mid]).abs().max() <= tol  # nothing attends to the future
    assert (future[mid:end] - base[mid:end]).abs().max() > 0.1


def test_sdpa_isolates_documents_and_the_future():
    check_isolation("sdpa")


def test_every_usable_backend_agrees_with_sdpa_on_cpu():
    q, k, v, cu = packed(LENGTHS)
    ref = varlen_attention(q, k, v, cu, max(LENGTHS), backend="sdpa")
    names = usable_backends(q.device, q.dtype)
    assert names[-1] == "sdpa"
    for name in names:
        torch.testing.assert_close(varlen_attention(q, k, v, cu, max(LENGTHS), backend=name), ref)
    assert torch.equal(varlen_attention(q, k, v, cu, max(LENGTHS)), ref)  # "auto" on CPU is sdpa


def test_tokens_after_the_last_document_get_zeros():
    q, k, v, cu = packed([3, 4])
    out = varlen_attention(q, k, v, torch.tensor([0, 3], dtype=torch.int32), 3, backend="sdpa")
    assert torch.all(out[3:] == 0)
    torch.testing.assert_close(out[:3], varlen_attention(q[:3], k[:3], v[:3], cu[:2], 3, backend="sdpa"))


def test_backend_errors_name_the_choices():
    q, k, v, cu = packed([4])
    known = r"unknown attention backend 'flash'; allowed: auto, flash-attn-3, flash-attn-2, torch-varlen, flex, sdpa;"
    with pytest.raises(ConfigError, match=known):
        varlen_attention(q, k, v, cu, 4, backend="flash")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="usable.*sdpa"):
            varlen_attention(q, k, v, cu, 4, backend="flex")
    with pytest.raises(ValueError, match="multiple"):
        varlen_attention(q, k[:, :1].expand(-1, 3, -1), v[:, :1].expand(-1, 3, -1), cu, 4)


def test_gradients_flow_per_document():
    q, k, v, cu = packed(LENGTHS)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = varlen_attention(q, k, v, cu, max(LENGTHS), backend="sdpa")
    start, end = int(cu[2]), int(cu[3])
    out[start:end].sum().backward()
    assert torch.all(k.grad[:start] == 0) and torch.all(k.grad[end:] == 0)
    assert k.grad[start:end].abs().sum() > 0


def test_the_registry_is_the_one_list_of_backends():
    names = ATTENTION_BACKENDS.names()
    assert names == ["flash-attn-3", "flash-attn-2", "torch-varlen", "flex", "sdpa"]  # the "auto" order
    probed = attention_backends()
    assert [b.name for b in probed] == names
    sdpa = probed[-1]
    assert sdpa.importable and sdpa.usable and not sdpa.needs_cuda and sdpa.detail == torch.__version__
    assert set(usable_backends()) <= set(names) and usable_backends("cpu", torch.float32)[-1] == "sdpa"
    with pytest.raises(ConfigError, match="unknown attention backend 'nope'; known: flash-attn-3"):
        ATTENTION_BACKENDS.get("nope")


def test_validation_names_shapes():
    q, k, v, cu = packed([4])
    with pytest.raises(ValueError, match=r"k \(4, 2, 16\) and v \(4, 1, 16\) must both be"):
        varlen_attention(q, k, v[:, :1], cu, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens \(shape \(2,\), dtype torch.float32.*1-D integer"):
        varlen_attention(q, k, v, cu.float(), 4)


CUDA_BACKENDS = [b for b in ATTENTION_BACKENDS if b != "sdpa"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_cuda_backend_matches_sdpa_and_isolates(name):
    if name not in usable_backends("cuda", torch.bfloat16):
        pytest.skip(f"{name} is not usable here")
    lengths = [130, 1, 517, 64, 300]
    q, k, v, cu = packed(lengths, hq=8, hkv=2, dim=128, dtype=torch.bfloat16, device="cuda")
    ref = varlen_attention(q, k, v, cu, max(lengths), backend="sdpa")
    out = varlen_attention(q, k, v, cu, max(lengths), backend=name)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    grads = []
    for backend in (name, "sdpa"):
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        varlen_attention(qq, kk, vv, cu, max(lengths), backend=backend).float().square().sum().backward()
        grads.append([t.grad.float() for t in (qq, kk, vv)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)
    check_isolation(name, device="cuda", dtype=torch.bfloat16, tol=1e-3)


def random_lengths(seed, docs=9, low=0, high=40):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (docs,), generator=gen).tolist()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 1)])
@pytest.mark.parametrize(  # bf16: the tolerances of the CUDA backends' test above (outputs, gradients)
    ("dtype", "tol", "grad_tol"), [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 5e-2)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padded_batch_equals_the_per_document_reference(causal, hq, hkv, dtype, tol, grad_tol, seed):
    """The "sdpa" backend pads the documents into one batch; values and gradients equal one SDPA call per
    document (reference.varlen_attention), empty documents included."""
    from mathforge.kernels.reference import varlen_attention as per_document

    lengths = random_lengths(seed)
    lengths[seed] = 0  # an empty document somewhere
    q, k, v, cu = packed(lengths, hq, hkv, dtype=dtype, seed=seed)
    grads = []
    for padded in (True, False):
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        if padded:
            out = varlen_attention(qq, kk, vv, cu, max(lengths), causal=causal, backend="sdpa")
        else:
            out = per_document(qq, kk, vv, cu, causal)
        out.float().square().sum().backward()
        grads.append((out.detach().float(), *(t.grad.float() for t in (qq, kk, vv))))
    assert grads[0][0].dtype == torch.float32 and grads[0][0].shape == q.shape
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=tol, atol=tol)
    for ours, ref in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(ours, ref, rtol=grad_tol, atol=grad_tol)


def test_the_per_document_reference_matches_the_dense_fp64_reference():
    from mathforge.kernels.reference import varlen_attention as per_document

    q, k, v, cu = packed([7, 0, 12, 5], 4, 2)
    for causal in (True, False):
        out = per_document(q, k, v, cu, causal)
        torch.testing.assert_close(out.double(), dense_reference(q, k, v, cu, causal), rtol=1e-5, atol=1e-6)
