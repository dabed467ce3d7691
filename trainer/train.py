"""The training loop, top to bottom: stages → packed micro-batches → token-normalised accumulation →
clip → AdamW → log / checkpoint. One process on CPU or one GPU; many GPUs via torchrun + FSDP2.

The loss of an optimizer step is the sum of per-token losses over every micro-batch on every rank,
divided by the number of target tokens in all of them, so its gradient equals that of one big batch
whatever the accumulation and world size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mathforge.errors import ConfigError, MathforgeError
from mathforge.trainer.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_trainer_state,
    restore,
    save_checkpoint,
    save_model_folder,
)
from mathforge.trainer.config import Config
from mathforge.trainer.data import TokenizedData, build_micro_batch, packing_efficiency, plan_micro_batches, tokenize
from mathforge.trainer.metrics import MetricsLog, mfu, peak_tflops
from mathforge.trainer.optim import build_optimizer, lr_at


class TrainingError(MathforgeError):
    """Training cannot go on (e.g. a non-finite loss); a checkpoint of the last good step was written."""


class LossModule(nn.Module):
    """Model + loss in one forward, so FSDP2 keeps the (possibly tied) head unsharded while the loss uses it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, labels) -> torch.Tensor:
        hidden = self.model(input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        return self.model.loss(hidden, labels, reduction="sum")


# ---------------------------------------------------------------- set-up


def _distributed() -> tuple[int, int, torch.device | None]:
    """(rank, world size, device) from torchrun's environment; initialises the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = None
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return dist.get_rank(), world, device


def _device(config: Config, distributed_device: torch.device | None) -> torch.device:
    if distributed_device is not None:
        return distributed_device
    if config.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.train.device)


def _precision(config: Config, device: torch.device) -> str:
    if config.train.precision == "auto":
        return "bf16-autocast" if device.type == "cuda" else "fp32"
    return config.train.precision


def load_tokenizer(config: Config) -> Any:
    from transformers import AutoTokenizer

    source = config.data.tokenizer or config.model.init
    if not Path(source).is_dir():
        raise ConfigError(
            f"{config.source}: [data] tokenizer must name a tokenizer folder "
            f"(or [model] init a checkpoint folder that has one), got {source!r}"
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{source}: the tokenizer has no eos token; documents need one to end")
    return tokenizer


def build_model(config: Config, tokenizer: Any, checkpoint: Path | None, dtype: torch.dtype) -> nn.Module:
    """The model from a checkpoint being resumed, a Hugging Face folder, or a preset (seeded random init)."""
    from mathforge.trainer.model import from_config, from_pretrained

    init = config.model.init
    if checkpoint is not None:
        model = from_pretrained(checkpoint / "model", dtype=dtype)
    elif Path(init).is_dir():
        model = from_pretrained(init, dtype=dtype)
    else:
        torch.manual_seed(config.run.seed)
        overrides = dict(config.model.overrides)
        overrides.setdefault("vocab_size", len(tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            overrides.setdefault(name, getattr(tokenizer, name))
        model = from_config({"preset": init, **overrides}, dtype=torch.float32, device="cpu").to(dtype)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"{config.source}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}"
        )
    model.activation_checkpointing = config.model.activation_checkpointing
    model.attention_backend = config.model.attention_backend
    return model


def _shard(module: LossModule, precision: str) -> None:
    """FSDP2: each block its own unit, the rest (embeddings, norm, head) at the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision == "bf16-autocast":  # fp32 sharded master weights, bf16 compute, fp32 gradient reduction
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:  # fp32 throughout, or bf16 weights throughout (gradients reduced in fp32)
        policy = MixedPrecisionPolicy(reduce_dtype=torch.float32 if precision == "bf16" else None)
    for block in module.model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)


# ---------------------------------------------------------------- the stage plan


