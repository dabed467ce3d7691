"""Training-step throughput: mathforge's packed step vs a transformers baseline, same model and optimizer.

    python -m mathforge.bench.train [--preset qwen2.5-1.5b] [--tokens 4096] [--steps 20] [--quick]

Workload: documents with a GSM8K/MATH-like length mix (lognormal, median 300, clipped to [32, 2048]),
random token ids, the first 20% of each document a prompt. One optimizer step consumes about
`--tokens` real tokens per micro-batch:
- mathforge: documents packed into `--tokens`-token micro-batches (the C++ packer), one flat stream with
  cu_seqlens, varlen attention, fused linear cross-entropy, the trainer's `LossModule`;
- transformers: the same documents in padded [B, S] batches of the same real-token budget (S = the
  longest in the batch), `attn_implementation="sdpa"`, torch cross-entropy through `labels=`.
Both: fp32 master weights under bf16 autocast on CUDA (fp32 on CPU), fused AdamW on CUDA, grad clip 1.0.
Tokens/s counts real (non-pad) tokens; MFU uses `Transformer.flops_per_token` over the GPU peak table
of `mathforge.trainer.metrics`. Results go to bench/results/<device>/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.model import from_config
from mathforge.trainer.data import TokenizedData, build_micro_batch, plan_micro_batches
from mathforge.trainer.metrics import mfu, peak_tflops
from mathforge.trainer.train import LossModule


def workload(n_docs: int, vocab: int, max_len: int, seed: int = 0) -> TokenizedData:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(300), 0.7, n_docs)), 32, min(2048, max_len)).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    tokens = rng.integers(0, vocab, int(offsets[-1]), dtype=np.int32)
    return TokenizedData(tokens, offsets, np.maximum(1, lengths // 5))


def _step(params, optimizer, loss_fn, batches, autocast) -> None:
    for batch in batches:
        with autocast:
            loss = loss_fn(batch)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _measure(name: str, model, loss_fn, steps_batches, device, autocast, tokens_per_step, flops_per_step) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda" or None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i, batches in enumerate(steps_batches):
        start = time.perf_counter()
        _step(params, optimizer, loss_fn, batches, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first steps warm up allocator, kernels and optimizer state
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = peak_tflops() if device.type == "cuda" else None
    return {
        "name": name,
        "median_step_s": seconds,
        "tokens_per_s": tokens_per_step / seconds,
        "mfu": mfu(flops_per_step, seconds, peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def _measure_ours(preset, data, docs, device, autocast, tokens_per_step) -> tuple[dict, float, dict]:
    torch.manual_seed(0)
    model = from_config(preset, device=device)
    flops = statistics.median(model.flops_per_token(data.lengths[b]) * int(data.lengths[b].sum()) for b in docs)
    module = LossModule(model)
    packed = [[build_micro_batch(data, b).to(device)] for b in docs]

    def loss(batch):
        total = module(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels)
        return total / max(batch.num_targets, 1)

    row = _measure(
        "mathforge (packed, varlen, fused linear CE)", model, loss, packed, device, autocast, tokens_per_step, flops
    )
    return row, flops, model.config.to_hf_dict(torch.float32)


def run(preset: str, tokens: int, steps: int, device: torch.device) -> dict:
    data = workload(
        n_docs=max(64, steps * tokens // 250),
        vocab=from_config(preset, device="meta").config.vocab_size,
        max_len=tokens,
    )
    bins = plan_micro_batches(data, tokens)[:steps]
    docs = list(bins)
    real_tokens = [int(data.lengths[b].sum()) for b in docs]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    row, flops, hf_config = _measure_ours(preset, data, docs, device, autocast, statistics.median(real_tokens))
    rows = [row]
    if device.type == "cuda":
        torch.cuda.empty_cache()

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**hf_config)
    torch.manual_seed(0)
    baseline = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    padded = []
    for b in docs:
        width = int(data.lengths[b].max())
        ids = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        labels = torch.full((len(b), width), -100, dtype=torch.long)
        for row, d in enumerate(b):
            doc = torch.from_numpy(data.tokens[data.offsets[d] : data.offsets[d + 1]].astype(np.int64))
            ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
            labels[row, data.prompt_lengths[d] : len(doc)] = doc[data.prompt_lengths[d] :]  # HF shifts inside
        padded.append([(ids.to(device), mask.to(device), labels.to(device))])

    def baseline_loss(batch):
        ids, mask, labels = batch
        return baseline(input_ids=ids, attention_mask=mask, labels=labels).loss

    rows.append(
        _measure(
            "transformers (padded, SDPA, torch CE)",
            baseline,
            baseline_loss,
            padded,
            device,
            autocast,
            statistics.median(real_tokens),
            flops,
        )
    )
    padded_tokens = [sum(t[0].numel() for t in step) for step in padded]
    rows[-1]["padding_share"] = 1 - sum(real_tokens) / sum(padded_tokens)
    base = rows[-1]
    rows[0]["speedup_vs_transformers"] = rows[0]["tokens_per_s"] / base["tokens_per_s"]
    if base["peak_memory_gib"]:
        rows[0]["memory_vs_transformers"] = rows[0]["peak_memory_gib"] / base["peak_memory_gib"]
    return {
        "benchmark": "train",
        "environment": environment("transformers"),
        "workload": {
            "preset": preset,
            "micro_batch_tokens": tokens,
            "steps": steps,
            "docs_per_step": statistics.median(len(b) for b in docs),
            "lengths": "lognormal(median=300, sigma=0.7) in [32, 2048]",
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-1.5b")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 6 steps, no result file (checks the code)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset, tokens, steps = ("tiny", 1024, 6) if args.quick else (args.preset, args.tokens, args.steps)
    result = run(preset, tokens, steps, device)
    table = Table(title=f"training step, {preset}, ~{tokens} real tokens per step ({device})")
    for column in ("implementation", "tokens/s", "MFU", "peak GiB", "vs transformers"):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for row in result["rows"]:
        table.add_row(
            row["name"],
            f"{row['tokens_per_s']:,.0f}",
            f"{row['mfu']:.1%}" if row["mfu"] else "-",
            f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] else "-",
            f"{row['speedup_vs_transformers']:.2f}x" if "speedup_vs_transformers" in row else "",
        )
    Console().print(table)
    if not args.quick:
        print(f"wrote {write_result('train', result)}")


if __name__ == "__main__":
    main()
