"""The decoder: Llama 2/3, Qwen2/2.5 and Mistral in one readable file, plus the KV cache for generation.

    embed_tokens → N × [x + attn(rms_norm(x)); x + mlp(rms_norm(x))] → norm → (lm_head, built only when asked)

Attention is grouped-query with rotary embeddings (Llama-3 and linear rope scaling included), q/k/v biases for
Qwen2 and q/k/v/o biases for Llama with `attention_bias`; the MLP is SwiGLU. The layers are the module
wrappers of `mathforge.kernels.modules` (Triton on CUDA, torch references on CPU). A micro-batch is usually one
packed token stream: `input_ids` [T], `position_ids` [T] restarting at 0 per document, `cu_seqlens` [D+1]
int32 and `max_seqlen`; documents never attend to each other. `forward` returns hidden states after the
final norm; `loss` runs the LM head fused with the cross-entropy so the [T, vocab] logits never exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mathforge.errors import ConfigError
from mathforge.kernels import apply_rope, fused_linear_cross_entropy, varlen_attention
from mathforge.kernels.attention import resolve_backend
from mathforge.kernels.modules import RMSNorm, RotaryEmbedding, SwiGLU
from mathforge.model import hf
from mathforge.model.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies [head_dim/2] in fp32, with linear or Llama-3 scaling (as transformers computes)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    # Llama 3: long wavelengths slowed by `factor`, short ones kept, a smooth blend in between.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=config.o_proj_bias)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, backend, kv_cache=None):
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, k, cos, sin)
        if kv_cache is not None and cu_seqlens is None:  # one decode step: one new token per cached row
            out = kv_cache.decode(self.layer_idx, q, k, v)
        else:
            if kv_cache is not None:  # prefill: the packed prompts, row d of the cache = document d
                kv_cache.prefill(self.layer_idx, k, v, cu_seqlens)
            out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, backend=backend)
        return self.o_proj(out.reshape(tokens, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, backend="auto", kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_seqlen, backend, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Keys and values of every layer for generation, [layers, rows, max_len, kv_heads, head_dim], and each
    row's length. Filled by a packed prefill (document d → row d), then one token per row per decode step."""

    def __init__(self, config: ModelConfig, rows: int, max_len: int, *, dtype: torch.dtype, device) -> None:
        if config.sliding_window is not None and max_len > config.sliding_window:
            raise ConfigError(f"generation up to {max_len} tokens exceeds sliding_window={config.sliding_window}")
        shape = (config.num_hidden_layers, rows, max_len, config.num_key_value_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)

    def prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        row = torch.repeat_interleave(torch.arange(len(lengths), device=k.device), lengths, output_size=k.shape[0])
        pos = torch.arange(k.shape[0], device=k.device) - cu_seqlens[:-1].long()[row]
        self.k[layer, row, pos] = k.to(self.k.dtype)
        self.v[layer, row, pos] = v.to(self.v.dtype)
        self.lengths = lengths

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(q.shape[0], device=q.device)
        self.k[layer, rows, self.lengths] = k.to(self.k.dtype)
        self.v[layer, rows, self.lengths] = v.to(self.v.dtype)
        keys, values = self.k[layer].transpose(1, 2), self.v[layer].transpose(1, 2)  # [rows, kv_heads, max_len, D]
        visible = torch.arange(keys.shape[2], device=q.device)[None, :] <= self.lengths[:, None]
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=visible[:, None, None, :],
            enable_gqa=q.shape[1] != keys.shape[1],
        )
        return out.squeeze(2)

    def advance(self) -> None:
        """After a decode step went through every layer: each row is one token longer."""
        self.lengths = self.lengths + 1


