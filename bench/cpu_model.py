"""CPU model benchmark: our packed forward+backward against transformers' LlamaForCausalLM, idle and busy.

    python -m mathforge.bench.cpu_model [--repeats 15] [--warmup 3] [--quick]

Workload: the demo's model shape (hidden 128, intermediate 384, 4 layers, 4 heads, vocab 300, fp32; see
`mathforge.demo.Recipe`) on 2,048 tokens of documents with lengths uniform in [40, 200] (the last one cut to
fill). Ours: one packed stream with cu_seqlens, the fused linear cross-entropy (sum / predicted tokens).
transformers: `LlamaForCausalLM` (attn_implementation="sdpa") with the same weights (through our
save_pretrained), the same documents right-padded into a [docs, longest] batch with an attention mask, its
own mean loss. Both predict the same tokens; the script checks that both losses agree before timing.

Conditions: idle (torch's default threads, all physical cores), then with one core kept busy by a spinning
process at 2 threads and at 1 thread; and what `mathforge.hardware.configure_threads`' rule picks for the
load it sees. In each condition the two models alternate step by step (the order flips every repeat) after
a warm-up; we report medians. Machine load (other users) is recorded before each condition. Results go to
bench/results/cpu/cpu_model.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.hardware import busy_cpus, choose_threads, physical_cores
from mathforge.model import Transformer, from_config, shift_labels

DEMO_MODEL = {
    "preset": "tiny",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 300,
}


def document_lengths(total: int, low: int, high: int, seed: int) -> list[int]:
    """Lengths uniform in [low, high] filling exactly `total` tokens (the last one cut)."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(int(rng.integers(low, high + 1)), total - sum(lengths)))
    return lengths


def workload(lengths: list[int], vocab: int, seed: int) -> dict:
    """The packed stream (ours) and the same documents right-padded into a batch (transformers')."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=gen)
    cu = torch.tensor(np.concatenate(([0], np.cumsum(lengths))), dtype=torch.int32)
    labels = shift_labels(ids, cu)
    width = max(lengths)
    padded = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, (start, n) in enumerate(zip(cu[:-1].tolist(), lengths)):
        padded[row, :n] = ids[start : start + n]
        mask[row, :n] = 1
    return {
        "ids": ids,
        "cu": cu,
        "max_seqlen": width,
        "labels": labels,
        "targets": int((labels != -100).sum()),
        "padded": padded,
        "mask": mask,
        "padded_labels": padded.masked_fill(mask == 0, -100),  # transformers shifts them itself
    }


def transformers_twin(model: Transformer) -> torch.nn.Module:
    """transformers' LlamaForCausalLM with our model's config and weights (sdpa attention, fp32)."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")


def steps(model: Transformer, hf: torch.nn.Module, work: dict) -> dict[str, Callable[[], float]]:
    """One forward+backward each, returning the loss (mean over predicted tokens)."""

    def ours() -> float:
        hidden = model(work["ids"], cu_seqlens=work["cu"], max_seqlen=work["max_seqlen"])
        loss = model.loss(hidden, work["labels"], reduction="sum") / work["targets"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    def theirs() -> float:
        loss = hf(input_ids=work["padded"], attention_mask=work["mask"], labels=work["padded_labels"]).loss
        loss.backward()
        hf.zero_grad(set_to_none=True)
        return float(loss.detach())

    return {"mathforge": ours, "transformers": theirs}


def interleaved_ms(fns: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, alternating between them (order flipped every repeat)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A process spinning on one core for the duration (what another user's job does to ours)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def condition(name: str, fns: dict, threads: int, busy: bool, repeats: int, warmup: int, tokens: int) -> dict:
    torch.set_num_threads(threads)
    with busy_core() if busy else contextlib.nullcontext():
        other = busy_cpus(0.5)  # before timing: what other work occupies (the spinner included)
        times = interleaved_ms(fns, repeats, warmup)
    row = {
        "condition": name,
        "threads": threads,
        "busy_core": busy,
        "other_busy_cpus": round(other, 2),
        "rule_picks_threads": choose_threads(physical_cores(), other),
    }
    for model, ms in times.items():
        med = statistics.median(ms)
        row[model] = {
            "ms": [round(t, 2) for t in ms],
            "median_ms": round(med, 2),
            "tokens_per_s": round(tokens / med * 1e3),
        }
    row["ratio_ours_over_transformers"] = round(row["mathforge"]["median_ms"] / row["transformers"]["median_ms"], 3)
    return row


def run(repeats: int, warmup: int) -> dict:
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = from_config(DEMO_MODEL)
    hf = transformers_twin(model)
    lengths = document_lengths(2048, 40, 200, seed=0)
    work = workload(lengths, model.config.vocab_size, seed=0)
    fns = steps(model, hf, work)
    losses = {name: fn() for name, fn in fns.items()}
    if abs(losses["mathforge"] - losses["transformers"]) > 1e-4 * abs(losses["transformers"]):
        raise SystemExit(f"the two models disagree before timing: {losses}")
    cores = physical_cores()
    plan = [("idle", default_threads, False), ("busy core, 2 threads", cores, True), ("busy core, 1 thread", 1, True)]
    rows = [condition(n, fns, t, b, repeats, warmup, sum(lengths)) for n, t, b in plan]
    torch.set_num_threads(default_threads)
    return {
        "environment": environment("transformers"),
        "workload": {
            "model": DEMO_MODEL,
            "parameters": model.num_parameters(),
            "tokens": sum(lengths),
            "documents": len(lengths),
            "lengths": lengths,
            "padded_batch": list(work["padded"].shape),
            "dtype": "float32",
            "loss": losses,
        },
        "physical_cores": cores,
        "repeats": repeats,
        "warmup": warmup,
        "load_average_at_start": os.getloadavg(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 repeats, 1 warm-up (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 5, 1
    result = run(args.repeats, args.warmup)
    table = Table(title=f"forward+backward, {result['workload']['tokens']} tokens (median ms)")
    for column in ("condition", "threads", "other busy CPUs", "mathforge", "transformers", "ours / theirs"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(
            row["condition"],
            str(row["threads"]),
            str(row["other_busy_cpus"]),
            f"{row['mathforge']['median_ms']:.1f}",
            f"{row['transformers']['median_ms']:.1f}",
            f"{row['ratio_ours_over_transformers']:.2f}",
        )
    Console().print(table)
    print(write_result("cpu_model", result))


if __name__ == "__main__":
    main()
