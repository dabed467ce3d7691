"""The model's shape: `ModelConfig` (Hugging Face's config.json field names) and the named presets.

Validation lives here so every way of building a model (preset, dict of overrides, config.json) refuses
the same shapes with the same `ConfigError`. Reading and writing config.json is `mathforge.model.hf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mathforge.errors import ConfigError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")


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
    attention_bias: bool = False  # Llama: q/k/v/o biases; Qwen2: q/k/v biases (always on); Mistral: none
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
            raise ConfigError(f"model_type {self.model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
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
        if self.model_type == "mistral" and self.attention_bias:
            raise ConfigError("attention_bias=True is not supported for model_type 'mistral' (Mistral has no biases)")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)

    @property
    def o_proj_bias(self) -> bool:
        """Whether attention's output projection has a bias: Llama's `attention_bias` covers q, k, v and o;
        Qwen2's covers q, k, v only (as in transformers)."""
        return self.attention_bias and self.model_type == "llama"

    def to_hf_dict(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """config.json content transformers (4.x and 5.x) and vLLM read (`mathforge.model.hf.config_to_hf`)."""
        from mathforge.model.hf import config_to_hf  # hf.py builds on this module

        return config_to_hf(self, dtype)


def _check_rope_scaling(scaling: dict[str, Any]) -> dict[str, Any] | None:
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling.rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return None
    required = (
        ("factor",)
        if rope_type == "linear"
        else ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    )
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


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "qwen2.5-0.5b": ModelConfig(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        attention_bias=True,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "qwen2.5-1.5b": ModelConfig(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_theta=1e6,
        attention_bias=True,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "qwen2.5-7b": ModelConfig(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        rope_theta=1e6,
        attention_bias=True,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "llama3.2-1b": ModelConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama3-8b": ModelConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "mistral-7b": ModelConfig(
        model_type="mistral",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
