"""Which attention backends this install can import, in the order `varlen_attention(backend="auto")` tries them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    importable: bool
    needs_cuda: bool
    detail: str  # version, or why it cannot be imported

    @property
    def usable(self) -> bool:
        return self.importable and (torch.cuda.is_available() or not self.needs_cuda)


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
    """Probe flash-attn 3, flash-attn 2, torch varlen_attn, FlexAttention and SDPA."""
    probes = [
        ("flash-attn-3", "flash_attn_interface", "flash_attn_varlen_func", True),
        ("flash-attn-2", "flash_attn", "flash_attn_varlen_func", True),
        ("torch-varlen", "torch.nn.attention.varlen", "varlen_attn", True),
        ("flex", "torch.nn.attention.flex_attention", "flex_attention", True),
        ("sdpa", "torch.nn.functional", "scaled_dot_product_attention", False),
    ]
    backends = []
    for name, module, attribute, needs_cuda in probes:
        importable, detail = _probe(module, attribute)
        backends.append(AttentionBackend(name, importable, needs_cuda, detail))
    return backends
