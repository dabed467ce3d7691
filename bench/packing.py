"""Packing benchmark: mathforge's compiled best-fit-decreasing vs TRL's BFD packer, same lengths, one core.

    python -m mathforge.bench.packing [--items 6000000] [--max-tokens 4096] [--quick]

Lengths follow a realistic SFT mix: lognormal with median 350 tokens (sigma 0.9), clipped to
[16, 4096]. Rows measured:
- ``mathforge.pack``: bin assignment, returning each bin's item indices;
- ``trl._pack_bfd``: TRL's best-fit-decreasing packer (what `trl.pack_dataset(strategy="bfd")` runs)
  on a pyarrow table whose token column has those lengths but null-typed values, so TRL is timed on
  its packing logic rather than on copying token data (the setting most favourable to TRL, and
  6M real token lists would not fit this machine's memory next to it).
The process is pinned to one core. Results go to bench/results/<device>/packing.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.trainer.packing import fill_ratio, pack


def sft_lengths(n: int, seed: int = 0, median: float = 350.0, sigma: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 16, 4096).astype(np.int64)


def _time(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def _token_table(lengths: np.ndarray):
    """A one-column pyarrow table of token lists with these lengths and null (zero-byte) values."""
    import pyarrow as pa

    offsets = np.concatenate(([0], np.cumsum(lengths)))
    values = pa.nulls(int(offsets[-1]))
    return pa.Table.from_arrays([pa.LargeListArray.from_arrays(pa.array(offsets), values)], names=["input_ids"])


def _row(name: str, items: int, times: list[float], bins: int, fill: float) -> dict:
    return {
        "name": name,
        "items": items,
        "seconds": times,
        "median_s": statistics.median(times),
        "bins": bins,
        "fill": fill,
    }


def run(items: int, peer_items: int, max_tokens: int, repeats: int, peers: bool) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    lengths = sft_lengths(items)
    rows = []
    for n in dict.fromkeys([items, min(peer_items, items)] if peers else [items]):
        subset = lengths[:n]
        times, bins = _time(lambda subset=subset: pack(subset, max_tokens), repeats)
        rows.append(_row("mathforge.pack", n, times, len(bins), fill_ratio(bins, subset, max_tokens)))

    if peers:
        try:
            from trl.data_utils import _pack_bfd
        except ImportError:
            rows.append({"name": "trl._pack_bfd", "skipped": "trl is not installed"})
        else:
            subset = lengths[:peer_items]
            table = _token_table(subset)
            times, packed = _time(lambda: _pack_bfd(table, max_tokens), 1)
            packed_tokens = int(np.asarray(packed.column("seq_lengths").combine_chunks().flatten()).sum())
            rows.append(
                _row(
                    "trl._pack_bfd", len(subset), times, packed.num_rows, packed_tokens / (packed.num_rows * max_tokens)
                )
            )
            ours = next(r for r in rows if r["name"] == "mathforge.pack" and r["items"] == len(subset))
            rows[-1]["slowdown_vs_mathforge_pack"] = rows[-1]["median_s"] / ours["median_s"]
    return {
        "benchmark": "packing",
        "environment": environment("trl", "pyarrow"),
        "workload": {
            "items": items,
            "peer_items": min(peer_items, items),
            "max_tokens": max_tokens,
            "lengths": "lognormal(median=350, sigma=0.9) clipped to [16, 4096], seed 0; peers use the first peer_items",
            "mean_length": float(lengths.mean()),
            "threads": "pinned to one core",
            "repeats": repeats,
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=6_000_000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peer-items",
        type=int,
        default=1_000_000,
        help="items given to TRL (its pyarrow column handling needs ~8 bytes per token of memory)",
    )
    parser.add_argument("--quick", action="store_true", help="200k items, no result file")
    parser.add_argument("--no-peers", action="store_true", help="skip TRL")
    args = parser.parse_args(argv)
    items = 200_000 if args.quick else args.items
    result = run(items, min(args.peer_items, items), args.max_tokens, args.repeats, peers=not args.no_peers)

    table = Table(title=f"packing SFT-like lengths into {args.max_tokens}-token bins (one core)")
    for column in ("packer", "items", "median s", "bins", "fill", "x mathforge.pack"):
        table.add_column(column, justify="right" if column != "packer" else "left")
    for row in result["rows"]:
        if "median_s" in row:
            slowdown = row.get("slowdown_vs_mathforge_pack")
            table.add_row(
                row["name"],
                f"{row['items']:,}",
                f"{row['median_s']:.3f}",
                f"{row['bins']:,}",
                f"{row['fill']:.4%}",
                f"{slowdown:.0f}x" if slowdown else "",
            )
        else:
            table.add_row(row["name"], "", row["skipped"], "", "", "")
    console = Console()
    console.print(table)
    if not args.quick:
        console.print(f"wrote {write_result('packing', result)}")


if __name__ == "__main__":
    main()
