"""The training loop, top to bottom: stages → packed micro-batches → token-normalised accumulation →
clip → AdamW → log / checkpoint. One process on CPU or one GPU; many GPUs via torchrun + FSDP2.

The loss of an optimizer step is the sum of per-token losses over every micro-batch on every rank,
divided by the number of target tokens in all of them, so its gradient equals that of one big batch
whatever the accumulation and world size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mathforge.datasources import data_provenance
from mathforge.errors import ConfigError, MathforgeError
from mathforge.trainer.checkpoint import (
    TrainerState,
    describe_output,
    latest_checkpoint,
    load_trainer_state,
    remove_outputs,
    restore,
    run_outputs,
    save_checkpoint,
    save_model_folder,
    saved_config,
)
from mathforge.trainer.config import Config, LossConfig, StageConfig, config_warnings, result_differences
from mathforge.trainer.data import (
    MicroBatch,
    Prefetcher,
    TokenizedData,
    build_micro_batch,
    plan_micro_batches,
    target_counts,
    tokenize,
    with_loss_on,
)
from mathforge.trainer.metrics import MetricsLog, Throughput, mfu, peak_tflops, trim_metrics
from mathforge.trainer.optim import build_optimizer, lr_at
from mathforge.trainer.packing import fill_ratio


class TrainingError(MathforgeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where the last good weights are."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after a step, with a checkpoint; `str()` says the step and how to continue."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.summary = message, summary

    def __str__(self) -> str:
        return self.message


def loss_kwargs(loss: LossConfig) -> dict[str, Any]:
    """The `[loss]` options as the keywords of the model's loss (`mathforge.kernels.fused_linear_cross_entropy`):
    z_loss, label_smoothing, softcap, ignore_index. The one place the recipe reaches the loss."""
    return dataclasses.asdict(loss)


class LossModule(nn.Module):
    """Model + loss in one forward, so FSDP2 keeps the (possibly tied) head unsharded while the loss uses it.
    Returns the loss summed over the micro-batch's targets (the loop divides by the step's target count)."""

    def __init__(self, model: nn.Module, loss: LossConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_kwargs = loss_kwargs(loss or LossConfig())

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, labels, return_z_loss: bool = False):
        """The summed loss; with `return_z_loss`, (loss, the z-loss term inside it) for logging them apart."""
        hidden = self.model(input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        return self.model.loss(hidden, labels, reduction="sum", return_z_loss=return_z_loss, **self.loss_kwargs)


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


def check_out_dir(config: Config) -> Path:
    """The run folder, refused before any work when it is a file, under a file, or not writable."""
    run_dir = Path(config.run.out_dir)
    where = f"{config.source}: [run] out_dir = {str(run_dir)!r}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{where} is a file, not a folder; choose another run.out_dir")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{where}: {existing} is a file, so the folder cannot be made; choose another run.out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {existing} is not writable; choose another run.out_dir")
    return run_dir


def check_model_init(config: Config) -> None:
    """[model] init must be a folder or a preset name."""
    from mathforge.model.config import PRESETS

    init = config.model.init
    if not Path(init).is_dir() and init not in PRESETS:
        raise ConfigError(
            f"{config.source}: model.init = {init!r}: no such folder, and not a preset name "
            f"(presets: {', '.join(PRESETS)})"
        )


def check_earlier_run(run_dir: Path, *, resume: bool, force: bool, is_main: bool) -> None:
    """A folder holding an earlier run is continued (`resume`), cleared first (`force`: says what went) or
    refused: nothing of an earlier run is replaced or appended to silently."""
    if resume and force:
        raise ConfigError("--resume continues the run in out_dir and --force deletes it: pass one of them")
    outputs = run_outputs(run_dir)
    if not outputs or resume:
        return
    if not force:
        raise ConfigError(
            f"{run_dir} already holds a training run ({', '.join(describe_output(p) for p in outputs)}); "
            "pass --resume to continue it, or --force to delete it and start over"
        )
    if is_main:
        print(f"--force: removed from {run_dir}: {', '.join(remove_outputs(run_dir))}")


def _check_resume(config: Config, run_dir: Path, checkpoint: Path) -> None:
    """A resume must compute what the run would have: settings that change the result must be the run's."""
    saved = saved_config(checkpoint, run_dir)
    if saved is None:
        return
    diffs = result_differences(saved, config.to_dict())
    if diffs:
        listed = "; ".join(f"{key} = {json.dumps(old)} in the run, {json.dumps(new)} now" for key, old, new in diffs)
        raise ConfigError(
            f"{config.source}: cannot resume {run_dir} with other settings: {listed}. Resume with the run's "
            "settings, or start over with --force (or another run.out_dir)"
        )


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
    from mathforge.model import from_config, from_pretrained

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


