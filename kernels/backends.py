"""The attention backends: `ATTENTION_BACKENDS`, one registry table (the single source of truth for their
names), each entry saying what to import, what it needs and how it runs; its order is the order
`varlen_attention(backend="auto")` tries them. `attention_backends()` probes the table for `mathforge doctor`.

Every runner takes (q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D], cu_seqlens, max_seqlen, causal).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mathforge.registry import Registry


@dataclass(frozen=True)
class BackendSpec:
    """One row of the table: `module.attribute` must import for the backend to be usable."""

    name: str
    module: str
    attribute: str
    needs_cuda: bool
    half_only: bool  # takes fp16/bf16 tensors only
    run: Callable[..., torch.Tensor]
    lazy: bool = False  # an optional package: imported by `load` on first resolve (outside compiled code)


@dataclass(frozen=True)
class AttentionBackend:
    """What `attention_backends()` found for one backend (doctor prints name, importable, usable, detail)."""

    name: str
    importable: bool
    needs_cuda: bool
    detail: str  # version, or why it cannot be imported

    @property
    def usable(self) -> bool:
        return self.importable and (torch.cuda.is_available() or not self.needs_cuda)


_LOADED: dict[str, Callable[..., torch.Tensor]] = {}  # lazy backends' functions, filled by `load`


def load(name: str) -> None:
    """Imports a lazy backend's function once (call outside compiled code; a no-op for the others)."""
    spec = ATTENTION_BACKENDS.get(name)
    if spec.lazy and name not in _LOADED:
        _LOADED[name] = getattr(importlib.import_module(spec.module), spec.attribute)


def _flash(name: str) -> Callable[..., torch.Tensor]:
    def run(q, k, v, cu_seqlens, max_seqlen, causal):
        cu = cu_seqlens.to(torch.int32)
        out = _LOADED[name](q, k, v, cu, cu, max_seqlen, max_seqlen, causal=causal)
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
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        block_mask=mask,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.squeeze(0).transpose(0, 1)


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _sdpa(q, k, v, cu_seqlens, max_seqlen, causal):
    """The documents right-padded into one [docs, heads, max_seqlen, D] batch, one SDPA call: any device and
    dtype, and on CPU torch's fused (flash) kernel instead of one small math-path call per document.
    Causal: a real query never sees the padding after it, so no mask is needed; else a key-padding mask.
    Equals `reference.varlen_attention` (one call per document) to fp32 rounding; padding rows are dropped."""
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    total, docs = q.shape[0], cu_seqlens.shape[0] - 1
    used = int(cu_seqlens[-1])
    if docs == 0 or used == 0 or max_seqlen == 0:
        return torch.zeros_like(q)
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    doc = torch.repeat_interleave(torch.arange(docs, device=q.device), lengths, output_size=used)
    slot = doc * max_seqlen + torch.arange(used, device=q.device) - starts[doc]  # token → row of the padded batch

    def pad(x):  # [used, heads, D] → [docs, heads, max_seqlen, D], zeros in the padding
        flat = x.new_zeros(docs * max_seqlen, *x.shape[1:]).index_copy(0, slot, x[:used])
        return flat.view(docs, max_seqlen, *x.shape[1:]).transpose(1, 2)

    mask = None
    if not causal:  # keys past a document's end are padding
        mask = (torch.arange(max_seqlen, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(
        pad(q), pad(k), pad(v), attn_mask=mask, is_causal=causal, scale=1 / math.sqrt(q.shape[-1])
    )
    out = out.transpose(1, 2).reshape(docs * max_seqlen, *q.shape[1:]).index_select(0, slot)
    if used < total:  # tokens after the last document (padding) attend to nothing: zeros
        out = torch.cat((out, q.new_zeros(total - used, *q.shape[1:])))
    return out


ATTENTION_BACKENDS: Registry[BackendSpec] = Registry("attention backend")
for _spec in (  # flash-attn 3 / 2: `flash_attn_varlen_func`, head_dim ≤ 256
    BackendSpec(
        "flash-attn-3",
        "flash_attn_interface",
        "flash_attn_varlen_func",
        needs_cuda=True,
        half_only=True,
        run=_flash("flash-attn-3"),
        lazy=True,
    ),
    BackendSpec(
        "flash-attn-2",
        "flash_attn",
        "flash_attn_varlen_func",
        needs_cuda=True,
        half_only=True,
        run=_flash("flash-attn-2"),
        lazy=True,
    ),
    # torch ≥ 2.10's varlen attention
    BackendSpec(
        "torch-varlen", "torch.nn.attention.varlen", "varlen_attn", needs_cuda=True, half_only=True, run=_torch_varlen
    ),
    # FlexAttention with a document-causal block mask (compiled)
    BackendSpec(
        "flex", "torch.nn.attention.flex_attention", "flex_attention", needs_cuda=True, half_only=False, run=_flex
    ),
    # scaled_dot_product_attention on the documents padded into a batch: any device and dtype; the CPU path
    BackendSpec(
        "sdpa", "torch.nn.functional", "scaled_dot_product_attention", needs_cuda=False, half_only=False, run=_sdpa
    ),
):
    ATTENTION_BACKENDS.add(_spec.name, _spec)
del _spec


def _probe(module: str, attribute: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
        getattr(mod, attribute)
    except Exception as error:  # an optional backend may fail to import in many ways (ABI, CUDA libs)
        return False, f"{type(error).__name__}: {error}".splitlines()[0][:120]
    version = getattr(mod, "__version__", None) or getattr(
        importlib.import_module(module.split(".")[0]), "__version__", ""
    )
    return True, str(version)


def attention_backends() -> list[AttentionBackend]:
    """Probes every backend of `ATTENTION_BACKENDS`, in table ("auto") order."""
    backends = []
    for name in ATTENTION_BACKENDS:
        spec = ATTENTION_BACKENDS.get(name)
        importable, detail = _probe(spec.module, spec.attribute)
        backends.append(AttentionBackend(name, importable, spec.needs_cuda, detail))
    return backends
