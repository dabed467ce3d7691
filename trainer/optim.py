"""AdamW with weight-decay groups, and learning-rate schedules as plain functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from mathforge.trainer.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; biases, norms and other 1-D parameters don't (the usual GPT/Llama recipe)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW, fused on CUDA. The lr set here is a placeholder scaled each step by `lr_at`."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=on_cuda or None,
    )


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    - cosine: linear warm-up over warmup_ratio·total, then cosine from lr to min_lr_ratio·lr;
    - wsd: warm-up, stable at lr, then linear decay to min_lr_ratio·lr over the final decay_ratio·total;
    - constant: warm-up, then lr.
    """
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, math.ceil(config.decay_ratio * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return peak + (floor - peak) * progress
