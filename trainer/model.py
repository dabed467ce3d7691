"""The lean decoder behind mathforge's trainer: Llama 2/3, Qwen2/2.5 and Mistral in one readable file.

    embed_tokens → N × [x + attn(rms_norm(x)); x + mlp(rms_norm(x))] → norm → (lm_head, built only when asked)

Attention is grouped-query with rotary embeddings (Llama-3 and linear rope scaling included) and
q/k/v biases for Qwen2; the MLP is SwiGLU. The hot ops come from `mathforge.kernels` (Triton on CUDA,
torch references on CPU). A micro-batch is usually one packed token stream: `input_ids` [T],
`position_ids` [T] restarting at 0 per document, `cu_seqlens` [D+1] int32 and `max_seqlen`; documents
never attend to each other. `forward` returns hidden states after the final norm; `loss` runs the LM
head fused with the cross-entropy so the [T, vocab] logits never exist.

Checkpoints are plain Hugging Face folders (config.json + safetensors): `from_pretrained` reads them,
`Transformer.save_pretrained` writes ones transformers and vLLM load. `from_config` builds the
benchmark presets with random weights (on the meta device for the 7B/8B shapes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mathforge.errors import ConfigError, DataError
from mathforge.kernels import apply_rope, fused_linear_cross_entropy, rms_norm, swiglu, varlen_attention
from mathforge.kernels.attention import resolve_backend

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")

# ---------------------------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    """The model's shape, with Hugging Face's field names (config.json reads and writes through it)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", "factor": ..., ...}
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (always on for Qwen2)
    sliding_window: int | None = None  # Mistral v0.1: documents longer than this are refused
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        if self.model_type not in ARCHITECTURES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.model_type == "qwen2" and not self.attention_bias:
            raise ConfigError("attention_bias=False is not supported for model_type 'qwen2' (Qwen2 has q/k/v biases)")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)

    def to_hf_dict(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """config.json content transformers (4.x and 5.x) and vLLM read."""
        out: dict[str, Any] = {"architectures": [ARCHITECTURES[self.model_type]], "model_type": self.model_type}
        out |= {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model_type", "rope_scaling")}
        out |= {"hidden_act": "silu", "rope_scaling": self.rope_scaling, "attention_dropout": 0.0, "use_cache": True}
        out["rope_parameters"] = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        if self.model_type == "qwen2":  # Qwen2Config has no attention_bias / head_dim field: biases are implied
            del out["attention_bias"]
            out |= {"use_sliding_window": False, "max_window_layers": self.num_hidden_layers}
        if self.model_type == "llama":
            out["mlp_bias"] = False
        if dtype is not None:
            out["torch_dtype"] = str(dtype).removeprefix("torch.")
        return out


def _check_rope_scaling(scaling: dict[str, Any]) -> dict[str, Any] | None:
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling.rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return None
    required = ("factor",) if rope_type == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")  # fmt: skip
    missing = [k for k in required if k not in scaling]
    if missing:
        raise ConfigError(f"rope_scaling of type {rope_type!r} is missing {', '.join(missing)}")
    allowed = set(required) | {"attention_factor"}
    extra = sorted(set(scaling) - allowed)
    if extra:
        raise ConfigError(f"rope_scaling field(s) {', '.join(extra)} not supported for rope_type {rope_type!r}")
    if scaling.get("attention_factor", 1.0) != 1.0:
        raise ConfigError(f"rope_scaling.attention_factor={scaling['attention_factor']} is not supported (only 1.0)")
    scaling.pop("attention_factor", None)
    return {"rope_type": rope_type, **scaling}


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
# config.json keys that do not change the computation (bookkeeping, generation defaults, checked flags).
_METADATA = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache", "pretraining_tp", "_name_or_path",
    "tokenizer_class", "output_attentions", "output_hidden_states", "return_dict", "torchscript", "is_decoder",
    "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward", "id2label",
    "label2id", "problem_type", "task_specific_params", "finetuning_task", "prefix", "sep_token_id",
    "decoder_start_token_id", "pruned_heads", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "use_bfloat16", "tf_legacy_loss", "suppress_tokens",
    "begin_suppress_tokens", "max_window_layers", "layer_types", "use_sliding_window", "hidden_act", "mlp_bias",
    "attention_dropout", "rope_parameters", "partial_rotary_factor", "use_mrope",
}  # fmt: skip


def config_from_hf(raw: dict[str, Any], source: str = "config") -> ModelConfig:
    """A ModelConfig from a config.json dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters` style).

    Anything that would change the computation and that this model does not implement raises ConfigError
    naming `source` and the key: other architectures, activations, MLP biases, dropout, quantization,
    Qwen2 sliding-window layers, rope types other than default/linear/llama3, unknown keys."""
    raw = dict(raw)
    model_type = raw.get("model_type", "llama")

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    if model_type not in ARCHITECTURES:
        raise fail(f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    for arch in raw.get("architectures") or []:
        if arch != ARCHITECTURES[model_type]:
            raise fail(f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES.values())}")
    unknown = sorted(k for k in raw if k not in _FIELDS and k not in _METADATA)
    if unknown:
        raise fail(f"unsupported config field(s) {', '.join(unknown)} (model_type {model_type!r})")
    if raw.get("hidden_act", "silu") != "silu":
        raise fail(f"hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
    if raw.get("mlp_bias"):
        raise fail("mlp_bias=true is not supported")
    if raw.get("attention_dropout", 0.0):
        raise fail(f"attention_dropout={raw['attention_dropout']} is not supported (no dropout)")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise fail(f"partial_rotary_factor={raw['partial_rotary_factor']} is not supported (only 1.0)")
    if raw.get("use_mrope"):
        raise fail("use_mrope=true is not supported")
    if model_type == "qwen2":
        if raw.get("use_sliding_window"):
            raise fail("use_sliding_window=true is not supported for qwen2")
        if any(t != "full_attention" for t in raw.get("layer_types") or []):
            raise fail("layer_types other than 'full_attention' are not supported for qwen2")
        raw["sliding_window"] = None
        raw.setdefault("attention_bias", True)

    rope = raw.get("rope_parameters")
    if rope is not None:  # transformers 5: theta and scaling in one dict
        raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        raw["rope_scaling"] = rope
    kwargs = {k: v for k, v in raw.items() if k in _FIELDS}
    try:
        return ModelConfig(**kwargs)
    except ConfigError as error:
        raise fail(str(error)) from None


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
    "qwen2.5-0.5b": ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                max_position_embeddings=32768, rope_theta=1e6, attention_bias=True,
                                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-1.5b": ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                max_position_embeddings=131072, rope_theta=1e6, attention_bias=True,
                                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-7b": ModelConfig(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              max_position_embeddings=131072, rope_theta=1e6, attention_bias=True,
                              bos_token_id=151643, eos_token_id=151643),
    "llama3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                               max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                               tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    "llama3-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                             rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": ModelConfig(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                              max_position_embeddings=32768, rope_theta=10000.0, rms_norm_eps=1e-5,
                              sliding_window=4096, bos_token_id=1, eos_token_id=2),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------- modules


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)

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


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

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
            q.unsqueeze(2), keys.to(q.dtype), values.to(q.dtype), attn_mask=visible[:, None, None, :],
            enable_gqa=q.shape[1] != keys.shape[1],
        )  # fmt: skip
        return out.squeeze(2)

    def advance(self) -> None:
        """After a decode step went through every layer: each row is one token longer."""
        self.lengths = self.lengths + 1


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.activation_checkpointing = False
        self.attention_backend = "auto"  # a name from mathforge.kernels.attention.BACKENDS, or "auto"
        self._inv_freq = rope_inv_freq(config)  # a plain fp32 tensor, not a buffer: dtype casts must not touch it
        self._inv_freq_on: dict[torch.device, torch.Tensor] = {}

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
                module.weight.fill_(1.0)

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] in fp32 for the given positions."""
        device = position_ids.device
        if device not in self._inv_freq_on:
            self._inv_freq_on[device] = self._inv_freq.to(device)
        angles = position_ids.float()[:, None] * self._inv_freq_on[device][None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

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
            input_ids[mask], position_ids=position_ids[mask], cu_seqlens=cu_seqlens,
            max_seqlen=int(lengths.max()) if rows else 0,
        )  # fmt: skip
        out = hidden.new_zeros(rows, width, hidden.shape[-1])
        return out.masked_scatter(mask[..., None], hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden @ lm_head_weightᵀ, in the model's dtype (only for generation / inspection)."""
        return F.linear(hidden, self.lm_head_weight)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor, *, reduction: str = "sum", **ce_kwargs) -> torch.Tensor:
        """Cross-entropy of the LM head on `hidden` through `fused_linear_cross_entropy`; an fp32 scalar.

        Labels are ALREADY ALIGNED with positions: labels[t] is the token to predict from position t
        (i.e. the next token), -100 where nothing is predicted (see `shift_labels`). `reduction="sum"`
        lets the trainer divide by the global count of predicted tokens across micro-batches and ranks.
        Extra keywords (label_smoothing, z_loss, softcap, ignore_index) go to the kernel."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        return fused_linear_cross_entropy(flat, self.lm_head_weight, labels.reshape(-1), reduction=reduction, **ce_kwargs)

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
        out = {}
        for name, tensor in self.state_dict().items():
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            out[_hf_name(name)] = tensor.detach()
        return out

    def save_pretrained(
        self,
        path: str | Path,
        *,
        max_shard_size: int | str = "5GB",
        dtype: torch.dtype | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Writes config.json, generation_config.json and safetensors (sharded with an index when larger than
        `max_shard_size`, names as transformers uses) to `path`; transformers and vLLM load the folder."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.hf_state_dict() if state is None else state  # FSDP: gathered on every rank, written by one
        dtype = dtype or next(iter(state.values())).dtype
        state = {k: v.to(dtype=dtype, device="cpu").contiguous() for k, v in state.items()}
        limit = _parse_size(max_shard_size)
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > limit:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        for old in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
            old.unlink()  # a previous save with another shard count must not leave stale shards behind
        if len(shards) == 1:
            save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(path / filename), metadata={"format": "pt"})
                weight_map |= {name: filename for name in shard}
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (path / "config.json").write_text(json.dumps(self.config.to_hf_dict(dtype), indent=2) + "\n")
        generation = {k: getattr(self.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        generation = {k: v for k, v in generation.items() if v is not None}
        (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        return path


def _hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else f"model.{name}"


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"max_shard_size {size!r} is not a size like 5GB, 500MB or a number of bytes")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(match.group(1)) * scale)


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


# ---------------------------------------------------------------------------------------------- building


def _build(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """The model on the meta device (no memory, no init), then materialised on `device` unless that is meta."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to(dtype)
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
    return model


