"""The transformers side of `mathforge.bench.train`, and the precision modes both sides run in.

- Precision modes (`PRECISIONS`): "bf16-autocast" = fp32 weights under bf16 autocast, "bf16" = bf16 weights,
  "fp32" (the CPU default).
- Batches as a transformers user feeds them: padding-free (TRL's `padding_free=True` collator: one [1, T] row,
  position_ids restarting per document, labels -100 on prompts and on each document's first token, no
  attention_mask) or padded [B, S] rows.
- Models: a randomly initialised transformers model of a preset's shape (`use_cache=False`: with a cache,
  transformers does not look for packed documents and attends across them); Liger-Kernel applied by
  model type (`LIGER_PATCHES`) and undone afterwards; `packed_vs_documents`, the check that a padding-free
  forward keeps documents apart.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mathforge.model import from_config
from mathforge.registry import Registry
from mathforge.trainer.data import IGNORE_INDEX, MicroBatch, TokenizedData


@dataclass(frozen=True)
class Precision:
    """How a precision mode runs: the weights' dtype and whether the forward runs under bf16 autocast."""

    weights: torch.dtype
    autocast: bool


PRECISIONS: Registry[Precision] = Registry("precision mode")
PRECISIONS.add("bf16-autocast", Precision(torch.float32, autocast=True))
PRECISIONS.add("bf16", Precision(torch.bfloat16, autocast=False))
PRECISIONS.add("fp32", Precision(torch.float32, autocast=False))


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast for "bf16-autocast", nothing otherwise."""
    if PRECISIONS.get(precision, "--precision").autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Liger-Kernel's patch function per transformers model_type (all take rope, rms_norm, swiglu,
# fused_linear_cross_entropy and model=).
LIGER_PATCHES: Registry[str] = Registry("Liger-Kernel model type")
LIGER_PATCHES.add("qwen2", "apply_liger_kernel_to_qwen2")
LIGER_PATCHES.add("llama", "apply_liger_kernel_to_llama")
LIGER_PATCHES.add("mistral", "apply_liger_kernel_to_mistral")


def padding_free_batch(batch: MicroBatch) -> dict[str, torch.Tensor]:
    """A packed micro-batch as TRL's padding-free collator gives it to a transformers model: input_ids and
    position_ids [1, T], labels [1, T] unshifted (the model shifts them): -100 on prompts and on each document's
    first token, so no position predicts across a document boundary. No attention_mask."""
    labels = torch.cat([batch.labels.new_full((1,), IGNORE_INDEX), batch.labels[:-1]])
    return {"input_ids": batch.input_ids[None], "position_ids": batch.position_ids[None], "labels": labels[None]}


def padded_batch(data: TokenizedData, docs: np.ndarray) -> dict[str, torch.Tensor]:
    """The documents as [B, S] rows right-padded to the longest, with attention_mask and unshifted labels
    (-100 on prompts and padding)."""
    width = int(data.lengths[docs].max())
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros(len(docs), width, dtype=torch.long)
    labels = torch.full((len(docs), width), IGNORE_INDEX, dtype=torch.long)
    for row, d in enumerate(docs.tolist()):
        doc = torch.from_numpy(data.tokens[data.offsets[d] : data.offsets[d + 1]].astype(np.int64))
        ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
        labels[row, data.prompt_lengths[d] : len(doc)] = doc[data.prompt_lengths[d] :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def hf_config(preset: str):
    """The transformers config of `preset` (our config's config.json fields), use_cache off (training)."""
    from transformers import AutoConfig

    fields = from_config(preset, device="meta").config.to_hf_dict(torch.float32)
    return AutoConfig.for_model(**{**fields, "use_cache": False})


def liger_patch(model_type: str) -> Callable[..., None]:
    """Liger-Kernel's `apply_liger_kernel_to_<type>` for a transformers model_type; ConfigError for a type
    without one (naming the known ones), ImportError when liger-kernel is not installed."""
    name = LIGER_PATCHES.get(model_type, "Liger-Kernel patch")
    return getattr(importlib.import_module("liger_kernel.transformers"), name)


def liger_unavailable(device: torch.device) -> str | None:
    """Why Liger-Kernel cannot run here (None when it can): its kernels need CUDA and the package."""
    if device.type != "cuda":
        return "CPU"
    try:
        importlib.import_module("liger_kernel.transformers")
    except ImportError:
        return "not importable"
    return None


@contextlib.contextmanager
def liger_applied(model, device: torch.device) -> Iterator[str | None]:
    """Applies Liger (rope, RMSNorm, SwiGLU, fused linear CE) to `model` when it can run here and yields None,
    else yields why not. Liger also swaps module-level functions and classes of transformers' modeling file
    (rope, norm and MLP classes): they are put back afterwards, so later rows run plain transformers."""
    model_type = model.config.model_type
    patch = liger_patch(model_type)  # an unknown model type is an error even where Liger cannot run
    why_not = liger_unavailable(device)
    if why_not is not None:
        yield why_not
        return
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    saved = dict(vars(modeling))
    try:
        patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True, model=model)
        yield None
    finally:
        vars(modeling).update(saved)


def build_hf(preset: str, precision: str, attn: str, device: torch.device):
    """A randomly initialised transformers model of `preset`'s shape, built on `device` in the weights' dtype."""
    from transformers import AutoModelForCausalLM

    dtype = PRECISIONS.get(precision).weights
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(preset), attn_implementation=attn, dtype=dtype)
    return model.train()


@torch.no_grad()
def packed_vs_documents(model, batch: dict[str, torch.Tensor], precision: str, max_docs: int = 4) -> float:
    """max |Δ| / max |h| between the final hidden states of the first `max_docs` documents of a padding-free
    batch run packed (the model's attention) and each run alone through SDPA's plain causal path: rounding-small
    when transformers keeps documents apart and its attention is right, O(1) (or NaN) if not."""
    ids, pos = batch["input_ids"][0], batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    end = starts[min(max_docs, len(starts) - 1)]
    base = getattr(model, model.base_model_prefix)
    attn = model.config._attn_implementation
    with autocast_for(precision, ids.device):
        packed = base(input_ids=ids[None, :end], position_ids=pos[None, :end], use_cache=False).last_hidden_state[0]
        model.set_attn_implementation("sdpa")
        try:
            alone = [
                base(input_ids=ids[None, a:b], use_cache=False).last_hidden_state[0]
                for a, b in zip(starts, starts[1:])
                if a < end
            ]
        finally:
            model.set_attn_implementation(attn)
    alone_all = torch.cat(alone).float()
    return float((packed.float() - alone_all).abs().max() / alone_all.abs().max())