@dataclass
class Run:
    """What every step of one training run works with: where it runs, the model, optimizer and progress."""

    config: Config
    rank: int
    world: int
    device: torch.device
    precision: str
    dir: Path
    state: TrainerState
    tokenizer: Any = None
    model: nn.Module | None = None
    module: LossModule | None = None
    optimizer: torch.optim.Optimizer | None = None
    autocast: Any = field(default_factory=contextlib.nullcontext)
    peak: float | None = None  # the GPU's bf16 TFLOP/s, for MFU
    log: MetricsLog | None = None  # rank 0 only
    started: float = 0.0  # perf_counter() at the run's start, earlier sessions included
    plain_log: bool = True  # one printed line per logging step (no progress bar)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(config: Config, *, resume: bool = False, force: bool = False) -> Run:
    """Process group, device, precision and run folder (checked: a file, an earlier run without `resume` or
    `force`, a resume with other settings are refused); the state of the checkpoint to resume (if any); then,
    unless that run already finished, tokenizer, model, optimizer (restored), autocast and the metrics log."""
    rank, world, distributed_device = _distributed()
    device = _device(config, distributed_device)
    run_dir = check_out_dir(config)
    check_model_init(config)
    check_earlier_run(run_dir, resume=resume, force=force, is_main=rank == 0)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        _check_resume(config, run_dir, checkpoint)
    if world > 1:
        dist.barrier()  # every rank has checked the folder before rank 0 writes to it
    state = load_trainer_state(checkpoint) if checkpoint else TrainerState()
    if rank == 0:
        _prepare_run_dir(config, run_dir, resume=resume, checkpoint=checkpoint, state=state)
    run = Run(config, rank, world, device, _precision(config, device), run_dir, state)
    if state.finished:
        return run
    run.tokenizer = load_tokenizer(config)
    run.model, run.module, run.optimizer = _build_module(run, checkpoint)
    if run.precision == "bf16-autocast" and world == 1:
        run.autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    run.peak = peak_tflops(override=config.train.peak_tflops) if device.type == "cuda" else None
    run.log = MetricsLog(run_dir, config.run.tensorboard) if run.is_main else None
    run.started = time.perf_counter() - state.elapsed_s
    return run


