"""Variable-length (packed) attention: many documents in one flat token stream, none attending to another.

`varlen_attention(q, k, v, cu_seqlens, max_seqlen)` takes q [T, Hq, D] and k, v [T, Hkv, D] (Hq a
multiple of Hkv: grouped-query attention) where document d occupies tokens cu_seqlens[d]:cu_seqlens[d+1].
Backends, in the order "auto" tries them (names as `mathforge doctor` prints them, see `backends.py`):

- "flash-attn-3" / "flash-attn-2": `flash_attn_varlen_func` (CUDA, fp16/bf16, head_dim ≤ 256)
- "torch-varlen": `torch.nn.attention.varlen.varlen_attn` (torch ≥ 2.10, CUDA, fp16/bf16)
- "flex": FlexAttention with a document-causal block mask (CUDA; compiled)
- "sdpa": `scaled_dot_product_attention` once per document (any device; the CPU path and last resort)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mathforge.errors import ConfigError
from mathforge.kernels.backends import AttentionBackend, attention_backends

BACKENDS = ("flash-attn-3", "flash-attn-2", "torch-varlen", "flex", "sdpa")
_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def _probed() -> dict[str, AttentionBackend]:
    return {b.name: b for b in attention_backends()}


def usable_backends(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Names of the backends that can run here, in "auto" order (for tensors on `device` of `dtype` when given)."""
    device = torch.device(device) if device is not None else None
    names = []
    for name in BACKENDS:
        backend = _probed()[name]
        if not backend.usable:
            continue
        if backend.needs_cuda and device is not None and device.type != "cuda":
            continue
        if name != "flex" and name != "sdpa" and dtype is not None and dtype not in _HALF:
            continue  # the flash kernels take fp16/bf16 only
        names.append(name)
    return names


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend `varlen_attention` will run for tensors like `q`: "auto" → the first usable; a name → checked,
    else ConfigError. Resolve once outside compiled code and pass the name: then nothing is probed inside."""
    if backend == "auto":
        backend = usable_backends(q.device, q.dtype)[0]  # "sdpa" is always usable
        if backend.startswith("flash-attn"):
            _load_flash(backend)
        return backend
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown attention backend {backend!r}; allowed: {', '.join(('auto', *BACKENDS))}; "
            f"usable here: {', '.join(usable_backends()) or 'none'}"
        )
    probe = _probed()[backend]
    if not probe.importable:
        raise ConfigError(
            f"attention backend {backend!r} cannot be imported ({probe.detail}); "
            f"usable here: {', '.join(usable_backends())}"
        )
    if backend not in usable_backends(q.device, q.dtype):
        raise ConfigError(
            f"attention backend {backend!r} cannot run on {q.device.type} tensors of {q.dtype} "
            f"(needs CUDA{'' if backend in ('flex', 'sdpa') else ' and fp16/bf16'}); "
            f"usable for these tensors: {', '.join(usable_backends(q.device, q.dtype))}"
        )
    if backend.startswith("flash-attn"):
        _load_flash(backend)
    return backend


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax(q·kᵀ/√D)·v within each document of a packed stream; returns [T, Hq, D] in q's dtype.

    cu_seqlens: int32 [D+1], 0 first and T last; max_seqlen: the longest document's length.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [tokens, heads, head_dim]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if torch.compiler.is_compiling() and backend in _RUNNERS:
        name = backend  # resolved (and checked) outside the compiled region, e.g. by Transformer.forward
    else:
        name = resolve_backend(backend, q)
    return _RUNNERS[name](q, k, v, cu_seqlens, int(max_seqlen), causal)


_FLASH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {}  # filled on first resolve, outside compiled code


def _load_flash(name: str) -> None:
    module = {"flash-attn-3": "flash_attn_interface", "flash-attn-2": "flash_attn"}[name]
    if name not in _FLASH_FUNCTIONS:
        _FLASH_FUNCTIONS[name] = importlib.import_module(module).flash_attn_varlen_func


def _flash(name: str) -> Callable[..., torch.Tensor]:
    def run(q, k, v, cu_seqlens, max_seqlen, causal):
        cu = cu_seqlens.to(torch.int32)
        out = _FLASH_FUNCTIONS[name](q, k, v, cu, cu, max_seqlen, max_seqlen, causal=causal)
        return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the log-sum-exp

    return run


try:  # torch ≥ 2.10; its keywords changed in 2.11 (is_causal → window_size, enable_gqa added)
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn

    _VARLEN_PARAMS = frozenset(inspect.signature(_varlen_attn).parameters)
except ImportError:
    _varlen_attn, _VARLEN_PARAMS = None, frozenset()

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal):
    kwargs = {}
    if "window_size" in _VARLEN_PARAMS:  # causal is a (-1, 0) window
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:
            k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    cu = cu_seqlens.to(torch.int32)
    return _varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, **kwargs)


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, cu_seqlens, max_seqlen, causal):
    """FlexAttention needs compiling to be fast: inside a compiled region it is traced in; outside, compiled once."""
    total = q.shape[0]
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device), lengths.long(), output_size=total)

    def document_causal(b, h, q_idx, kv_idx):
        same = doc[q_idx] == doc[kv_idx]
        return same & (kv_idx <= q_idx) if causal else same

    mask = create_block_mask(document_causal, None, None, total, total, device=q.device)
    attend = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    out = attend(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        block_mask=mask, enable_gqa=q.shape[1] != k.shape[1],
    )  # fmt: skip
    return out.squeeze(0).transpose(0, 1)


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _sdpa(q, k, v, cu_seqlens, max_seqlen, causal):
    """One SDPA call per document: exact, any device and dtype; the reference the other backends are tested against."""
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qd, kd, vd = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [heads, len, D]
        outs.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal, scale=1 / math.sqrt(q.shape[-1])))
    outs = [o.transpose(0, 1) for o in outs]
    if bounds[-1] < q.shape[0]:  # tokens after the last document (padding) attend to nothing: zeros
        outs.append(q.new_zeros(q.shape[0] - bounds[-1], *q.shape[1:]))
    return torch.cat(outs, dim=0) if outs else torch.zeros_like(q)


_RUNNERS: dict[str, Callable[..., torch.Tensor]] = {
    "flash-attn-3": _flash("flash-attn-3"),
    "flash-attn-2": _flash("flash-attn-2"),
    "torch-varlen": _torch_varlen,
    "flex": _flex,
    "sdpa": _sdpa,
}