class Transformer(nn.Module):
    """The decoder with Hugging Face's module names (under `model.` in a checkpoint); see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.activation_checkpointing = False
        self.attention_backend = "auto"  # a name from mathforge.kernels.backends.ATTENTION_BACKENDS, or "auto"
        self.rotary_emb = RotaryEmbedding(config.head_dim, inv_freq=rope_inv_freq(config))  # fp32, no parameters

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init as transformers does: normal(0, initializer_range) matrices, zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0 - module.offset)  # a unit scale (offset + weight)

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] in fp32 for the given positions."""
        return self.rotary_emb.cos_sin(position_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm: packed [T] → [T, hidden]; padded [B, S] → [B, S, hidden].

        Packed: `cu_seqlens` [D+1] int32 (None: the whole stream is one document), `position_ids` [T]
        (None: derived from cu_seqlens), `max_seqlen` (None: computed, which syncs with the GPU).
        Padded: `attention_mask` [B, S] (1 = token; left or right padding), pads give zero hidden states;
        positions count real tokens only, so left-padded rows equal their unpadded selves.
        `kv_cache` (generation): with cu_seqlens it is a prefill of one document per cache row; without,
        `input_ids` [rows] is one decode step at the positions `kv_cache.lengths`.
        """
        if input_ids.dim() == 2:
            return self._forward_padded(input_ids, attention_mask, position_ids)
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be [T] (packed) or [B, S] (padded), got shape {tuple(input_ids.shape)}")
        tokens = input_ids.shape[0]
        decoding = kv_cache is not None and cu_seqlens is None
        if decoding:
            position_ids = kv_cache.lengths
        else:
            if cu_seqlens is None:
                cu_seqlens = torch.tensor([0, tokens], dtype=torch.int32, device=input_ids.device)
                max_seqlen = tokens if max_seqlen is None else max_seqlen
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            if position_ids is None:
                position_ids = positions_from_cu_seqlens(cu_seqlens, tokens)
            window = self.config.sliding_window
            if window is not None and max_seqlen > window:
                raise ConfigError(
                    f"a document of {max_seqlen} tokens exceeds sliding_window={window}; "
                    "mathforge attends over whole documents (no sliding window), so keep documents within the window"
                )
        cos, sin = self.rope(position_ids)
        x = self.embed_tokens(input_ids)
        backend = resolve_backend(self.attention_backend, x)  # once, outside the (compilable) blocks
        for block in self.layers:
            if self.activation_checkpointing and torch.is_grad_enabled() and kv_cache is None:
                x = checkpoint(block, x, cos, sin, cu_seqlens, max_seqlen, backend, use_reentrant=False)
            else:
                x = block(x, cos, sin, cu_seqlens, max_seqlen, backend, kv_cache)
        return self.norm(x)

    def _forward_padded(self, input_ids, attention_mask, position_ids):
        rows, width = input_ids.shape
        if attention_mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            mask = attention_mask.bool()
        lengths = mask.sum(dim=1)
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        if position_ids is None:
            position_ids = mask.long().cumsum(dim=1) - 1
        hidden = self.forward(
            input_ids[mask],
            position_ids=position_ids[mask],
            cu_seqlens=cu_seqlens,
            max_seqlen=int(lengths.max()) if rows else 0,
        )
        out = hidden.new_zeros(rows, width, hidden.shape[-1])
        return out.masked_scatter(mask[..., None], hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden @ lm_head_weightᵀ, in the model's dtype (only for generation / inspection)."""
        return F.linear(hidden, self.lm_head_weight)

    def loss(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        *,
        reduction: str = "sum",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_z_loss: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the LM head on `hidden` through `fused_linear_cross_entropy`; an fp32 scalar
        (with `return_z_loss`, the pair (loss, its z-loss term), the term detached, for logging).

        Labels are ALREADY ALIGNED with positions: labels[t] is the token to predict from position t
        (i.e. the next token), `ignore_index` where nothing is predicted (see `shift_labels`). `reduction="sum"`
        lets the trainer divide by the global count of predicted tokens across micro-batches and ranks.
        `ignore_index`, `label_smoothing`, `z_loss` and `softcap` go to the kernel unchanged (a trainer's
        `[loss]` options); their meaning is the kernel's."""
        return fused_linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            self.lm_head_weight,
            labels.reshape(-1),
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            return_z_loss=return_z_loss,
        )

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once); `exclude_embeddings` drops the input embedding."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.embed_tokens.weight))
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_lens: Sequence[int] | torch.Tensor, *, training: bool = True) -> float:
        """Model FLOPs per token for a batch of documents of lengths `seq_lens` (for MFU).

        Matmuls: 2·N_matmul forward (×3 with backward), N_matmul = transformer-block weights + the LM head
        (vocab × hidden, tied or not); the embedding lookup and norms are not matmuls. Attention: per layer
        and document of length s, q·kᵀ and p·v cost 2·2·s²·heads·head_dim forward, halved for the causal
        mask (only the computed half counts, as FlashAttention reports). Averaged per token over the batch."""
        cfg = self.config
        lens = torch.as_tensor(seq_lens, dtype=torch.float64)
        n_matmul = sum(p.numel() for p in self.layers.parameters()) + cfg.vocab_size * cfg.hidden_size
        attn = 2.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * float((lens**2).sum())
        per_token_forward = 2.0 * n_matmul + attn / max(float(lens.sum()), 1.0)
        return per_token_forward * (3.0 if training else 1.0)

    # ------------------------------------------------------------------------------------------ checkpoints

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors under Hugging Face names (FSDP2 DTensors are gathered: call it on every rank)."""
        return hf.hf_state_dict(self)

    def save_pretrained(
        self,
        path: str | Path,
        *,
        max_shard_size: int | str = "5GB",
        dtype: torch.dtype | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Writes config.json, generation_config.json and safetensors (sharded with an index when larger than
        `max_shard_size`) to `path` (`mathforge.model.hf.save_pretrained`); transformers and vLLM load it."""
        return hf.save_pretrained(self, path, max_shard_size=max_shard_size, dtype=dtype, state=state)


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """position_ids [T] restarting at 0 at every document start."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths, output_size=tokens)
    return torch.arange(tokens, device=cu_seqlens.device) - starts


def shift_labels(
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Labels aligned with positions for `Transformer.loss`: labels[t] = input_ids[t+1] within a document,
    `ignore_index` at each document's last token (nothing is predicted across a boundary) and wherever the
    token to predict is a prompt token (`prompt_mask` True). Packed [T] with cu_seqlens, or [B, S] rows
    (each row one document; mark padding in `prompt_mask` too)."""
    if input_ids.dim() == 2:
        if prompt_mask is not None:
            input_ids = input_ids.masked_fill(prompt_mask.bool(), ignore_index)
        return F.pad(input_ids[:, 1:], (0, 1), value=ignore_index)
    tokens = input_ids.shape[0]
    nxt = F.pad(input_ids[1:], (0, 1), value=ignore_index)
    if prompt_mask is not None:
        nxt = nxt.masked_fill(F.pad(prompt_mask[1:].bool(), (0, 1), value=True), ignore_index)
    if cu_seqlens is not None:
        ends = cu_seqlens[1:].long() - 1
        ends = ends[(ends >= 0) & (ends < tokens)]
        nxt = nxt.index_fill(0, ends, ignore_index)
    return nxt
