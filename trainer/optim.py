"""AdamW with weight-decay groups, and learning-rate schedules as plain functions of the step (`SCHEDULES`).

For bf16 weights (precision "bf16") `AdamWBf16` keeps the moments in fp32, computes the update in fp32
and writes it back to the bf16 weight with stochastic rounding, so updates far smaller than bf16's
resolution still move the weights on average instead of vanishing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from mathforge.registry import Registry

if TYPE_CHECKING:  # config.py validates schedule names against SCHEDULES, so it imports this module
    from mathforge.trainer.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; biases, norms and other 1-D parameters don't (the usual GPT/Llama recipe)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), or `AdamWBf16` when the weights are bf16. The lr set here is a placeholder
    scaled each step by `lr_at`."""
    first = next(model.parameters())
    if first.dtype == torch.bfloat16:
        return AdamWBf16(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps)
    on_cuda = first.is_cuda
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=on_cuda or None,
    )


# ---------------------------------------------------------------- learning-rate schedules
# A schedule maps a step after the warm-up to a learning rate. `lr_at` does the warm-up, then looks the
# schedule up here; configs validate `schedule` names against this table. Adding one = one function.

Schedule = Callable[[int, int, int, "OptimConfig"], float]  # (step, warmup, total_steps, config) -> lr
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule")


@SCHEDULES.register("cosine")
def cosine(step: int, warmup: int, total_steps: int, config: OptimConfig) -> float:
    """Cosine from lr down to min_lr_ratio·lr over the steps after the warm-up."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("wsd")
def wsd(step: int, warmup: int, total_steps: int, config: OptimConfig) -> float:
    """Warm-up, stable at lr, then linear decay to min_lr_ratio·lr over the final decay_ratio·total steps."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    decay_steps = max(1, math.ceil(config.decay_ratio * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return peak
    return peak + (floor - peak) * min(1.0, (step - decay_start + 1) / decay_steps)


@SCHEDULES.register("constant")
def constant(step: int, warmup: int, total_steps: int, config: OptimConfig) -> float:
    """lr after the warm-up."""
    return config.lr


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`: a linear warm-up over
    warmup_ratio·total steps, then `config.schedule` from `SCHEDULES` (ConfigError for an unknown name)."""
    schedule = SCHEDULES.get(config.schedule, "[optim] schedule")
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return schedule(step, warmup, total_steps, config)


def round_to_bf16_stochastically(x: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16, rounding up with probability equal to the dropped fraction (unbiased in expectation).
    bf16 is fp32's upper 16 bits: add uniform random low bits, then truncate them. Uses torch's RNG."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # -65536 = 0xFFFF0000


class AdamWBf16(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, as `torch.optim.AdamW`) for bf16 parameters
    with fp32 optimizer states and stochastically rounded updates. fp32 parameters get plain updates."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, which casts floating states to the parameter's dtype (bf16 here); the fp32 moments
        are put back so a resumed run continues with exactly the same states."""
        saved = [[state_dict["state"].get(i, {}) for i in group["params"]] for group in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for states, group in zip(saved, self.param_groups):
            for state, param in zip(states, group["params"]):
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        self.state[param][key] = state[key].to(device=param.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = float(state["step"])
                grad = p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                weight = p.float()
                weight.mul_(1 - group["lr"] * group["weight_decay"])
                weight.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
                p.copy_(round_to_bf16_stochastically(weight) if p.dtype == torch.bfloat16 else weight)
        return loss