def _prepare_run_dir(config: Config, run_dir: Path, *, resume: bool, checkpoint: Path | None, state) -> None:
    """Rank 0: makes the folder, writes config.json, drops metrics a resume redoes, prints the warnings."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    except OSError as error:
        raise ConfigError(f"{config.source}: [run] out_dir = {str(run_dir)!r}: cannot write there ({error})") from None
    if resume and checkpoint is None:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from the beginning")
    if resume and not state.finished:
        dropped = trim_metrics(run_dir, state.global_step)
        if dropped:
            print(f"resuming at step {state.global_step}: dropped {dropped} metrics records of later steps (redone)")
    for warning in config_warnings(config):
        print(warning, file=sys.stderr)


def _build_module(run: Run, checkpoint: Path | None) -> tuple[nn.Module, LossModule, torch.optim.Optimizer]:
    """Model (compiled blocks if asked) inside its LossModule on the device, sharded when world > 1, and its
    optimizer; a resumed run restores optimizer and RNG states, a new one seeds each rank."""
    config = run.config
    model = build_model(config, run.tokenizer, checkpoint, torch.bfloat16 if run.precision == "bf16" else torch.float32)
    module = LossModule(model, config.loss)
    if config.model.compile:
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(block)
    module.to(run.device)
    if run.world > 1:
        _shard(module, run.precision)
    optimizer = build_optimizer(module, config.optim)
    if checkpoint is not None:
        restore(checkpoint, module, optimizer)
    else:
        torch.manual_seed(config.run.seed + run.rank)
    return model, module, optimizer


# ---------------------------------------------------------------- stage data


class StagePlan:
    """Which packed micro-batches each optimizer step uses: every epoch a seeded permutation of the bins,
    cut into steps of world × grad_accum micro-batches; rank r takes its grad_accum-sized slice."""

    def __init__(
        self, data: TokenizedData, micro_batch_tokens: int, world: int, accum: int, epochs: float, steps: int, seed: int
    ) -> None:
        self.data = data
        self.bins = plan_micro_batches(data, micro_batch_tokens)
        self.per_step = world * accum
        self.world, self.accum, self.seed = world, accum, seed
        self.steps_per_epoch = math.ceil(len(self.bins) / self.per_step)
        self.total_steps = steps if steps > 0 else max(1, round(epochs * self.steps_per_epoch))
        targets = target_counts(data.lengths, data.prompt_lengths)
        self.bin_tokens = np.array([data.lengths[b].sum() for b in self.bins])
        self.bin_targets = np.array([targets[b].sum() for b in self.bins])
        self.efficiency = fill_ratio(self.bins, data.lengths, micro_batch_tokens)
        self._orders: dict[int, np.ndarray] = {}

    def step_bins(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.steps_per_epoch)
        orders = self._orders  # read once: the prefetch thread may be an epoch ahead of the loop
        if epoch not in orders:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.bins))
            self._orders = orders = {e: o for e, o in orders.items() if e >= epoch - 1} | {epoch: order}
        return orders[epoch][k * self.per_step : (k + 1) * self.per_step]

    def micro_batches(self, rank: int, first_step: int) -> Iterator[tuple[np.ndarray, bool]]:
        """(documents, filler) of every micro-batch this rank runs from `first_step` to the end, in order; a rank
        short of micro-batches in a step runs fully masked fillers (bin 0) for the collectives."""
        for step in range(first_step, self.total_steps):
            mine, n_micro = self.rank_bins(step, rank)
            for i in range(n_micro):
                yield (self.bins[mine[i]], False) if i < len(mine) else (self.bins[0], True)

    def rank_bins(self, step: int, rank: int) -> tuple[np.ndarray, int]:
        """This rank's bins for the step, and how many micro-batches every rank runs (the longest share)."""
        chosen = self.step_bins(step)
        shares = [chosen[r * self.accum : (r + 1) * self.accum] for r in range(self.world)]
        return shares[rank], max(len(s) for s in shares)

    def step_targets(self, step: int) -> int:
        """Loss-carrying tokens of the whole step on all ranks: the loss of a step is normalised by them."""
        return int(self.bin_targets[self.step_bins(step)].sum())

    def step_tokens(self, step: int) -> int:
        return int(self.bin_tokens[self.step_bins(step)].sum())

    def step_doc_lengths(self, step: int) -> np.ndarray:
        return np.concatenate([self.data.lengths[self.bins[b]] for b in self.step_bins(step)])


