"""nn.Module wrappers around the public ops (thin: all the work is in `mathforge.kernels.functional`).

`mathforge.model` builds its decoder from RMSNorm, SwiGLU and RotaryEmbedding here (one implementation)."""

from __future__ import annotations

import torch
from torch import nn

from mathforge.kernels.functional import apply_rope, cross_entropy, fused_linear_cross_entropy, rms_norm, swiglu


class CrossEntropyLoss(nn.Module):
    """`cross_entropy` with its options fixed at construction."""

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.options = dict(
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, **self.options)


class FusedLinearCrossEntropyLoss(nn.Module):
    """`fused_linear_cross_entropy(hidden, weight, target, bias=...)`: pass the lm_head's weight (and bias)."""

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.options = dict(
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )

    def forward(
        self, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return fused_linear_cross_entropy(hidden, weight, target, bias=bias, **self.options)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned weight (ones, or zeros when offset=1.0 as in Gemma)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, offset: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        init = torch.zeros if offset == 1.0 else torch.ones
        self.weight = nn.Parameter(init(hidden_size, device=device, dtype=dtype))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.offset)


class SwiGLU(nn.Module):
    """The Llama MLP: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions (Llama/HF layout, angles repeated over both halves) and `apply_rope`.

    `inv_freq` [head_dim/2] (e.g. with Llama-3 scaling) defaults to base^(-2i/head_dim). It is kept as a plain
    fp32 tensor, not a buffer: casting a model to bf16 must not round the frequencies and materialising it
    from the meta device must not wipe them; it is copied to each device on first use there."""

    def __init__(self, head_dim: int, base: float = 10000.0, inv_freq: torch.Tensor | None = None) -> None:
        super().__init__()
        if inv_freq is None:
            exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
            inv_freq = 1.0 / (base**exponents)
        self.inv_freq = inv_freq.detach().to(device="cpu", dtype=torch.float32)
        self._inv_freq_on: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] for `positions` [T], computed in fp32 and returned in `dtype`."""
        device = positions.device
        if device not in self._inv_freq_on:
            self._inv_freq_on[device] = self.inv_freq.to(device)
        angles = positions.float()[:, None] * self._inv_freq_on[device][None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin(positions, q.dtype)
        return apply_rope(q, k, cos, sin)