class StagePlan:
    """Which packed micro-batches each optimizer step uses: every epoch a seeded permutation of the bins,
    cut into steps of world × grad_accum micro-batches; rank r takes its grad_accum-sized slice."""

    def __init__(self, data: TokenizedData, micro_batch_tokens: int, world: int, accum: int, epochs: float,
                 steps: int, seed: int) -> None:  # fmt: skip
        self.data = data
        self.bins = plan_micro_batches(data, micro_batch_tokens)
        self.per_step = world * accum
        self.world, self.accum, self.seed = world, accum, seed
        self.steps_per_epoch = math.ceil(len(self.bins) / self.per_step)
        self.total_steps = steps if steps > 0 else max(1, round(epochs * self.steps_per_epoch))
        lengths = data.lengths
        targets = np.maximum(0, lengths - np.maximum(data.prompt_lengths, 1))
        self.bin_tokens = np.array([lengths[b].sum() for b in self.bins])
        self.bin_targets = np.array([targets[b].sum() for b in self.bins])
        self.efficiency = packing_efficiency(data, self.bins, micro_batch_tokens)
        self._orders: dict[int, np.ndarray] = {}

    def step_bins(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.bins))}
        return self._orders[epoch][k * self.per_step : (k + 1) * self.per_step]

    def rank_bins(self, step: int, rank: int) -> tuple[np.ndarray, int]:
        """This rank's bins for the step, and how many micro-batches every rank runs (the longest share)."""
        chosen = self.step_bins(step)
        shares = [chosen[r * self.accum : (r + 1) * self.accum] for r in range(self.world)]
        return shares[rank], max(len(s) for s in shares)


# ---------------------------------------------------------------- the loop


