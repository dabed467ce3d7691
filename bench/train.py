"""Training-step throughput: mathforge's packed step against the strongest single-GPU transformers setup (and the
plain padded one), same documents, same model shape, same precision, same optimizer, in the same run.

    python -m mathforge.bench.train [--preset qwen2.5-1.5b] [--tokens 4096] [--accum 16] [--steps 6]
        [--precision bf16-autocast bf16] [--hf-attn flex_attention sdpa] [--compile] [--profile]
        [--max-model [--memory-cap-gib 80]] [--time-budget-s S] [--out DIR] [--quick]

Workload: documents with a GSM8K/MATH-like length mix (lognormal, median 300, clipped to [32, 2048]), random
token ids, the first 20% of each document a prompt, packed by the trainer's planner into micro-batches of at
most `--tokens` tokens; one optimizer step = `--accum` micro-batches (default 16 × 4096). Every row runs the
same micro-batches of the same documents:

- mathforge: one flat stream per micro-batch with cu_seqlens, varlen attention, fused linear cross-entropy
  (the trainer's `LossModule`); optionally every block under `torch.compile(fullgraph=True)` (`--compile`).
- transformers + Liger, padding-free: what TRL's `padding_free=True` collator feeds a model: each micro-batch
  one [1, T] row of concatenated documents, position_ids restarting at 0 per document, labels -100 on prompts
  and on each document's first token, no attention_mask, `use_cache=False` (with a cache transformers does not
  look for packed documents and attends across them). Without flash-attn, transformers builds the
  block-diagonal causal mask from the position_ids (`masking_utils.find_packed_sequence_indices`): "sdpa"
  materialises a dense [1, 1, T, T] mask (SDPA then runs the memory-efficient kernel over all T² pairs, with
  K/V repeated per query head), "flex_attention" a BlockMask that skips blocks between documents. Liger-Kernel
  (`apply_liger_kernel_to_<model_type>`: rope, RMSNorm, SwiGLU, fused linear cross-entropy) is applied on CUDA
  when importable; otherwise the row runs without it and its name says so. One row per `--hf-attn`;
  after its steps the packed forward is checked against each document run alone through SDPA
  (`packed_vs_documents_max_rel_diff`; flex_attention gave NaN or wrong rows on CPU after dynamic-shape
  recompiles with torch 2.13, so its GPU rows are checked rather than trusted).
- transformers padded (SDPA): the same micro-batches as [B, S] rows padded to the longest document.

Precision modes: "bf16-autocast" = fp32 master weights under bf16 autocast; "bf16" = bf16 weights (the
trainer's `build_optimizer` then gives `AdamWBf16`: fp32 moments, stochastic rounding); "fp32" (CPU default).
Every row: the trainer's optimizer (`build_optimizer`: AdamW, fused on CUDA), grad clip 1.0, each micro-batch's
loss scaled by the step's target count. Tokens/s counts real tokens; MFU uses `Transformer.flops_per_token`
(attention counted per document) for every row, over the peak of `mathforge.trainer.metrics`; peak memory is
`torch.cuda.max_memory_allocated` from the row's model build on. A row that fails (OOM, exception) is recorded
with its error. `--profile` profiles one step of mathforge (top kernels by self device time, by category, and
the host syncs); `--max-model` finds the largest preset one step of which fits in bf16 mode under
`--memory-cap-gib` (then bisects the layer count of the first preset that does not fit). Order: the rows of each
precision mode, the profile, the compiled rows, the largest model; with `--time-budget-s`, what has not started
when it is spent is recorded as skipped. Results go to bench/results/<device>/train.json (or `--out`),
rewritten after every row, so a run cut short still leaves its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.bench.train_hf import (
    PRECISIONS,
    autocast_for,
    build_hf,
    liger_applied,
    liger_unavailable,
    packed_vs_documents,
    padded_batch,
    padding_free_batch,
)
from mathforge.bench.train_profile import count_sync_warnings, print_profile, summarise_profile
from mathforge.kernels.attention import resolve_backend
from mathforge.model import from_config
from mathforge.model.config import PRESETS
from mathforge.trainer.config import OptimConfig
from mathforge.trainer.data import IGNORE_INDEX, TokenizedData, build_micro_batch, plan_micro_batches
from mathforge.trainer.metrics import mfu, peak_tflops
from mathforge.trainer.optim import build_optimizer
from mathforge.trainer.train import LossModule

GRAD_CLIP = 1.0
TARGETS = {"mfu": 0.45, "speedup_vs_liger_padding_free": 1.3}


# ---------------------------------------------------------------- workload


def workload(n_docs: int, vocab: int, max_len: int, seed: int = 0) -> TokenizedData:
    """Random documents: lognormal lengths (median 300) in [32, min(2048, max_len)], the first 20% a prompt."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(300), 0.7, n_docs)), 32, min(2048, max_len)).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    tokens = rng.integers(0, vocab, int(offsets[-1]), dtype=np.int32)
    return TokenizedData(tokens, offsets, np.maximum(1, lengths // 5))


@dataclass
class Plan:
    """The micro-batches (documents of each) of every optimizer step, and what each step holds."""

    data: TokenizedData
    steps: list[list[np.ndarray]]
    tokens: list[int] = field(default_factory=list)  # real tokens per step
    targets: list[int] = field(default_factory=list)  # loss-carrying tokens per step
    flops: list[float] = field(default_factory=list)  # model FLOPs per step (attention per document)


def plan_steps(preset: str | dict, micro_batch_tokens: int, accum: int, steps: int, seed: int = 0) -> Plan:
    """`steps` optimizer steps of `accum` packed micro-batches of ≤ `micro_batch_tokens` tokens each."""
    meta = from_config(preset, device="meta")
    needed = steps * accum
    n_docs = max(64, math.ceil(needed * micro_batch_tokens / 250))
    data = workload(n_docs, meta.config.vocab_size, micro_batch_tokens, seed)
    bins = plan_micro_batches(data, micro_batch_tokens)
    if len(bins) < needed:
        raise ValueError(f"the workload packs into {len(bins)} micro-batches, fewer than steps × accum = {needed}")
    plan = Plan(data, [bins[i * accum : (i + 1) * accum] for i in range(steps)])
    for step in plan.steps:
        batches = [build_micro_batch(data, b) for b in step]
        plan.tokens.append(sum(len(mb.input_ids) for mb in batches))
        plan.targets.append(sum(mb.num_targets for mb in batches))
        plan.flops.append(sum(meta.flops_per_token(mb.doc_lengths) * len(mb.input_ids) for mb in batches))
    return plan


# ---------------------------------------------------------------- models of the rows


def build_ours(preset: str | dict, precision: str, device: torch.device, compiled: bool) -> LossModule:
    """Our model of `preset` in the weights' dtype inside the trainer's LossModule; with `compiled`, every block
    under torch.compile(fullgraph=True) (our kernels are custom ops, so a graph break fails the row)."""
    model = from_config(preset, dtype=PRECISIONS.get(precision).weights, device=device)
    if compiled:
        torch._dynamo.reset()
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(block, fullgraph=True)
    return LossModule(model)


# ---------------------------------------------------------------- one row


@dataclass
class Trainee:
    """What a row trains: the module whose parameters the optimizer updates, its micro-batches per step (on the
    device) and the loss of one micro-batch already divided by the step's target count."""

    module: torch.nn.Module
    steps: list[list[Any]]
    loss: Callable[[Any], torch.Tensor]
    tokens: list[int]  # real (non-pad) tokens per step, counted from the row's own batches
    targets: list[int]  # loss-carrying labels per step, counted from the row's own batches


def ours_trainee(module: LossModule, plan: Plan, device: torch.device) -> Trainee:
    steps = [
        [(build_micro_batch(plan.data, b).to(device), targets) for b in step]
        for step, targets in zip(plan.steps, plan.targets)
    ]

    def loss(item):
        batch, targets = item
        total = module(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels)
        return total / targets

    tokens = [sum(len(b.input_ids) for b, _ in step) for step in steps]
    counted = [sum(int((b.labels != IGNORE_INDEX).sum()) for b, _ in step) for step in steps]
    return Trainee(module, steps, loss, tokens, counted)


def hf_trainee(model, plan: Plan, device: torch.device, padding_free: bool) -> Trainee:
    """transformers' mean loss over a micro-batch's targets, rescaled to (its targets / the step's targets)."""
    steps = []
    for step, targets in zip(plan.steps, plan.targets):
        items = []
        for b in step:
            packed = build_micro_batch(plan.data, b)
            batch = padding_free_batch(packed) if padding_free else padded_batch(plan.data, b)
            items.append(({k: v.to(device) for k, v in batch.items()}, packed.num_targets / targets))
        steps.append(items)

    def loss(item):
        batch, share = item
        return model(**batch, use_cache=False).loss * share

    tokens = [sum(real_tokens(b) for b, _ in step) for step in steps]
    counted = [sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b, _ in step) for step in steps]
    return Trainee(model, steps, loss, tokens, counted)


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens of a transformers batch: the attention mask's ones, or every token without a mask."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def train_step(trainee: Trainee, optimizer, batches: list[Any], autocast) -> None:
    """One optimizer step: forward+backward of every micro-batch, grad clip, AdamW, zero grads."""
    for item in batches:
        with autocast:
            loss = trainee.loss(item)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(trainee.module.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainee: Trainee, precision: str, device: torch.device, plan: Plan, warmup: int) -> dict:
    """Runs every step of `plan`; times those after the first `warmup` (allocator, kernels, compiles, optimizer
    state). Rates are the median over the timed steps of each step's tokens (FLOPs) over its seconds, so one slow
    step (a late recompile) does not move them."""
    optimizer = build_optimizer(trainee.module, OptimConfig(lr=1e-5))
    autocast = autocast_for(precision, device)
    seconds = []
    for batches in trainee.steps:
        start = time.perf_counter()
        train_step(trainee, optimizer, batches, autocast)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    timed = list(zip(seconds, trainee.tokens, plan.flops))[warmup:]
    tokens_per_s = statistics.median(tokens / s for s, tokens, _ in timed)
    flops_per_s = statistics.median(flops / s for s, _, flops in timed)
    peak = peak_tflops() if device.type == "cuda" else None
    return {
        "optimizer": type(optimizer).__name__ + (" (fused)" if optimizer.defaults.get("fused") else ""),
        "tokens_per_step": trainee.tokens,
        "targets_per_step": trainee.targets,
        "step_s": seconds,
        "median_step_s": statistics.median(s for s, _, _ in timed),
        "tokens_per_s": tokens_per_s,
        "tflops": flops_per_s / 1e12,
        "mfu": mfu(flops_per_s, 1.0, peak),
    }


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def record_errors(row: dict, work: Callable[[], dict], device: torch.device) -> dict:
    """`row` updated with what `work()` measured, or with its error: an OOM or exception ends the row, not the run."""
    free_memory(device)
    try:
        row |= work()
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as error:  # a failing baseline or compile is a result to record
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        row["traceback_tail"] = traceback.format_exc().splitlines()[-8:]
    free_memory(device)
    return row


# ---------------------------------------------------------------- the rows


@dataclass
class Options:
    """What one benchmark run measures (see `main` for the command-line flags)."""

    preset: str = "qwen2.5-1.5b"
    tokens: int = 4096
    accum: int = 16
    steps: int = 6
    warmup: int = 2
    precisions: tuple[str, ...] = ("bf16-autocast", "bf16")
    hf_attn: tuple[str, ...] = ("flex_attention", "sdpa")
    padded: bool = True
    compile: bool = False
    profile: bool = False
    max_model: bool = False
    memory_cap_gib: float = 80.0
    time_budget_s: float = 0.0
    out: Path | None = None


def ours_name(compiled: bool) -> str:
    return "mathforge (packed, varlen, fused linear CE)" + (" + compile(fullgraph)" if compiled else "")


def liger_name(attn: str, device: torch.device) -> str:
    why_not = liger_unavailable(device)
    liger = "transformers + Liger" if why_not is None else f"transformers (no liger: {why_not})"
    return f"{liger}, padding-free ({attn})"


PADDED_NAME = "transformers padded (SDPA, torch CE)"


def ours_row(opts: Options, plan: Plan, precision: str, device: torch.device, compiled: bool) -> dict:
    """Our packed step (the attention backend "auto" picks is recorded), blocks compiled when asked."""
    row = {"name": ours_name(compiled), "family": "mathforge", "precision": precision, "compiled": compiled}

    def work() -> dict:
        module = build_ours(opts.preset, precision, device, compiled)
        half = precision != "fp32"  # under autocast the attention inputs are bf16 too
        probe = torch.zeros(1, dtype=torch.bfloat16 if half else torch.float32, device=device)
        backend = resolve_backend(module.model.attention_backend, probe)
        return {"attention": backend} | time_steps(
            ours_trainee(module, plan, device), precision, device, plan, opts.warmup
        )

    return record_errors(row, work, device)


def liger_row(opts: Options, plan: Plan, precision: str, attn: str, device: torch.device) -> dict:
    """transformers (+ Liger where it runs) on padding-free [1, T] rows with attention `attn`; then checks the
    packed forward against each document alone."""
    row = {"name": liger_name(attn, device), "family": "liger-padding-free", "precision": precision}
    row |= {"attention": attn, "liger": liger_unavailable(device) is None}

    def work() -> dict:
        model = build_hf(opts.preset, precision, attn, device)
        with liger_applied(model, device):
            trainee = hf_trainee(model, plan, device, padding_free=True)
            timed = time_steps(trainee, precision, device, plan, opts.warmup)
            # checked after the steps, in the (recompiled, dynamic-shape) state they ran in
            return timed | {
                "packed_vs_documents_max_rel_diff": packed_vs_documents(model, trainee.steps[-1][-1][0], precision)
            }

    return record_errors(row, work, device)


def padded_row(opts: Options, plan: Plan, precision: str, device: torch.device) -> dict:
    """Plain transformers on [B, S] rows padded to the longest document (the share of pad tokens recorded)."""
    row = {"name": PADDED_NAME, "family": "padded", "precision": precision}
    row["attention"] = "sdpa"

    def work() -> dict:
        model = build_hf(opts.preset, precision, "sdpa", device)
        trainee = hf_trainee(model, plan, device, padding_free=False)
        padded = sum(item[0]["input_ids"].numel() for step in trainee.steps[opts.warmup :] for item in step)
        return {"padding_share": 1 - sum(plan.tokens[opts.warmup :]) / padded} | time_steps(
            trainee, precision, device, plan, opts.warmup
        )

    return record_errors(row, work, device)


@dataclass
class RowSpec:
    """A row to measure: what it is (for the record when it is skipped) and the call that measures it."""

    name: str
    family: str
    precision: str
    measure: Callable[[], dict]


def main_rows(opts: Options, plan: Plan, device: torch.device) -> Iterator[RowSpec]:
    """Per precision mode: ours, the Liger padding-free rows (one per attention), padded."""
    for p in opts.precisions:
        yield RowSpec(ours_name(False), "mathforge", p, lambda p=p: ours_row(opts, plan, p, device, compiled=False))
        for attn in opts.hf_attn:
            yield RowSpec(
                liger_name(attn, device),
                "liger-padding-free",
                p,
                lambda p=p, a=attn: liger_row(opts, plan, p, a, device),
            )
        if opts.padded:
            yield RowSpec(PADDED_NAME, "padded", p, lambda p=p: padded_row(opts, plan, p, device))


def compile_rows(opts: Options, plan: Plan, device: torch.device) -> Iterator[RowSpec]:
    """With --compile: ours with every block compiled, per precision mode (measured last: compiling is slow)."""
    for p in opts.precisions if opts.compile else ():
        yield RowSpec(ours_name(True), "mathforge", p, lambda p=p: ours_row(opts, plan, p, device, compiled=True))


class Budget:
    """Wall-clock budget of a run (`--time-budget-s`, 0 = none): work not started once it is spent is skipped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.perf_counter() + seconds if seconds > 0 else math.inf

    def spent(self) -> bool:
        return time.perf_counter() > self.deadline

    @property
    def reason(self) -> str:
        return f"skipped: --time-budget-s {self.seconds:g} spent"


def _best(rows: list[dict], family: str, precision: str) -> dict | None:
    """The fastest row of a family in a precision mode that ran (the strongest baseline)."""
    ran = [r for r in rows if r["family"] == family and r["precision"] == precision and "tokens_per_s" in r]
    return max(ran, key=lambda r: r["tokens_per_s"], default=None)


def add_comparisons(rows: list[dict]) -> None:
    """Each mathforge row: tokens/s and peak memory over the fastest Liger padding-free row and the padded row of
    its precision mode (speedup_vs_*, memory_vs_*; the target is ≥ 1.3× at ≤ 1.0× memory)."""
    for row in rows:
        if row["family"] != "mathforge" or "tokens_per_s" not in row:
            continue
        for family, key in (("liger-padding-free", "liger_padding_free"), ("padded", "padded")):
            base = _best(rows, family, row["precision"])
            if base is None:
                continue
            row[f"speedup_vs_{key}"] = row["tokens_per_s"] / base["tokens_per_s"]
            row[f"{key}_row"] = base["name"]
            if row.get("peak_memory_gib") and base.get("peak_memory_gib"):
                row[f"memory_vs_{key}"] = row["peak_memory_gib"] / base["peak_memory_gib"]
        row["targets_met"] = targets_met(row)


def targets_met(row: dict) -> dict[str, bool | None]:
    """Issue 12's targets for a mathforge row (None where not measured): MFU ≥ 45%, and ≥ 1.3× the tokens/s of
    the strongest Liger padding-free row at no more peak memory."""
    speedup, memory = row.get("speedup_vs_liger_padding_free"), row.get("memory_vs_liger_padding_free")
    return {
        "mfu": None if row.get("mfu") is None else row["mfu"] >= TARGETS["mfu"],
        "speedup_vs_liger_padding_free": None
        if speedup is None
        else speedup >= TARGETS["speedup_vs_liger_padding_free"],
        "memory_vs_liger_padding_free": None if memory is None else memory <= 1.0,
    }


# ---------------------------------------------------------------- profile


def profile_ours(opts: Options, plan: Plan, precision: str, device: torch.device) -> dict:
    """One profiled step of mathforge (after one warm-up step); on CUDA also the host-sync warnings of a step."""
    from torch.profiler import ProfilerActivity, profile

    free_memory(device)
    module = build_ours(opts.preset, precision, device, compiled=False)
    trainee = ours_trainee(module, plan, device)
    optimizer = build_optimizer(module, OptimConfig(lr=1e-5))
    autocast = autocast_for(precision, device)
    train_step(trainee, optimizer, trainee.steps[0], autocast)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(trainee, optimizer, trainee.steps[-1], autocast)
        _sync(device)
    summary = {"precision": precision} | summarise_profile(prof.key_averages(), device.type == "cuda")
    if device.type == "cuda":
        summary["sync_debug_warnings"] = count_sync_warnings(
            lambda: train_step(trainee, optimizer, trainee.steps[-1], autocast)
        )
    return summary  # the caller frees the memory once this frame (model, optimizer) is gone


# ---------------------------------------------------------------- largest model


@contextlib.contextmanager
def memory_cap(gib: float, device: torch.device) -> Iterator[None]:
    """Caps the caching allocator at `gib` GiB of a larger GPU (an OOM past it), as if the GPU had only that."""
    if device.type != "cuda":
        yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def one_step(model: str | dict, opts: Options, device: torch.device) -> dict:
    """One optimizer step of one micro-batch of our `model` (a preset, or {"preset": ..., overrides}) in bf16
    mode: its record, with "error" when it does not fit."""
    plan = plan_steps(model, opts.tokens, accum=1, steps=1)
    row = {"model": model, "parameters": from_config(model, device="meta").num_parameters()}

    def work() -> dict:
        return time_steps(ours_trainee(build_ours(model, "bf16", device, False), plan, device), "bf16", device, plan, 0)

    return record_errors(row, work, device)


def largest_layer_count(preset: str, opts: Options, device: torch.device, budget: Budget, tried: list) -> dict | None:
    """Bisects the layer count of `preset` (which does not fit) for the largest that does; None if not even one."""
    fits, fails = 0, from_config(preset, device="meta").config.num_hidden_layers
    best = None
    while fails - fits > 1 and not budget.spent():
        mid = (fits + fails) // 2
        row = one_step({"preset": preset, "num_hidden_layers": mid}, opts, device)
        tried.append(row)
        if "error" not in row:
            fits, best = mid, row
        elif row["error"] == "out of memory":
            fails = mid
        else:  # another failure: a bug to read, not a size
            break
    return best


def largest_model(opts: Options, device: torch.device, budget: Budget) -> dict:
    """Presets in increasing size, one bf16-mode step of one micro-batch each, GPU memory capped at
    `opts.memory_cap_gib` (80 GB on a bigger GPU); at the first that does not fit, the largest layer count of its
    shape that does (bisected)."""
    sizes = sorted((from_config(p, device="meta").num_parameters(), p) for p in PRESETS if p != "tiny")
    tried: list[dict] = []
    with memory_cap(opts.memory_cap_gib, device):
        for _, preset in sizes:
            tried.append(one_step(preset, opts, device))
            if "error" in tried[-1] or budget.spent():
                break
        fitting = [row for row in tried if "error" not in row]
        last = tried[-1]
        if last.get("error") == "out of memory":
            fitting.append(largest_layer_count(last["model"], opts, device, budget, tried))
    largest = max((row for row in fitting if row), key=lambda row: row["parameters"], default=None)
    return {"memory_cap_gib": opts.memory_cap_gib, "largest": largest and largest["model"], "tried": tried}


# ---------------------------------------------------------------- run


def run(opts: Options, device: torch.device, on_row: Callable[[dict], None] | None = None) -> dict:
    """Measures every row of `opts` (see the module docstring); `on_row(result)` after each row."""
    plan = plan_steps(opts.preset, opts.tokens, opts.accum, opts.steps)
    result = {
        "benchmark": "train",
        "environment": environment("transformers", "liger-kernel", "flash-attn"),
        "workload": {
            "preset": opts.preset,
            "micro_batch_tokens": opts.tokens,
            "micro_batches_per_step": opts.accum,
            "steps": opts.steps,
            "warmup_steps": opts.warmup,
            "real_tokens_per_step": statistics.median(plan.tokens),
            "docs_per_step": statistics.median(sum(len(b) for b in step) for step in plan.steps),
            "model_tflop_per_step": statistics.median(plan.flops) / 1e12,
            "lengths": "lognormal(median=300, sigma=0.7) in [32, 2048], prompt = first 20%",
            "grad_clip": GRAD_CLIP,
        },
        "targets": TARGETS,
        "rows": [],
    }
    budget = Budget(opts.time_budget_s)
    report = on_row or (lambda result: None)
    for spec in main_rows(opts, plan, device):
        add_row(result, spec, budget, report)
    if opts.profile:
        work = lambda: profile_ours(opts, plan, opts.precisions[0], device)  # noqa: E731
        result["profile"] = {"skipped": budget.reason} if budget.spent() else record_errors({}, work, device)
    for spec in compile_rows(opts, plan, device):
        add_row(result, spec, budget, report)
    if opts.max_model:
        skipped = budget.spent() or device.type != "cuda"
        why = budget.reason if device.type == "cuda" else "skipped: needs a CUDA GPU"
        result["max_model"] = {"skipped": why} if skipped else largest_model(opts, device, budget)
    return result


def add_row(result: dict, spec: RowSpec, budget: Budget, report: Callable[[dict], None]) -> None:
    """Measures the row (or records it skipped when the budget is spent), updates the comparisons, reports."""
    skipped = {"name": spec.name, "family": spec.family, "precision": spec.precision, "error": budget.reason}
    result["rows"].append(skipped if budget.spent() else spec.measure())
    add_comparisons(result["rows"])
    report(result)


def table(result: dict, device: torch.device) -> Table:
    work = result["workload"]
    title = (
        f"training step, {work['preset']}, {work['micro_batches_per_step']} × ≤{work['micro_batch_tokens']} "
        f"tokens (~{work['real_tokens_per_step']:,.0f} real) per step ({device})"
    )
    out = Table(title=title)
    columns = ("implementation", "precision", "step s", "tokens/s", "MFU", "peak GiB", "vs liger-pf", "vs padded")
    for column in columns:
        out.add_column(column, justify="left" if column in ("implementation", "precision") else "right")
    for row in result["rows"]:
        if "error" in row:
            out.add_row(row["name"], row["precision"], row["error"][:60], "", "", "", "", "")
            continue
        out.add_row(
            row["name"],
            row["precision"],
            f"{row['median_step_s']:.3f}",
            f"{row['tokens_per_s']:,.0f}",
            f"{row['mfu']:.1%}" if row.get("mfu") else "-",
            f"{row['peak_memory_gib']:.1f}" if row.get("peak_memory_gib") else "-",
            _ratio(row, "liger_padding_free"),
            _ratio(row, "padded"),
        )
    return out


def _ratio(row: dict, key: str) -> str:
    if f"speedup_vs_{key}" not in row:
        return ""
    memory = row.get(f"memory_vs_{key}")
    return f"{row[f'speedup_vs_{key}']:.2f}x" + (f" ({memory:.2f}x mem)" if memory else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-1.5b")
    parser.add_argument("--tokens", type=int, default=4096, help="micro-batch token budget")
    parser.add_argument("--accum", type=int, default=16, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per row, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per row")
    parser.add_argument(
        "--precision", nargs="+", choices=PRECISIONS.names(), help="default: bf16-autocast bf16 (CPU: fp32)"
    )
    parser.add_argument(
        "--hf-attn",
        nargs="+",
        choices=("flex_attention", "sdpa", "eager"),
        help="transformers padding-free attention (default: flex_attention sdpa; CPU: sdpa)",
    )
    parser.add_argument("--no-padded", action="store_true", help="skip the padded transformers rows")
    parser.add_argument("--compile", action="store_true", help="add mathforge rows with every block compiled")
    parser.add_argument("--profile", action="store_true", help="profile one mathforge step")
    parser.add_argument("--max-model", action="store_true", help="largest preset one bf16 step of which fits")
    parser.add_argument("--memory-cap-gib", type=float, default=80.0, help="GPU memory allowed for --max-model")
    parser.add_argument(
        "--time-budget-s", type=float, default=0.0, help="skip the work not started after this many seconds (0: none)"
    )
    parser.add_argument("--out", type=Path, help="folder for train.json (default bench/results/<device>/)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny preset, 3 small steps (1 warm-up), no result file unless --out"
    )
    return parser


def options(args: argparse.Namespace, device: torch.device) -> Options:
    on_cuda = device.type == "cuda"
    opts = Options(
        preset=args.preset,
        tokens=args.tokens,
        accum=args.accum,
        steps=args.steps,
        warmup=args.warmup,
        precisions=tuple(args.precision or (("bf16-autocast", "bf16") if on_cuda else ("fp32",))),
        hf_attn=tuple(args.hf_attn or (("flex_attention", "sdpa") if on_cuda else ("sdpa",))),
        padded=not args.no_padded,
        compile=args.compile,
        profile=args.profile,
        max_model=args.max_model,
        memory_cap_gib=args.memory_cap_gib,
        time_budget_s=args.time_budget_s,
        out=args.out,
    )
    if args.quick:
        opts = dataclasses.replace(opts, preset="tiny", tokens=512, accum=2, steps=3, warmup=1)
    if opts.steps <= opts.warmup:
        raise SystemExit(f"--steps {opts.steps} must exceed --warmup {opts.warmup} (some steps must be timed)")
    return opts


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    opts = options(args, device)
    console = Console(width=None if sys.stdout.isatty() else 180)
    write = (not args.quick) or opts.out is not None

    def on_row(result: dict) -> None:
        row = result["rows"][-1]
        done = row.get("error") or f"{row['tokens_per_s']:,.0f} tokens/s"
        console.print(f"{row['name']}, {row['precision']}: {done}", markup=False, highlight=False)
        if write:
            write_result("train", result, opts.out)

    result = run(opts, device, on_row)
    console.print(table(result, device))
    profile = result.get("profile", {})
    if "top" in profile:
        print_profile(profile, console)
    elif profile:
        console.print(f"profile: {profile.get('error') or profile.get('skipped')}", markup=False)
    if "max_model" in result:
        found = result["max_model"]
        console.print(f"largest model one bf16 step of which fits: {found.get('largest', found)}", markup=False)
    if write:
        console.print(f"wrote {write_result('train', result, opts.out)}")
    return result


if __name__ == "__main__":
    main()
