"""Variable-length (packed) attention: many documents in one flat token stream, none attending to another.

`varlen_attention(q, k, v, cu_seqlens, max_seqlen)` takes q [T, Hq, D] and k, v [T, Hkv, D] (Hq a
multiple of Hkv: grouped-query attention) where document d occupies tokens cu_seqlens[d]:cu_seqlens[d+1].
The backends, what each needs and the order "auto" tries them are one table,
`mathforge.kernels.backends.ATTENTION_BACKENDS`; an unknown name is a ConfigError listing its names.
"""

from __future__ import annotations

import functools

import torch

from mathforge.errors import ConfigError
from mathforge.kernels.backends import ATTENTION_BACKENDS, AttentionBackend, attention_backends, load
from mathforge.kernels.validation import check_varlen_attention

_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def _probed() -> dict[str, AttentionBackend]:
    return {b.name: b for b in attention_backends()}


def _runs_on(name: str, device: torch.device | None, dtype: torch.dtype | None) -> bool:
    """Whether backend `name` is usable here and takes tensors on `device` of `dtype` (each when given)."""
    spec = ATTENTION_BACKENDS.get(name)
    if not _probed()[name].usable:
        return False
    if spec.needs_cuda and device is not None and device.type != "cuda":
        return False
    return not (spec.half_only and dtype is not None and dtype not in _HALF)


def usable_backends(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Names of the backends that can run here, in "auto" order (for tensors on `device` of `dtype` when given)."""
    device = torch.device(device) if device is not None else None
    return [name for name in ATTENTION_BACKENDS if _runs_on(name, device, dtype)]


def _needs(name: str) -> str:
    spec = ATTENTION_BACKENDS.get(name)
    return " and ".join(n for n, needed in (("CUDA", spec.needs_cuda), ("fp16/bf16", spec.half_only)) if needed)


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend `varlen_attention` will run for tensors like `q`: "auto" → the first usable; a name → checked,
    else ConfigError. Resolve once outside compiled code and pass the name: then nothing is probed inside."""
    if backend == "auto":
        backend = usable_backends(q.device, q.dtype)[0]  # "sdpa" is always usable
        load(backend)
        return backend
    if backend not in ATTENTION_BACKENDS:  # the message other code matches: "allowed: auto, <the table's names>"
        raise ConfigError(
            f"unknown attention backend {backend!r}; allowed: {', '.join(('auto', *ATTENTION_BACKENDS))}; "
            f"usable here: {', '.join(usable_backends()) or 'none'}"
        )
    probe = _probed()[backend]
    if not probe.importable:
        raise ConfigError(
            f"attention backend {backend!r} cannot be imported ({probe.detail}); "
            f"usable here: {', '.join(usable_backends())}"
        )
    if not _runs_on(backend, q.device, q.dtype):
        raise ConfigError(
            f"attention backend {backend!r} cannot run on {q.device.type} tensors of {q.dtype} "
            f"(needs {_needs(backend)}); usable for these tensors: {', '.join(usable_backends(q.device, q.dtype))}"
        )
    load(backend)
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
    check_varlen_attention(q, k, v, cu_seqlens)
    if torch.compiler.is_compiling() and backend in ATTENTION_BACKENDS:
        name = backend  # resolved (and checked) outside the compiled region, e.g. by Transformer.forward
    else:
        name = resolve_backend(backend, q)
    return ATTENTION_BACKENDS.get(name).run(q, k, v, cu_seqlens, int(max_seqlen), causal)
