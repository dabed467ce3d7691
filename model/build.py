"""Building a `Transformer`: random weights from a preset or config (`from_config`), or a Hugging Face folder
(`from_pretrained`). Both build on the meta device first, so nothing is allocated or initialised twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mathforge.errors import ConfigError
from mathforge.model import hf
from mathforge.model.config import PRESETS, ModelConfig
from mathforge.model.transformer import Transformer

_BIG_MODEL = 2_000_000_000


def build(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """The model on the meta device (no memory, no init), then materialised (uninitialised) on `device`
    unless that is meta."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to(dtype)
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
    return model


def _preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"model {name!r}: no such folder, and not a preset name (presets: {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name])


def resolve_config(name_or_dict: str | dict[str, Any] | ModelConfig) -> ModelConfig:
    """A (fresh) ModelConfig from a preset name, a ModelConfig, or a dict of config.json fields, optionally
    {"preset": name, **overrides}; a preset reshaped without head_dim re-derives it from the new width."""
    if isinstance(name_or_dict, ModelConfig):
        return dataclasses.replace(name_or_dict)
    if isinstance(name_or_dict, str):
        return _preset(name_or_dict)
    if not isinstance(name_or_dict, dict):
        raise ConfigError(f"model config must be a preset name, a dict or a ModelConfig, got {type(name_or_dict)}")
    raw = dict(name_or_dict)
    preset = raw.pop("preset", None)
    if preset is not None:
        raw = {**dataclasses.asdict(_preset(preset)), **raw}
        reshaped = "hidden_size" in name_or_dict or "num_attention_heads" in name_or_dict
        if reshaped and "head_dim" not in name_or_dict:
            raw["head_dim"] = None  # re-derived from the new width
    return hf.config_from_hf(raw, source="model config")


def from_config(
    name_or_dict: str | dict[str, Any] | ModelConfig,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """A randomly initialised model from a preset name (see PRESETS), a ModelConfig, or a dict of config.json
    fields (optionally {"preset": name, **overrides}). `device=None` is the CPU, except for models over
    2B parameters, which stay on the meta device: `model.to_empty(device=...)` then `model.init_weights()`."""
    model = build(resolve_config(name_or_dict), dtype or torch.float32, "meta")
    if device is None:
        device = "meta" if model.num_parameters() > _BIG_MODEL else "cpu"
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
        model.init_weights()
    return model


def from_pretrained(
    path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Transformer:
    """Loads a Hugging Face folder: config.json + model.safetensors or sharded model-*.safetensors with
    model.safetensors.index.json. `dtype=None` keeps the checkpoint's dtype; `device=None` is the CPU."""
    path = Path(path)
    raw, config = hf.read_config(path)
    files = hf.checkpoint_files(path)
    model = build(config, dtype or hf.checkpoint_dtype(path, raw, files), torch.device(device or "cpu"))
    hf.load_weights(model, path, files)
    return model
