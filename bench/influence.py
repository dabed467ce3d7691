"""Influence-feature throughput: examples per second of `mathforge.synth.influence.Featurizer` (one forward and
one backward per batch, per-example gradients of the parameter subset, the sparse projection to `dim`).

    python -m mathforge.bench.influence [--quick] [--presets tiny qwen2.5-0.5b]

Random weights and random token ids (throughput does not depend on the text); each case is timed after one
warm-up batch, and the share of the time spent in the projection is measured separately on the same
per-example gradients. Results go to bench/results/<device>/influence.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.model import from_config
from mathforge.synth import influence as inf
from mathforge.synth.influence_config import Gradients


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_case(preset: str, params: str, tokens: int, batch: int, dim: int, repeats: int, device, dtype) -> dict:
    torch.manual_seed(0)
    model = from_config(preset, dtype=dtype, device=device)
    model.eval()
    subset = inf.PARAM_SUBSETS.get(params)(model, Gradients(params=params, last_blocks=2), 0)
    projection = inf.SparseProjection(dim, 4, seed=0)
    featurizer = inf.Featurizer(model, subset, projection)
    g = torch.Generator().manual_seed(1)
    examples = [
        inf.Example(torch.randint(model.config.vocab_size, (tokens,), generator=g).tolist(), 0) for _ in range(batch)
    ]
    data = inf.collate(examples, device)
    featurizer.features(data)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        featurizer.features(data)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    grads = list(inf.per_example_grads(model, subset, data))
    _sync(device)
    start = time.perf_counter()
    projection.project(iter(grads), batch, device)
    _sync(device)
    project_s = time.perf_counter() - start
    return {
        "preset": preset,
        "params": params,
        "subset_numel": featurizer.numel,
        "tokens_per_example": tokens,
        "batch": batch,
        "dim": dim,
        "dtype": str(dtype).removeprefix("torch."),
        "seconds_per_batch": round(seconds, 4),
        "examples_per_s": round(batch / seconds, 2),
        "projection_share": round(project_s / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, fewer repeats")
    parser.add_argument("--presets", nargs="*", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    presets = args.presets or (["tiny"] if args.quick else ["tiny", "qwen2.5-0.5b"])
    rows = []
    for preset in presets:
        big = preset != "tiny"
        tokens, batch = (512, 16) if gpu else ((128, 4) if big else (128, 16))
        repeats = 1 if (big and not gpu) or args.quick else 5
        for params in ("lora", "last_blocks"):
            rows.append(bench_case(preset, params, tokens, batch, 8192, repeats, device, dtype))
            print(rows[-1], flush=True)
    table = Table(title=f"influence features on {environment()['device']}")
    for col in (
        "preset",
        "params",
        "subset_numel",
        "tokens_per_example",
        "batch",
        "examples_per_s",
        "projection_share",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            *(
                str(r[c])
                for c in (
                    "preset",
                    "params",
                    "subset_numel",
                    "tokens_per_example",
                    "batch",
                    "examples_per_s",
                    "projection_share",
                )
            )
        )
    Console().print(table)
    path = write_result("influence", {"environment": environment(), "threads": torch.get_num_threads(), "cases": rows})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