def stage_data(run: Run, index: int, stage: StageConfig) -> StagePlan:
    """Tokenizes the stage's rows (rank 0 first, filling the cache the others read) and plans its steps."""
    data_cfg = run.config.stage_data(stage)
    cache_dir = Path(data_cfg.cache_dir or run.dir / "cache")
    options = dict(
        template=data_cfg.template,
        max_seq_len=data_cfg.max_seq_len,
        overflow=data_cfg.overflow,
        cache_dir=cache_dir,
        skip_bad_rows=data_cfg.skip_bad_rows,
    )
    if run.is_main:
        data = tokenize(stage.data, run.tokenizer, num_proc=data_cfg.num_proc, **options)
    if run.world > 1:
        dist.barrier()  # rank 0 tokenized and cached; the others read the cache
        if not run.is_main:
            data = tokenize(stage.data, run.tokenizer, num_proc=1, **options)
    data = with_loss_on(data, stage.loss_on)
    train_cfg = run.config.train
    plan = StagePlan(
        data,
        train_cfg.micro_batch_tokens,
        run.world,
        train_cfg.grad_accum,
        stage.epochs,
        stage.steps,
        run.config.run.seed * 1000 + index,
    )
    if run.is_main:
        print(
            f"stage {stage.name}: {data.counts['documents']:,} documents ({data.counts}), {len(plan.bins):,} "
            f"micro-batches of ≤{train_cfg.micro_batch_tokens} tokens, packing efficiency "
            f"{plan.efficiency:.2%}, {plan.total_steps} steps"
        )
    return plan


# ---------------------------------------------------------------- one train step


@dataclass
class StepResult:
    """One step's loss per target token and gradient norm, left on the device (no host sync)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    z_loss: torch.Tensor | None = None  # the z-loss part of `loss`, when [loss] z_loss > 0


def batch_loader(run: Run, plan: StagePlan, first_step: int, depth: int = 4) -> Prefetcher:
    """This rank's micro-batches from `first_step` on, built (and pinned, for CUDA) on a background thread while
    the steps run, in the order `forward_backward` takes them."""
    ignore = run.config.loss.ignore_index

    def make(spec: tuple[np.ndarray, bool]):
        return build_micro_batch(plan.data, spec[0], mask_all=spec[1], ignore_index=ignore)

    return Prefetcher(plan.micro_batches(run.rank, first_step), make, depth=depth, pin=run.device.type == "cuda")


def forward_backward(run: Run, plan: StagePlan, step: int, batches: Iterator[MicroBatch] | None = None) -> StepResult:
    """Forward and backward over this rank's micro-batches, each summed loss scaled by world / (targets of the
    whole step on all ranks), so the gradient is the token mean of one big batch; then clips the gradients.
    The micro-batches come from `batches` (see batch_loader), or are built here when it is None."""
    _, n_micro = plan.rank_bins(step, run.rank)
    if batches is None:
        batches = (
            build_micro_batch(plan.data, d, mask_all=f, ignore_index=run.config.loss.ignore_index)
            for d, f in itertools.islice(plan.micro_batches(run.rank, step), n_micro)
        )
    targets = max(plan.step_targets(step), 1)
    with_z = run.config.loss.z_loss > 0
    sums = torch.zeros(2, device=run.device)  # loss, z-loss term
    for _ in range(n_micro):
        batch = next(batches).to(run.device)
        args = (batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels)
        with run.autocast:
            loss, z = run.module(*args, return_z_loss=True) if with_z else (run.module(*args), None)
        (loss * (run.world / targets)).backward()
        sums[0] += loss.detach()
        if z is not None:
            sums[1] += z
    if run.world > 1:
        dist.all_reduce(sums)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.module.parameters(), run.config.optim.grad_clip or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    return StepResult(sums[0] / targets, grad_norm, sums[1] / targets if with_z else None)


def optimizer_step(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class FiniteWatch:
    """The first step (of a stage) whose loss or gradient norm was not finite, kept on the device so that
    steps need no host sync; `check` syncs (on logging and checkpoint steps) and stops the run."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.values = torch.zeros(2, dtype=torch.float32, device=device)

    def record(self, step: int, result: StepResult) -> None:
        values = torch.stack([result.loss.float(), result.grad_norm.float()])
        first = ~torch.isfinite(values).all() & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.values = torch.where(first, values, self.values)

    def check(self, run: Run, stage: str, step: int) -> None:
        """Call before applying `step`. TrainingError if a step so far was not finite: when it is `step`
        itself the weights are still the last good ones and are saved (as a checkpoint); when it is an earlier
        step its update already spoiled them, so nothing is saved and the last good checkpoint is named."""
        bad = int(self.step)
        if bad < 0:
            return
        loss, grad_norm = self.values.tolist()
        run.optimizer.zero_grad(set_to_none=True)
        if bad == step:
            where = f"the last good step is saved in {save(run)}"
        else:
            where = (
                f"found at step {step} (checks run on logging and checkpoint steps) after its update made the "
                f"weights non-finite, so nothing was saved; the last good checkpoint is "
                f"{latest_checkpoint(run.dir) or 'none (none was written before it)'}"
            )
        raise TrainingError(
            f"stage {stage}, step {bad}: loss {loss}, grad norm {grad_norm} — not finite; {where}. "
            "Lower [optim] lr or check the data."
        )


