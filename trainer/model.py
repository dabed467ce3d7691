"""Moved to `mathforge.model` (config, transformer, hf, build); these names stay importable from here."""

from mathforge.kernels.modules import RMSNorm
from mathforge.model.build import from_config, from_pretrained
from mathforge.model.config import ARCHITECTURES, PRESETS, ROPE_TYPES, ModelConfig
from mathforge.model.hf import config_from_hf, config_to_hf
from mathforge.model.transformer import (
    Attention,
    Block,
    KVCache,
    Transformer,
    positions_from_cu_seqlens,
    rope_inv_freq,
    shift_labels,
)

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "ROPE_TYPES",
    "Attention",
    "Block",
    "KVCache",
    "ModelConfig",
    "RMSNorm",
    "Transformer",
    "config_from_hf",
    "config_to_hf",
    "from_config",
    "from_pretrained",
    "positions_from_cu_seqlens",
    "rope_inv_freq",
    "shift_labels",
]
