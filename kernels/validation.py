"""Input checks for the public ops: one function per op, run in front of both paths (Triton and reference).

Each raises `ValueError` naming the argument, its shape and dtype, and what was expected, so that a
call that fails on the GPU fails the same way on the CPU (the torch references would otherwise
broadcast, reshape or upcast their way past inputs the Triton kernels reject). The checks read only
shapes, dtypes, devices and Python numbers: no host synchronisation, and free under torch.compile.
Target values are checked separately (`MATHFORGE_CHECK=1`, see `mathforge.kernels._common`).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def describe(name: str, t: torch.Tensor) -> str:
    """`name` with its shape, dtype and device, as every message shows them."""
    return f"{name} (shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device})"


def _float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise ValueError(f"{describe(name, t)}: dtype must be one of {allowed}")


def _same_device(main: str, t: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, other in others.items():
        if other is not None and other.device != t.device:
            raise ValueError(f"{describe(name, other)} must be on the device of {describe(main, t)}")


def _same_dtype(main: str, t: torch.Tensor, name: str, other: torch.Tensor) -> None:
    if other.dtype != t.dtype:
        raise ValueError(f"{describe(name, other)} must have the dtype of {describe(main, t)}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_loss_options(reduction: str, label_smoothing: float, z_loss: float, softcap: float | None) -> None:
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if not z_loss >= 0.0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss!r}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"softcap must be None or > 0, got {softcap!r}")


def _check_target(target: torch.Tensor, rows: int, rows_of: str) -> None:
    if not isinstance(target, torch.Tensor) or target.dtype not in INDEX_DTYPES:
        got = describe("target", target) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be an integer tensor of class indices, got {got}")
    if target.shape != (rows,):
        raise ValueError(f"{describe('target', target)} must be [N] with N = {rows}, the rows of {rows_of}")


def check_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> None:
    """logits [N, V] (fp16/bf16/fp32/fp64), target [N] integer on the same device, options in range."""
    _check_loss_options(reduction, label_smoothing, z_loss, softcap)
    _float("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"{describe('logits', logits)} must be 2-D [N, V]; flatten leading dims: reshape(-1, V)")
    _check_target(target, logits.shape[0], f"logits {tuple(logits.shape)}")
    _same_device("logits", logits, target=target)


def check_fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> None:
    """hidden [N, H], weight [V, H] and bias [V] of one floating dtype (as in nn.Linear), target [N] integer."""
    _check_loss_options(reduction, label_smoothing, z_loss, softcap)
    _float("hidden", hidden)
    _float("weight", weight)
    if hidden.dim() != 2:
        raise ValueError(f"{describe('hidden', hidden)} must be 2-D [N, H]; flatten leading dims: reshape(-1, H)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{describe('weight', weight)} must be [V, H] with H = {hidden.shape[1]} (hidden's last dim)")
    _same_dtype("hidden", hidden, "weight", weight)
    if bias is not None:
        _float("bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"{describe('bias', bias)} must be [V] with V = {weight.shape[0]} (weight's rows)")
        _same_dtype("weight", weight, "bias", bias)
    _check_target(target, hidden.shape[0], f"hidden {tuple(hidden.shape)}")
    _same_device("hidden", hidden, weight=weight, bias=bias, target=target)


def check_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, offset: float) -> None:
    """x [..., H]; weight None (no affine, offset must be 0) or exactly [H] (no broadcasting); eps >= 0."""
    _float("x", x)
    if x.dim() == 0:
        raise ValueError(f"{describe('x', x)} must have at least one dim (normalised over the last)")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if weight is None:
        if offset != 0.0:
            raise ValueError(f"offset={offset!r} scales a weight; with weight=None (no affine) offset must be 0.0")
        return
    _float("weight", weight)
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"{describe('weight', weight)} must be [H] with H = {x.shape[-1]} (x's last dim)")
    _same_device("x", x, weight=weight)


def check_swiglu(gate: torch.Tensor, up: torch.Tensor) -> None:
    """gate and up of the same shape (no broadcasting), floating dtypes, one device."""
    _float("gate", gate)
    _float("up", up)
    if gate.shape != up.shape:
        raise ValueError(f"{describe('up', up)} must have the shape of {describe('gate', gate)}")
    _same_device("gate", gate, up=up)


def check_apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """q [T, Hq, D], k [T, Hk, D] with D even; cos and sin of one shape broadcastable to [T, D]."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        _float(name, t)
    if q.dim() != 3:
        raise ValueError(f"{describe('q', q)} must be 3-D [tokens, heads, head_dim]")
    if k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"{describe('k', k)} must be [T, Hk, D] with T = {q.shape[0]}, D = {q.shape[2]} (from q)")
    if q.shape[2] % 2:
        raise ValueError(f"{describe('q', q)}: head_dim {q.shape[2]} must be even (half-rotation layout)")
    table = (q.shape[0], q.shape[2])
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() > 2 or t.shape[-1:] != table[1:] or (t.dim() == 2 and t.shape[0] not in (1, table[0])):
            raise ValueError(f"{describe(name, t)} must be [T, D] = {list(table)}, [1, D] or [D]")
    if sin.shape != cos.shape:
        raise ValueError(f"{describe('sin', sin)} must have the shape of {describe('cos', cos)}")
    _same_device("q", q, k=k, cos=cos, sin=sin)


def check_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    """q [T, Hq, D], k and v [T, Hkv, D] with Hq a multiple of Hkv, cu_seqlens 1-D integer."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be [tokens, heads, head_dim]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be [T, Hkv, D] with T, D of q {tuple(q.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in INDEX_DTYPES:
        raise ValueError(f"{describe('cu_seqlens', cu_seqlens)} must be a 1-D integer tensor [documents + 1]")