# ---------------------------------------------------------------- log, checkpoint, stop


def log_due(config: Config, plan: StagePlan, step: int, global_step: int) -> bool:
    """Logging steps: every `log_every` global steps and a stage's last step (and a stop, decided apart)."""
    return global_step % config.run.log_every == 0 or step + 1 == plan.total_steps


def checkpoint_due(config: Config, plan: StagePlan, step: int, global_step: int) -> bool:
    """Periodic checkpoints (the end of a stage and a stop save their own)."""
    every = config.run.checkpoint_every
    return bool(every) and global_step % every == 0 and step + 1 < plan.total_steps


def stop_reason(config: Config, global_step: int, elapsed_s: float) -> str | None:
    """Why the run stops after this step (None = it goes on): max_steps or time_limit_s reached."""
    if config.train.max_steps and global_step >= config.train.max_steps:
        return f"max_steps={config.train.max_steps}"
    if config.train.time_limit_s and elapsed_s >= config.train.time_limit_s:
        return f"time_limit_s={config.train.time_limit_s}"
    return None


def advance(run: Run, plan: StagePlan, step: int, meter: Throughput) -> None:
    """Counts the applied step in the trainer state and the stage's throughput."""
    tokens = plan.step_tokens(step)
    state = run.state
    state.stage_step, state.global_step = step + 1, state.global_step + 1
    state.tokens_seen += tokens
    state.elapsed_s = time.perf_counter() - run.started
    meter.add(tokens, run.model.flops_per_token(plan.step_doc_lengths(step)) * tokens)


def log_step(run: Run, plan: StagePlan, stage: str, step: int, result: StepResult, meter: Throughput) -> None:
    """Brings the step's loss and gradient norm to the host and (rank 0) appends the metrics record; tokens/s
    and MFU cover the steps since the previous logging step."""
    tokens, flops, seconds = meter.interval()
    meter.loss = result.loss.item()
    if run.log is None:
        return
    run.log.log(
        {
            "stage": stage,
            "step": step + 1,
            "global_step": run.state.global_step,
            "loss": meter.loss,
            "lr": run.optimizer.param_groups[0]["lr"],
            "grad_norm": result.grad_norm.item(),
            "tokens": plan.step_tokens(step),
            "target_tokens": plan.step_targets(step),
            "tokens_per_s": meter.tokens_per_s,
            "mfu": mfu(flops, seconds, run.peak, run.world),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if run.device.type == "cuda" else None,
            "packing_efficiency": plan.efficiency,
            "elapsed_s": run.state.elapsed_s,
            **_loss_parts(result),
        }
    )
    if run.plain_log:
        lr = run.optimizer.param_groups[0]["lr"]
        print(
            f"{stage} step {step + 1}/{plan.total_steps} (global {run.state.global_step}): loss {meter.loss:.4f}, "
            f"lr {lr:.3g}, {meter.tokens_per_s:,.0f} tokens/s",
            flush=True,
        )


def _loss_parts(result: StepResult) -> dict[str, float]:
    """With a z-loss, the record splits the loss into its cross-entropy and z-loss parts."""
    if result.z_loss is None:
        return {}
    z = result.z_loss.item()
    return {"ce_loss": result.loss.item() - z, "z_loss": z}


