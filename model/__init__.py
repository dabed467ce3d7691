"""mathforge.model: the lean decoder (Llama, Qwen2, Mistral), Hugging Face checkpoints and KV-cache generation.

    from mathforge.model import from_pretrained, from_config, generate

`config` holds ModelConfig and the presets, `transformer` the layers, the Transformer and the KV cache,
`hf` config.json and safetensors in and out, `build` from_config / from_pretrained, `generate` generation.
Imports only `mathforge.kernels` and the core (`mathforge.errors`): trainer, evaluate and synth build on it.
"""

from mathforge.model.build import from_config, from_pretrained
from mathforge.model.config import ARCHITECTURES, PRESETS, ModelConfig
from mathforge.model.generate import generate, generate_finished, generate_tokens, sample_next
from mathforge.model.hf import config_from_hf, config_to_hf
from mathforge.model.transformer import KVCache, Transformer, positions_from_cu_seqlens, rope_inv_freq, shift_labels

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "config_from_hf",
    "config_to_hf",
    "from_config",
    "from_pretrained",
    "generate",
    "generate_finished",
    "generate_tokens",
    "sample_next",
    "positions_from_cu_seqlens",
    "rope_inv_freq",
    "shift_labels",
]
