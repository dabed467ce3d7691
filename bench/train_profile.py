"""The profile summary of `mathforge.bench.train --profile`: kernels by self device time, their categories
(matmul, attention, cross-entropy, ...), the costs outside matmuls and attention, and the host syncs."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import torch
from rich.console import Console

CATEGORIES = {  # the first category whose pattern matches a kernel (or op) name, lower-cased
    "attention": r"attn|attention|fmha|flash|flex",
    "matmul": r"gemm|nvjet|xmma|cutlass|matmul|aten::mm\b|aten::addmm|aten::bmm|aten::linear|splitk|wgmma|cublas",
    "cross-entropy": r"cross_entropy|_ce_|logsumexp|log_softmax|nll_loss",
    "optimizer/grad-clip": r"adam|multi_tensor|foreach|lpnorm",
    "norm/activation": r"rms|norm|swiglu|silu|gelu|rope|rotary",
    "memcpy/other": r"memcpy|memset",
    "elementwise": r"elementwise|vectorized|reduce|triton_|add|sub|mul|div|neg|pow|sqrt|exp|sin|cos|sum|copy|fill|"
    r"where|cat|index|scatter|gather|clamp",
}


SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def category(name: str) -> str:
    """The kernel's category (CATEGORIES), "memcpy/other" when none matches."""
    lowered = name.lower()
    return next((c for c, pattern in CATEGORIES.items() if re.search(pattern, lowered)), "memcpy/other")


def summarise_profile(events, on_cuda: bool, top: int = 25) -> dict:
    """Top `top` kernels by self device time (CPU: ops by self CPU time), their categories and shares, the time
    per category, and the host-sync runtime calls seen."""
    if on_cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        timed = [(e.key, e.self_device_time_total, e.count) for e in kernels]
    else:
        timed = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    total = sum(t for _, t, _ in timed) or 1.0
    timed.sort(key=lambda x: -x[1])
    per_category: dict[str, float] = {}
    for name, t, _ in timed:
        per_category[category(name)] = per_category.get(category(name), 0.0) + t / 1e3
    return {
        "time_base": "self device time of CUDA kernels" if on_cuda else "self CPU time of ops",
        "total_ms": total / 1e3,
        "top": [
            {"name": n[:160], "category": category(n), "ms": t / 1e3, "share": t / total, "calls": c}
            for n, t, c in timed[:top]
        ],
        "ms_per_category": dict(sorted(per_category.items(), key=lambda kv: -kv[1])),
        "sync_calls": {e.key: e.count for e in events if e.key in SYNC_EVENTS},  # incl. the one ending the step
    }


def count_sync_warnings(step: Callable[[], None]) -> int:
    """Host syncs `torch.cuda.set_sync_debug_mode("warn")` reports on the Python thread during `step()` (the
    backward's own thread is not seen here; the profile's sync_calls count every thread)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def outside_matmul_attention(summary: dict, top: int = 10) -> list[dict]:
    return [k for k in summary["top"] if k["category"] not in ("matmul", "attention")][:top]


def print_profile(summary: dict, console: Console) -> None:
    console.print(
        f"profile of one mathforge step ({summary['precision']}, {summary['time_base']}): "
        f"{summary['total_ms']:.1f} ms; per category (ms): "
        + ", ".join(f"{c} {ms:.1f}" for c, ms in summary["ms_per_category"].items())
    )
    for kernel in outside_matmul_attention(summary):
        console.print(
            f"  {kernel['share']:6.1%}  {kernel['category']:<16} {kernel['calls']:>5}×  {kernel['name'][:90]}"
        )
    syncs = summary.get("sync_debug_warnings", "n/a (CPU)")
    calls = summary["sync_calls"] or "none"
    console.print(
        f"  host syncs: runtime sync calls {calls} (one cudaDeviceSynchronize ends the profiled step), "
        f"sync-debug warnings {syncs}"
    )