def train(config: Config, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs every stage of `config`; returns (and writes to <out_dir>/summary.json) what happened."""
    rank, world, distributed_device = _distributed()
    device = _device(config, distributed_device)
    precision = _precision(config, device)
    run_dir = Path(config.run.out_dir)
    is_main = rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None and is_main:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from the beginning")
    state = load_trainer_state(checkpoint) if checkpoint else TrainerState()
    if state.finished:
        return json.loads((run_dir / "summary.json").read_text())

    tokenizer = load_tokenizer(config)
    model = build_model(config, tokenizer, checkpoint, torch.bfloat16 if precision == "bf16" else torch.float32)
    module = LossModule(model)
    if config.model.compile:
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(block)
    module.to(device)
    if world > 1:
        _shard(module, precision)
    optimizer = build_optimizer(module, config.optim)
    if checkpoint is not None:
        restore(checkpoint, module, optimizer)
    else:
        torch.manual_seed(config.run.seed + rank)

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-autocast" and world == 1
        else contextlib.nullcontext()
    )
    peak = peak_tflops(override=config.train.peak_tflops) if device.type == "cuda" else None
    log = MetricsLog(run_dir, config.run.tensorboard) if is_main else None
    summary: dict[str, Any] = {"stages": [], "precision": precision, "device": str(device), "world_size": world}
    started = time.perf_counter() - state.elapsed_s
    stop_reason = None

    for stage_index, stage in enumerate(config.stages):
        if stage_index < state.stage:
            continue
        data_cfg, optim_cfg = config.stage_data(stage), config.stage_optim(stage)
        cache_dir = Path(data_cfg.cache_dir or run_dir / "cache")
        if is_main or world == 1:
            data = tokenize(stage.data, tokenizer, template=data_cfg.template, max_seq_len=data_cfg.max_seq_len,
                            overflow=data_cfg.overflow, num_proc=data_cfg.num_proc, cache_dir=cache_dir,
                            skip_bad_rows=data_cfg.skip_bad_rows)  # fmt: skip
        if world > 1:
            dist.barrier()  # rank 0 tokenized and cached; the others read the cache
            if not is_main:
                data = tokenize(stage.data, tokenizer, template=data_cfg.template, max_seq_len=data_cfg.max_seq_len,
                                overflow=data_cfg.overflow, num_proc=1, cache_dir=cache_dir,
                                skip_bad_rows=data_cfg.skip_bad_rows)  # fmt: skip
        plan = StagePlan(data, config.train.micro_batch_tokens, world, config.train.grad_accum, stage.epochs,
                         stage.steps, config.run.seed * 1000 + stage_index)  # fmt: skip
        if state.stage_step == 0 and stage_index > 0 and stage.reset_optimizer:
            optimizer = build_optimizer(module, config.optim)
        if is_main:
            print(f"stage {stage.name}: {data.counts['documents']:,} documents ({data.counts}), {len(plan.bins):,} "
                  f"micro-batches of ≤{config.train.micro_batch_tokens} tokens, packing efficiency "
                  f"{plan.efficiency:.2%}, {plan.total_steps} steps")  # fmt: skip

        stage_tokens, stage_seconds, last_loss = 0, 0.0, float("nan")
        bar = _progress(stage.name, plan.total_steps, state.stage_step, enabled=progress and is_main)
        for step in range(state.stage_step, plan.total_steps):
            tick = time.perf_counter()
            mine, n_micro = plan.rank_bins(step, rank)
            chosen = plan.step_bins(step)
            global_targets = int(plan.bin_targets[chosen].sum())
            scale = world / max(global_targets, 1)
            loss_sum = torch.zeros((), device=device)
            for i in range(n_micro):
                # a rank short of micro-batches in the last step runs a fully masked one for the collectives
                batch = (
                    build_micro_batch(data, plan.bins[mine[i]])
                    if i < len(mine)
                    else build_micro_batch(data, plan.bins[0], mask_all=True)
                )
                batch = batch.to(device)
                with autocast:
                    loss = module(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels)
                (loss * scale).backward()
                loss_sum += loss.detach()
            if world > 1:
                dist.all_reduce(loss_sum)
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), config.optim.grad_clip or float("inf"))
            lr = lr_at(step, plan.total_steps, optim_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = (loss_sum / max(global_targets, 1)).item()
            grad_norm_value = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm_value)):
                optimizer.zero_grad(set_to_none=True)
                saved = save_checkpoint(run_dir, module, optimizer, state, tokenizer, config.run.keep_last)
                raise TrainingError(
                    f"stage {stage.name}, step {step}: loss {step_loss}, grad norm {grad_norm_value} — not finite; "
                    f"the last good step is saved in {saved}. Lower [optim] lr or check the data."
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tick
            tokens = int(plan.bin_tokens[chosen].sum())
            state.stage_step, state.global_step = step + 1, state.global_step + 1
            state.tokens_seen += tokens
            state.elapsed_s = time.perf_counter() - started
            stage_tokens += tokens
            stage_seconds += seconds
            last_loss = step_loss

            if is_main and (state.global_step % config.run.log_every == 0 or step + 1 == plan.total_steps):
                doc_lengths = np.concatenate([plan.data.lengths[plan.bins[b]] for b in chosen])
                flops = model.flops_per_token(doc_lengths) * tokens
                log.log({
                    "stage": stage.name, "step": step + 1, "global_step": state.global_step, "loss": step_loss,
                    "lr": lr, "grad_norm": grad_norm_value, "tokens": tokens, "target_tokens": global_targets,
                    "tokens_per_s": tokens / seconds, "mfu": mfu(flops, seconds, peak, world),
                    "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                    "packing_efficiency": plan.efficiency, "elapsed_s": state.elapsed_s,
                })  # fmt: skip
            if bar is not None:
                bar.update(loss=step_loss, tokens_per_s=tokens / seconds)
            every = config.run.checkpoint_every
            if every and state.global_step % every == 0 and step + 1 < plan.total_steps:
                save_checkpoint(run_dir, module, optimizer, state, tokenizer, config.run.keep_last)
            if config.train.max_steps and state.global_step >= config.train.max_steps:
                stop_reason = f"max_steps={config.train.max_steps}"
            elif config.train.time_limit_s and state.elapsed_s >= config.train.time_limit_s:
                stop_reason = f"time_limit_s={config.train.time_limit_s}"
            if stop_reason:
                break
        if bar is not None:
            bar.close()

        summary["stages"].append({
            "name": stage.name, "steps": state.stage_step, "planned_steps": plan.total_steps, "final_loss": last_loss,
            "tokens": stage_tokens, "tokens_per_s": stage_tokens / stage_seconds if stage_seconds else None,
            "packing_efficiency": plan.efficiency, "micro_batches": len(plan.bins), "data": data.counts,
        })  # fmt: skip
        if stop_reason:
            break
        state.stage, state.stage_step = stage_index + 1, 0
        save_checkpoint(run_dir, module, optimizer, state, tokenizer, config.run.keep_last)

    state.finished = stop_reason is None
    state.elapsed_s = time.perf_counter() - started
    summary |= {"state": asdict(state), "stopped": stop_reason, "elapsed_s": state.elapsed_s}
    if stop_reason:
        save_checkpoint(run_dir, module, optimizer, state, tokenizer, config.run.keep_last)
    else:
        weights = model.hf_state_dict()
        if is_main:
            save_model_folder(model, run_dir / "final", tokenizer, weights)
            summary["final_model"] = str(run_dir / "final")
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        log.close()
    if world > 1:
        dist.barrier()
    return summary


class _Bar:
    """A rich progress bar with ETA for one stage."""

    def __init__(self, name: str, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]:.4f} · {task.fields[tps]:,.0f} tok/s"),
        )  # fmt: skip
        self.task = self.progress.add_task(name, total=total, completed=done, loss=float("nan"), tps=0.0)
        self.progress.start()

    def update(self, loss: float, tokens_per_s: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, tps=tokens_per_s)

    def close(self) -> None:
        self.progress.stop()


def _progress(name: str, total: int, done: int, enabled: bool) -> _Bar | None:
    return _Bar(name, total, done) if enabled else None
