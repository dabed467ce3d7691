"""Model benchmark (CUDA): forward+backward time, tokens/s, MFU and peak memory per attention backend, plus
bf16 parity of the logits against transformers.

    python -m mathforge.bench.model [--preset qwen2.5-1.5b] [--rows 16] [--seq-len 4096] [--iters 10] [--quick]

Workload: one packed micro-batch of rows × seq-len tokens (default 16 × 4096 = 65,536), documents with
SFT-like lengths (lognormal, median 350, clipped to [16, seq-len]) packed into each row, the last one cut
to fill it; labels from `shift_labels`; loss through the fused linear cross-entropy (sum). Weights bf16.
Rows: every attention backend usable here × activation checkpointing off/on, and each backend with every
block under `torch.compile(fullgraph=True)` (a graph break fails that row and is recorded). MFU divides
`Transformer.flops_per_token` (6·N plus the causal attention term) by the measured bf16 matmul ceiling.
Parity: logits of 4 × 1024 tokens from our bf16 model (each backend) and from transformers' bf16 model,
both compared with transformers in fp32 (same weights, loaded through our save_pretrained).
Results go to bench/results/<device>/model.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import traceback

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.hardware import cuda_times_ms
from mathforge.kernels.attention import usable_backends
from mathforge.model import Transformer, from_config, shift_labels


def packed_workload(rows: int, seq_len: int, vocab: int, seed: int = 0, device: str = "cuda") -> dict:
    """Documents packed into `rows` bins of `seq_len` tokens, flattened into one stream with cu_seqlens."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    for _ in range(rows):
        left = seq_len
        while left > 0:
            n = int(np.clip(round(rng.lognormal(np.log(350.0), 0.9)), 16, seq_len))
            lengths.append(min(n, left))
            left -= lengths[-1]
    total = rows * seq_len
    cu = torch.tensor(np.concatenate(([0], np.cumsum(lengths))), dtype=torch.int32, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, vocab, (total,), device=device, generator=gen)
    prompt = torch.zeros(total, dtype=torch.bool, device=device)
    starts = cu[:-1].long()
    for offset in range(8):  # an 8-token "prompt" at the start of every document
        prompt[(starts + offset).clamp(max=total - 1)] = True
    return {
        "ids": ids,
        "cu": cu,
        "max_seqlen": max(lengths),
        "lengths": lengths,
        "labels": shift_labels(ids, cu, prompt),
    }