_BIG_MODEL = 2_000_000_000


def from_config(
    name_or_dict: str | dict[str, Any] | ModelConfig,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """A randomly initialised model from a preset name (see PRESETS), a ModelConfig, or a dict of config.json
    fields (optionally {"preset": name, **overrides}). `device=None` is the CPU, except for models over
    2B parameters, which stay on the meta device: `model.to_empty(device=...)` then `model.init_weights()`."""
    if isinstance(name_or_dict, ModelConfig):
        config = dataclasses.replace(name_or_dict)
    elif isinstance(name_or_dict, str):
        if name_or_dict not in PRESETS:
            raise ConfigError(f"unknown model preset {name_or_dict!r}; presets: {', '.join(PRESETS)}")
        config = dataclasses.replace(PRESETS[name_or_dict])
    elif isinstance(name_or_dict, dict):
        raw = dict(name_or_dict)
        preset = raw.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
            raw = {**dataclasses.asdict(PRESETS[preset]), **raw}
            reshaped = "hidden_size" in name_or_dict or "num_attention_heads" in name_or_dict
            if reshaped and "head_dim" not in name_or_dict:
                raw["head_dim"] = None  # re-derived from the new width
        config = config_from_hf(raw, source="model config")
    else:
        raise ConfigError(f"model config must be a preset name, a dict or a ModelConfig, got {type(name_or_dict)}")
    model = _build(config, dtype or torch.float32, "meta")
    if device is None:
        device = "meta" if model.num_parameters() > _BIG_MODEL else "cpu"
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
        model.init_weights()
    return model


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def from_pretrained(
    path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Transformer:
    """Loads a Hugging Face folder: config.json + model.safetensors or sharded model-*.safetensors with
    model.safetensors.index.json. `dtype=None` keeps the checkpoint's dtype; `device=None` is the CPU."""
    from safetensors import safe_open

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: not found (a Hugging Face model folder needs config.json)")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{config_file}: line {error.lineno}: invalid JSON ({error.msg})") from None
    config = config_from_hf(raw, source=str(config_file))

    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise DataError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors are read)")

    device = torch.device(device or "cpu")
    if dtype is None:
        name = raw.get("torch_dtype") or raw.get("dtype")
        if name is not None and name not in _DTYPES:
            raise ConfigError(f"{config_file}: torch_dtype {name!r} is not supported; supported: {', '.join(_DTYPES)}")
        dtype = _DTYPES.get(name) if name else None
    if dtype is None:  # no dtype in config.json: the first tensor's
        with safe_open(str(path / files[0]), framework="pt") as f:
            stored = f.get_slice(next(iter(f.keys()))).get_dtype()
        if stored not in _SAFETENSORS_DTYPES:
            raise DataError(f"{path / files[0]}: tensors of dtype {stored} are not supported (BF16, F16, F32)")
        dtype = _SAFETENSORS_DTYPES[stored]

    model = _build(config, dtype, device)
    expected = {_hf_name(k): t for k, t in model.state_dict().items()}
    seen: set[str] = set()
    unexpected = []
    with torch.no_grad():
        for filename in files:
            with safe_open(str(path / filename), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_word_embeddings):
                        continue  # recomputed / tied: not parameters here
                    if name not in expected:
                        unexpected.append(f"{filename}:{name}")
                        continue
                    tensor = f.get_tensor(name)
                    if tensor.shape != expected[name].shape:
                        raise DataError(
                            f"{path / filename}: {name} has shape {tuple(tensor.shape)}, "
                            f"config.json implies {tuple(expected[name].shape)}"
                        )
                    expected[name].copy_(tensor)
                    seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing or unexpected:
        raise DataError(
            f"{path}: checkpoint does not match config.json: missing {missing[:8] or 'none'}"
            f"{' …' if len(missing) > 8 else ''}; unexpected {unexpected[:8] or 'none'}"
        )
    return model