def save(run: Run, meter: Throughput | None = None) -> Path:
    """A checkpoint of the current state (every rank calls it); with the stage's `meter`, its throughput so far."""
    if meter is not None:
        run.state.stage_tokens, run.state.stage_seconds = meter.stage_totals()
    config = run.config.to_dict()
    return save_checkpoint(
        run.dir,
        run.module,
        run.optimizer,
        run.state,
        run.tokenizer,
        run.config.run.keep_last,
        config,
        template=_template(run, run.state.stage),
        provenance=_provenance(run),
    )


def _provenance(run: Run) -> dict[str, Any]:
    """The synth manifests behind the run's data and the evaluation sets that seeded them (mathforge.json)."""
    return data_provenance([source for stage in run.config.stages for source in stage.data])


def _template(run: Run, stage_index: int) -> str:
    """The training template of stage `stage_index` (the last stage once all are done)."""
    stages = run.config.stages
    return run.config.stage_data(stages[min(stage_index, len(stages) - 1)]).template


def stage_summary(stage: StageConfig, plan: StagePlan, run: Run, meter: Throughput) -> dict[str, Any]:
    return {
        "name": stage.name,
        "steps": run.state.stage_step,
        "planned_steps": plan.total_steps,
        "final_loss": meter.loss,
        "tokens": meter.stage_tokens,
        "tokens_per_s": meter.stage_tokens_per_s,
        "packing_efficiency": plan.efficiency,
        "micro_batches": len(plan.bins),
        "data": plan.data.counts,
    }


