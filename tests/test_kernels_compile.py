"""torch.compile safety and dispatch: the custom ops pass torch.library.opcheck (fake impls, schemas,
autograd), a tiny model using every Triton op compiles with fullgraph=True (no graph break) and matches
eager; the public API on CPU is the reference; the nn.Module wrappers call the public ops."""

from __future__ import annotations

import pytest
import torch

import mathforge.kernels as K
from mathforge.kernels import modules, reference
from mathforge.kernels.cross_entropy import cross_entropy_triton
from mathforge.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy_triton
from mathforge.kernels.rms_norm import rms_norm_triton
from mathforge.kernels.rope import apply_rope_triton
from mathforge.kernels.swiglu import swiglu_triton


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _opcheck_cases():
    x, t = torch.randn(6, 11, generator=_g(0)), torch.tensor([1, -100, 3, 10, 0, 2])
    h, w, b = torch.randn(6, 4, generator=_g(1)), torch.randn(11, 4, generator=_g(2)), torch.randn(11, generator=_g(3))
    lse = torch.logsumexp(x, -1)
    q, k, cs = torch.randn(5, 2, 8, generator=_g(4)), torch.randn(5, 1, 8, generator=_g(5)), torch.randn(5, 8)
    return {
        "cross_entropy_fwd": (x, t, -100, 0.1, 1e-3, 5.0),
        "cross_entropy_bwd": (torch.rand(6), x, t, lse, -100, 0.1, 1e-3, None),
        "flce_fwd": (h, w, b, t, -100, 0.0, 0.0, None, 1, 4),
        "flce_bwd": (torch.rand(6), h, w, None, t, lse, -100, 0.0, 0.0, None, 4),
        "rms_norm_fwd": (torch.randn(3, 9), torch.randn(9), 1e-6, 0.0),
        "rms_norm_bwd": (torch.randn(3, 9), torch.randn(3, 9), torch.randn(9), torch.rand(3), 1.0),
        "swiglu_fwd": (torch.randn(4, 5), torch.randn(4, 5)),
        "swiglu_bwd": (torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)),
        "rope_fwd": (q, k, cs, cs),
        "rope_bwd": (q, k, cs, cs, q, k),
        "rms_norm_fwd/no-weight": (torch.randn(3, 9), None, 1e-6, 0.0),
        "rms_norm_bwd/no-weight": (torch.randn(3, 9), torch.randn(3, 9), None, torch.rand(3), 0.0),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_custom_ops_pass_opcheck(case):
    args = _opcheck_cases()[case]
    name = case.split("/")[0]
    torch.library.opcheck(
        getattr(torch.ops.mathforge, name).default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


class TinyModel(torch.nn.Module):
    """Embedding → RMSNorm → q/k RoPE → SwiGLU MLP → fused linear CE, plus a plain CE on the same logits."""

    def __init__(self, vocab: int = 19, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        self.norm = torch.nn.Parameter(torch.rand(dim) + 0.5)
        self.qk = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.gate_up = torch.nn.Linear(dim, 64, bias=False)
        self.down = torch.nn.Linear(32, dim, bias=False)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens, target, cos, sin):
        x = rms_norm_triton(self.embed(tokens), self.norm, 1e-6, 0.0)
        q, k = self.qk(x).view(x.shape[0], 2 * self.heads, -1).chunk(2, dim=1)
        q, k = apply_rope_triton(q, k, cos, sin)
        x = x + (q + k).flatten(1)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        x = x + self.down(swiglu_triton(gate, up))
        flce = fused_linear_cross_entropy_triton(x, self.head.weight, target, bias=self.head.bias, z_loss=1e-3, chunk=5)
        ce = cross_entropy_triton(self.head(x), target, reduction="none", label_smoothing=0.1)
        return flce + ce.square().mean()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_tiny_model_matches_eager_without_graph_breaks(backend):
    torch.manual_seed(0)
    model = TinyModel()
    n = 13
    tokens, target = torch.randint(0, 19, (n,)), torch.randint(0, 19, (n,))
    target[4] = -100
    cos, sin = torch.randn(n, 8), torch.randn(n, 8)

    def step(fn):
        model.zero_grad()
        loss = fn(tokens, target, cos, sin)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = step(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss, grads = step(compiled)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_public_api_on_cpu_is_the_reference():
    x, t = torch.randn(5, 7), torch.tensor([1, -100, 3, 6, 0])
    assert torch.equal(K.cross_entropy(x, t, z_loss=0.1), reference.cross_entropy(x, t, z_loss=0.1))
    h, w = torch.randn(5, 3), torch.randn(7, 3)
    assert torch.equal(K.fused_linear_cross_entropy(h, w, t), reference.fused_linear_cross_entropy(h, w, t))
    assert torch.equal(K.rms_norm(h, torch.ones(3)), reference.rms_norm(h, torch.ones(3)))
    assert torch.equal(K.swiglu(h, h), reference.swiglu(h, h))
    with pytest.raises(ValueError, match="reduction"):
        K.cross_entropy(x, t, reduction="avg")


def test_modules_match_the_functional_ops():
    torch.manual_seed(1)
    x, t = torch.randn(6, 8), torch.tensor([0, 1, 2, -100, 4, 5])
    head = torch.nn.Linear(8, 11)
    loss = modules.FusedLinearCrossEntropyLoss(label_smoothing=0.1)(x, head.weight, t, head.bias)
    assert torch.allclose(loss, modules.CrossEntropyLoss(label_smoothing=0.1)(head(x), t), atol=1e-6)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(head(x), t, label_smoothing=0.1), atol=1e-6)
    norm = modules.RMSNorm(8, offset=1.0)
    assert torch.allclose(norm(x), x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6), atol=1e-6)
    mlp = modules.SwiGLU(8, 12)
    expected = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    rope = modules.RotaryEmbedding(4)
    q = torch.randn(6, 2, 4)
    q_rot, _ = rope(q, q, torch.arange(6))
    assert torch.allclose(q_rot[0], q[0]) and torch.allclose(q_rot.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
