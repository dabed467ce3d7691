"""Hugging Face folders in and out: config.json ⇄ `ModelConfig`, parameter names, safetensors shards.

`config_from_hf` refuses (ConfigError naming the file and key) anything in a config.json that would change
the computation and that this model does not implement; `config_to_hf` writes what transformers (4.x and
5.x) and vLLM read. The weight helpers here are used by `Transformer.save_pretrained` and `from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mathforge.errors import ConfigError, DataError
from mathforge.model.config import ARCHITECTURES, ModelConfig

if TYPE_CHECKING:
    from mathforge.model.transformer import Transformer

_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
# config.json keys that do not change the computation (bookkeeping, generation defaults, checked flags).
_METADATA = {
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "pretraining_tp",
    "_name_or_path",
    "tokenizer_class",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "torchscript",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "problem_type",
    "task_specific_params",
    "finetuning_task",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "pruned_heads",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "use_bfloat16",
    "tf_legacy_loss",
    "suppress_tokens",
    "begin_suppress_tokens",
    "max_window_layers",
    "layer_types",
    "use_sliding_window",
    "hidden_act",
    "mlp_bias",
    "attention_dropout",
    "rope_parameters",
    "partial_rotary_factor",
    "use_mrope",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

# ---------------------------------------------------------------------------------------------- config.json


def config_from_hf(raw: dict[str, Any], source: str = "config") -> ModelConfig:
    """A ModelConfig from a config.json dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters` style).

    Anything that would change the computation and that this model does not implement raises ConfigError
    naming `source` and the key: other architectures, activations, MLP biases, dropout, quantization,
    Qwen2 sliding-window layers, rope types other than default/linear/llama3, unknown keys."""
    raw = dict(raw)
    model_type = raw.get("model_type", "llama")
    problem = _unsupported(raw, model_type)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    if model_type == "qwen2":
        raw["sliding_window"] = None  # checked off above (use_sliding_window / layer_types)
        raw.setdefault("attention_bias", True)
    rope = raw.get("rope_parameters")
    if rope is not None:  # transformers 5: theta and scaling in one dict
        raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        raw["rope_scaling"] = rope
    try:
        return ModelConfig(**{k: v for k, v in raw.items() if k in _FIELDS})
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _unsupported(raw: dict[str, Any], model_type: str) -> str | None:
    """What in `raw` this model cannot compute, as a message naming the key; None when all is supported."""
    if model_type not in ARCHITECTURES:
        return f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
    for arch in raw.get("architectures") or []:
        if arch != ARCHITECTURES[model_type]:
            return f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES.values())}"
    unknown = sorted(k for k in raw if k not in _FIELDS and k not in _METADATA)
    if unknown:
        return f"unsupported config field(s) {', '.join(unknown)} (model_type {model_type!r})"
    checks = [
        (
            raw.get("hidden_act", "silu") != "silu",
            f"hidden_act {raw.get('hidden_act')!r} is not supported (only 'silu')",
        ),
        (raw.get("mlp_bias"), "mlp_bias=true is not supported"),
        (
            raw.get("attention_dropout", 0.0),
            f"attention_dropout={raw.get('attention_dropout')} is not supported (no dropout)",
        ),
        (
            raw.get("partial_rotary_factor", 1.0) != 1.0,
            f"partial_rotary_factor={raw.get('partial_rotary_factor')} is not supported (only 1.0)",
        ),
        (raw.get("use_mrope"), "use_mrope=true is not supported"),
        (model_type == "qwen2" and raw.get("use_sliding_window"), "use_sliding_window=true is not supported for qwen2"),
        (
            model_type == "qwen2" and any(t != "full_attention" for t in raw.get("layer_types") or []),
            "layer_types other than 'full_attention' are not supported for qwen2",
        ),
    ]
    return next((message for failed, message in checks if failed), None)


def config_to_hf(config: ModelConfig, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """config.json content transformers (4.x and 5.x) and vLLM read; `dtype` is recorded as torch_dtype."""
    out: dict[str, Any] = {"architectures": [ARCHITECTURES[config.model_type]], "model_type": config.model_type}
    out |= {k: v for k, v in dataclasses.asdict(config).items() if k not in ("model_type", "rope_scaling")}
    out |= {"hidden_act": "silu", "rope_scaling": config.rope_scaling, "attention_dropout": 0.0, "use_cache": True}
    out["rope_parameters"] = {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta}
    if config.model_type == "qwen2":  # Qwen2Config has no attention_bias / head_dim field: biases are implied
        del out["attention_bias"]
        out |= {"use_sliding_window": False, "max_window_layers": config.num_hidden_layers}
    if config.model_type == "llama":  # LlamaConfig.attention_bias: q, k, v and o biases, as ours
        out["mlp_bias"] = False
    if dtype is not None:
        out["torch_dtype"] = str(dtype).removeprefix("torch.")
    return out


def read_config(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """config.json of the folder `path`: the raw dict and the ModelConfig it describes."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: not found (a Hugging Face model folder needs config.json)")
    raw = read_json(config_file)
    if not isinstance(raw, dict):
        raise DataError(f"{config_file}: not a JSON object (got {type(raw).__name__}); is this a model folder?")
    return raw, config_from_hf(raw, source=str(config_file))


def read_json(file: Path) -> Any:
    """The decoded JSON of `file`; DataError naming the file and line when it cannot be read or parsed."""
    try:
        return json.loads(file.read_bytes())
    except json.JSONDecodeError as error:
        raise DataError(f"{file}: line {error.lineno}: invalid JSON ({error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{file}: cannot be read ({error})") from None


@contextmanager
def _safetensors(file: Path, device: str = "cpu") -> Iterator[Any]:
    """`safe_open(file)`; a corrupt or truncated file is a DataError naming it, not a SafetensorError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device=device) as handle:
            yield handle
    except (SafetensorError, OSError) as error:
        raise DataError(f"{file}: not a readable safetensors file ({error}); re-save or re-download it") from None


# ---------------------------------------------------------------------------------------------- weights


def hf_name(name: str) -> str:
    """The Hugging Face name of one of our state_dict keys (ours are the inner `model.` module's)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Full tensors under Hugging Face names (FSDP2 DTensors are gathered: call it on every rank)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        out[hf_name(name)] = tensor.detach()
    return out


def save_pretrained(
    model: Transformer,
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
    state = hf_state_dict(model) if state is None else state  # FSDP: gathered on every rank, written by one
    dtype = dtype or next(iter(state.values())).dtype
    state = {k: v.to(dtype=dtype, device="cpu").contiguous() for k, v in state.items()}
    shards = _shards(state, _parse_size(max_shard_size))
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
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
    generation = {k: getattr(model.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    generation = {k: v for k, v in generation.items() if v is not None}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return path


def _shards(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, a new shard whenever the next one would take the current shard past `limit` bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"max_shard_size {size!r} is not a size like 5GB, 500MB or a number of bytes")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(match.group(1)) * scale)


def checkpoint_files(path: Path) -> list[str]:
    """The safetensors files of the folder: the index's shards, or model.safetensors."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        index = read_json(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise DataError(f'{index_file}: no "weight_map" object (a safetensors index maps names to files)')
        files = sorted(set(map(str, weight_map.values())))
        absent = [name for name in files if not (path / name).is_file()]
        if absent:
            raise DataError(f"{index_file}: lists {', '.join(absent[:4])}, not found in {path}")
        return files
    if (path / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise DataError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors are read)")


def checkpoint_dtype(path: Path, raw: dict[str, Any], files: list[str]) -> torch.dtype:
    """config.json's torch_dtype (or 5.x dtype); without one, the dtype of the first stored tensor."""
    name = raw.get("torch_dtype") or raw.get("dtype")
    if name is not None:
        if name not in DTYPES:
            raise ConfigError(
                f"{path / 'config.json'}: torch_dtype {name!r} is not supported; supported: {', '.join(DTYPES)}"
            )
        return DTYPES[name]
    with _safetensors(path / files[0]) as f:
        names = list(f.keys())
        if not names:
            raise DataError(f"{path / files[0]}: holds no tensors")
        stored = f.get_slice(names[0]).get_dtype()
    if stored not in _SAFETENSORS_DTYPES:
        raise DataError(f"{path / files[0]}: tensors of dtype {stored} are not supported (BF16, F16, F32)")
    return _SAFETENSORS_DTYPES[stored]


@torch.no_grad()
def load_weights(model: Transformer, path: Path, files: list[str]) -> None:
    """Copies the folder's tensors into `model` (already on its device and dtype); every parameter must be
    there with the shape config.json implies, and nothing else (rotary tables and a tied head are skipped)."""
    expected = {hf_name(k): t for k, t in model.state_dict().items()}
    device = str(next(iter(expected.values())).device)
    seen: set[str] = set()
    unexpected = []
    for filename in files:
        with _safetensors(path / filename, device) as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq") or (
                    name == "lm_head.weight" and model.config.tie_word_embeddings
                ):
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