def finish(run: Run, summary: dict[str, Any], stop: str | None, meter: Throughput | None) -> dict[str, Any]:
    """A stopped run saves a checkpoint to resume; a finished one its final Hugging Face folder. Then summary.json."""
    run.state.finished = stop is None
    run.state.elapsed_s = time.perf_counter() - run.started
    if stop:
        summary["checkpoint"] = str(save(run, meter))
    state = {k: v for k, v in asdict(run.state).items() if k != "stages"}  # the stages are listed in full
    summary |= {"state": state, "stopped": stop, "elapsed_s": run.state.elapsed_s}
    if not stop:
        weights = run.model.hf_state_dict()  # collective under FSDP
        if run.is_main:
            save_model_folder(
                run.model,
                run.dir / "final",
                run.tokenizer,
                weights,
                _template(run, len(run.config.stages) - 1),
                _provenance(run),
            )
            summary["final_model"] = str(run.dir / "final")
    if run.is_main:
        (run.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        run.log.close()
    if run.world > 1:
        dist.barrier()
    return summary


# ---------------------------------------------------------------- the loop


class InterruptFlag:
    """Ctrl-C (SIGINT) while training: the first asks the loop to stop after the step in progress, with a
    checkpoint; a second one stops at once (KeyboardInterrupt, nothing saved). Installed only in the main thread."""

    def __init__(self, announce: bool) -> None:
        self.set = False
        self.announce = announce
        self._previous: Any = None

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        if self.announce:
            print(
                "\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once, unsaved)", flush=True
            )

    def requested(self, run: Run, sync_step: bool) -> bool:
        """Whether to stop now. On one process at once; on many, all ranks agree on syncing steps only (a step
        that logs or checkpoints), so no rank leaves the others waiting in a collective."""
        if run.world == 1:
            return self.set
        if not sync_step:
            return False
        flag = torch.tensor([float(self.set)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def run_stage(
    run: Run, index: int, stage: StageConfig, flag: InterruptFlag, bar_enabled: bool
) -> tuple[dict[str, Any], str | None, Throughput]:
    """One stage from the trainer state's step to its end or a stop; (its summary, the stop reason, its meter)."""
    config = run.config
    plan, optim_cfg = stage_data(run, index, stage), config.stage_optim(stage)
    if run.state.stage_step == 0 and index > 0 and stage.reset_optimizer:
        run.optimizer = build_optimizer(run.module, config.optim)
    if run.state.stage_step == 0:
        run.state.stage_tokens, run.state.stage_seconds = 0, 0.0
    meter = Throughput(run.device, run.state.stage_tokens, run.state.stage_seconds)
    watch = FiniteWatch(run.device)
    bar = _Bar(stage.name, plan.total_steps, run.state.stage_step) if bar_enabled else None
    stop = None
    loader = batch_loader(run, plan, run.state.stage_step)
    try:
        for step in range(run.state.stage_step, plan.total_steps):
            meter.start()
            result = forward_backward(run, plan, step, loader)
            watch.record(step, result)
            global_step = run.state.global_step + 1  # once this step is applied
            save_now = checkpoint_due(config, plan, step, global_step)
            periodic = log_due(config, plan, step, global_step) or save_now
            stop = stop_reason(config, global_step, time.perf_counter() - run.started)
            if stop is None and flag.requested(run, periodic):
                stop = "interrupted"
            if periodic or stop:
                watch.check(run, stage.name, step)  # a bad step stops here, before its update
            optimizer_step(run.optimizer, lr_at(step, plan.total_steps, optim_cfg))
            advance(run, plan, step, meter)
            if periodic or stop:
                log_step(run, plan, stage.name, step, result, meter)
            if save_now and not stop:
                save(run, meter)
            if bar is not None:
                bar.update(loss=meter.loss, tokens_per_s=meter.tokens_per_s)
            if stop:
                break
    finally:
        loader.close()
        if bar is not None:
            bar.close()
    return stage_summary(stage, plan, run, meter), stop, meter


def train(config: Config, *, resume: bool = False, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs every stage of `config`; returns (and writes to <out_dir>/summary.json) what happened.

    A run folder holding an earlier run is refused unless `resume` (continue it: the settings that change the
    result must be the same) or `force` (delete its outputs first). With `progress` and a terminal, a progress bar;
    otherwise one printed line per logging step. Ctrl-C stops after the step in progress with a checkpoint and
    raises `TrainingInterrupted` (a KeyboardInterrupt) saying how to continue.

    The host waits for the device only on logging steps (every `log_every` global steps, a stage's last step,
    a stop) and checkpoint steps; in between, loss and gradient norm stay on the device. A non-finite loss or
    gradient norm raises `TrainingError` naming the stage and the first bad step, found at the next such step
    at the latest (at once with log_every = 1): when found before its own update, that update is skipped and
    the last good step is saved as a checkpoint; when found later, the last good checkpoint is named instead.
    """
    run = setup(config, resume=resume, force=force)
    if run.state.finished:
        return json.loads((run.dir / "summary.json").read_text())
    bar_enabled = progress and run.is_main and sys.stdout.isatty()
    run.plain_log = not bar_enabled
    summary: dict[str, Any] = {
        "stages": list(run.state.stages),  # stages finished by earlier processes of this run
        "precision": run.precision,
        "device": str(run.device),
        "world_size": run.world,
    }
    stop, meter = None, None
    with InterruptFlag(announce=run.is_main) as flag:
        for index, stage in enumerate(config.stages):
            if index < run.state.stage:
                continue
            if run.state.stage_step == 0 and flag.requested(run, sync_step=True):
                stop = "interrupted"  # between stages: the previous stage's end is saved; skip tokenizing
                break
            stage_result, stop, meter = run_stage(run, index, stage, flag, bar_enabled)
            summary["stages"].append(stage_result)
            if stop:
                break
            run.state.stages.append(stage_result)
            run.state.stage, run.state.stage_step = index + 1, 0
            save(run, meter)
        summary = finish(run, summary, stop, meter)
    if stop == "interrupted":
        raise TrainingInterrupted(
            f"interrupted at step {run.state.global_step}; continue with --resume (checkpoint: {summary['checkpoint']})",
            summary,
        )
    return summary


class _Bar:
    """A rich progress bar with ETA for one stage."""

    def __init__(self, name: str, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]:.4f} · {task.fields[tps]:,.0f} tok/s"),
        )
        self.task = self.progress.add_task(name, total=total, completed=done, loss=float("nan"), tps=0.0)
        self.progress.start()

    def update(self, loss: float, tokens_per_s: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, tps=tokens_per_s)

    def close(self) -> None:
        self.progress.stop()