def time_row(
    model: Transformer, work: dict, backend: str, checkpointing: bool, compiled: bool, iters: int, warmup: int
) -> dict:
    model.attention_backend = backend
    model.activation_checkpointing = checkpointing
    row = {"backend": backend, "activation_checkpointing": checkpointing, "compiled": compiled}
    originals = list(model.layers)
    if compiled:
        torch._dynamo.reset()
        for i, block in enumerate(originals):
            model.layers[i] = torch.compile(block, fullgraph=True)

    def step():
        hidden = model(work["ids"], cu_seqlens=work["cu"], max_seqlen=work["max_seqlen"])
        model.loss(hidden, work["labels"]).backward()
        model.zero_grad(set_to_none=True)

    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times = cuda_times_ms(step, iters, warmup)
        row |= {
            "ms": times,
            "median_ms": statistics.median(times),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as error:  # a backend or compile failure is a result to record, not a crash
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        row["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
    finally:
        model.zero_grad(set_to_none=True)
        for i, block in enumerate(originals):
            model.layers[i] = block
    return row


@torch.no_grad()
def parity(model: Transformer, backends: list[str], seq: int = 1024, batch: int = 4) -> dict:
    """Max |Δlogit| / max |logit| and mean |Δlogit| of bf16 runs against transformers fp32, same weights."""
    from transformers import AutoModelForCausalLM

    device = model.embed_tokens.weight.device
    gen = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device, generator=gen)

    def compare(logits: torch.Tensor) -> dict[str, float]:
        logits = logits.float()
        return {
            "max_rel_err": float((logits - ref).abs().max() / ref.abs().max()),
            "mean_abs_err": float((logits - ref).abs().mean()),
            "argmax_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        }

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").to(device)
        ref = hf(ids).logits.float()
        del hf
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").to(device)
        out = {"transformers-bf16": compare(hf(ids).logits)}
        del hf
    for backend in backends:
        model.attention_backend = backend
        out[f"mathforge-bf16[{backend}]"] = compare(model.logits(model(ids)))
    return out


def run(preset: str, rows: int, seq_len: int, iters: int, warmup: int, compile_rows: bool) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench/model.py needs a CUDA GPU")
    from mathforge.hardware import matmul_tflops

    torch.manual_seed(0)
    model = from_config(preset, dtype=torch.bfloat16, device="cuda")
    work = packed_workload(rows, seq_len, model.config.vocab_size)
    tokens = rows * seq_len
    flops_per_token = model.flops_per_token(work["lengths"])
    ceiling = matmul_tflops()
    backends = usable_backends("cuda", torch.bfloat16)
    results = []
    configs = [(b, ckpt, False) for b in backends for ckpt in (False, True)]
    configs += [(b, False, True) for b in backends] if compile_rows else []
    for backend, ckpt, compiled in configs:
        row = time_row(model, work, backend, ckpt, compiled, iters, warmup)
        if "median_ms" in row:
            seconds = row["median_ms"] / 1e3
            row["tokens_per_s"] = tokens / seconds
            row["tflops"] = flops_per_token * tokens / seconds / 1e12
            row["mfu"] = row["tflops"] / ceiling
        results.append(row)
        Console().print(row)
    return {
        "benchmark": "model",
        "environment": environment("transformers", "flash-attn", "flash_attn_3"),
        "workload": {
            "preset": preset,
            "parameters": model.num_parameters(),
            "rows": rows,
            "seq_len": seq_len,
            "tokens": tokens,
            "documents": len(work["lengths"]),
            "max_seqlen": work["max_seqlen"],
            "doc_lengths": "lognormal(median=350, sigma=0.9) clipped to [16, seq_len], packed per row, seed 0",
            "dtype": "bfloat16 weights, fp32 loss",
            "flops_per_token": flops_per_token,
            "matmul_ceiling_tflops": ceiling,
            "iters": iters,
            "warmup": warmup,
        },
        "rows": results,
        "parity_vs_transformers_fp32": parity(model, backends),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-1.5b")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--quick", action="store_true", help="2 × 1024 tokens, 2 iterations, no result file")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seq_len, args.iters, args.warmup = 2, 1024, 2, 1
    result = run(args.preset, args.rows, args.seq_len, args.iters, args.warmup, compile_rows=not args.no_compile)

    table = Table(title=f"{args.preset}: forward+backward of {args.rows} × {args.seq_len} packed tokens")
    for column in ("backend", "ckpt", "compile", "ms", "tokens/s", "TFLOP/s", "MFU", "peak GiB"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in result["rows"]:
        flags = [row["backend"], "on" if row["activation_checkpointing"] else "off", "yes" if row["compiled"] else "no"]
        if "median_ms" in row:
            table.add_row(
                *flags,
                f"{row['median_ms']:.1f}",
                f"{row['tokens_per_s']:,.0f}",
                f"{row['tflops']:.1f}",
                f"{row['mfu']:.1%}",
                f"{row['peak_mem_gib']:.1f}",
            )
        else:
            table.add_row(*flags, row["error"][:40], "", "", "", "")
    console = Console()
    console.print(table)
    parity_table = Table(title="logits vs transformers fp32 (4 × 1024 tokens)")
    for column in ("run", "max rel err", "mean |Δ|", "argmax agree"):
        parity_table.add_column(column, justify="left" if column == "run" else "right")
    for name, p in result["parity_vs_transformers_fp32"].items():
        parity_table.add_row(
            name, f"{p['max_rel_err']:.2e}", f"{p['mean_abs_err']:.2e}", f"{p['argmax_agreement']:.4f}"
        )
    console.print(parity_table)
    if not args.quick:
        console.print(f"wrote {write_result('model', result)}")


if __name__ == "__main__":
    main()
