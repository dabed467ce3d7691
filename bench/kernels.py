"""Kernel benchmark suite: `python -m mathforge.bench.kernels [--ops ce flce ...] [--quick]`.

For each op and sweep point it times forward and forward+backward ("full") for every provider that can
run here — ours (`mathforge`, the public API: Triton on CUDA, the torch reference on CPU), `torch` eager,
`torch.compile` of the reference, and, when importable on CUDA, Liger-Kernel and Cut Cross-Entropy —
and derives backward = full − forward. CUDA timing: triton.testing.do_bench (median, p20, p80), peak
memory beyond the inputs, achieved GB/s (memory-bound ops; bytes model in `OPS`) or TFLOP/s (fused linear
CE, 2·N·H·V per matmul: 2 forward, 6 full) against the ceilings measured at the start of the run
(`mathforge.hardware`). CPU: a `--quick` torch-only subset timed with time.perf_counter.
Writes `kernels[_quick].json` + `.csv` and one PNG per op to bench/results/<device>/.

Fused linear CE rows also carry floor_ms = flops / matmul ceiling (6·N·H·V for fwd+bwd) and x_floor =
median / floor. `--flce-chunks 512,2048,...` adds providers "mathforge[chunk=512]", ... (the Triton path
with a fixed chunk), `--flce-logits fp32,input` the chunk-logits dtypes ("mathforge[logits=input]"), so
one run compares the automatic chunk choice ("mathforge", its rows in `chunk_rows`) with the alternatives;
with measured ceilings, each such row also gets the traffic model's prediction (model_ms, model_x_floor;
`mathforge.kernels.fused_linear_cross_entropy.predicted_ms`). `--flce-shapes HxV,...` sets the (H, V)
points (default on CUDA: issue 11's (4096, 128256), (1536, 151936), (3584, 152064)), `--flce-tokens` N
(default 16384 on CUDA, 256 on CPU). On CPU the chunk providers run the Triton path under TRITON_INTERPRET=1
(set here when there is no GPU): use tiny shapes, e.g.
`--quick --ops flce --flce-tokens 32 --flce-shapes 16x100 --flce-chunks 8,16`.
`--ce-launch 16384x32,4096x8` adds cross-entropy providers "mathforge[launch=16384x32]", ...: our Triton CE with
that (BLOCK, num_warps) in place of `ce_launch_params`' choice (a block ≥ V keeps the whole row in registers), to
time the launch candidates of `mathforge.bench.kernel_resources` (compiled there, not run). The training path of
a mean loss makes its only [N, V] launch in the forward, inside the call; the interpreter (CPU) ignores it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the FLCE chunk providers run Triton: on CPU only under its interpreter,
    os.environ.setdefault("TRITON_INTERPRET", "1")  # which must be chosen before the kernels are imported

from mathforge.bench.common import environment, write_result  # noqa: E402
from mathforge.kernels import functional as ours  # noqa: E402
from mathforge.kernels import reference  # noqa: E402
from mathforge.kernels.cross_entropy import cross_entropy_triton  # noqa: E402
from mathforge.kernels.fused_linear_cross_entropy import (  # noqa: E402
    CHUNK_LOGITS,
    chunk_logits_bytes,
    chunk_rows,
    fused_linear_cross_entropy_triton,
    predicted_ms,
)

ce_module = importlib.import_module("mathforge.kernels.cross_entropy")  # the package re-exports a function so named
FLCE_TOKENS = {"cuda": 16384, "cpu": 256}  # N of the fused linear CE points
FLCE_SHAPES_CUDA = ((4096, 128256), (1536, 151936), (3584, 152064))  # (H, V) of issue 11
FLCE_SHAPES_CPU = ((256, 32000),)


@dataclass(frozen=True)
class Case:
    """One sweep point: inputs (leaf tensors needing grad first), providers' loss functions, work model."""

    op: str
    shape: dict[str, int]
    dtype: str
    make: Callable[[], dict[str, Any]]  # -> {"grad_inputs": [...], "providers": {name: fn()}}
    bytes_fwd: float
    bytes_full: float
    flops_fwd: float = 0.0
    flops_full: float = 0.0


def _liger():
    try:
        import liger_kernel.transformers.functional as lf

        return lf
    except Exception:  # optional peer: any import failure means "not measured"
        return None


def _cce():
    try:
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy
    except Exception:
        return None


def _providers(base: dict[str, Callable], peers: dict[str, Callable], device: str, quick: bool) -> dict:
    """ours + torch eager, plus torch.compile and the peers where they make sense."""
    out = dict(base)
    if device == "cuda" or not quick:
        out["torch.compile"] = torch.compile(base["torch"], dynamic=False)
    if device == "cuda":
        out.update({name: fn for name, fn in peers.items() if fn is not None})
    return out


def _scalar(out) -> torch.Tensor:
    if isinstance(out, tuple):
        return sum(o.float().sum() for o in out)
    return out.float().sum()


def full_step(fn: Callable[[], Any], grad_inputs: list[torch.Tensor]) -> None:
    """One forward + backward of a provider: clears the inputs' gradients, runs fn, backpropagates the sum of
    its outputs (what "full" mode times here and what `bench/benchmarks` times with pytest-benchmark)."""
    for t in grad_inputs:
        t.grad = None
    _scalar(fn()).backward()


def case_id(case: Case) -> str:
    """A short, stable name for a sweep point, e.g. "cross_entropy[tokens=512,vocab=32000,float32]"."""
    return f"{case.op}[{shape_key(case.shape)},{case.dtype}]"


@contextlib.contextmanager
def ce_launch(block: int, warps: int):
    """Within: every `_ce_kernel` launch on a GPU uses (block, warps) instead of `ce_launch_params`' choice."""
    chosen = ce_module.ce_launch_params
    ce_module.ce_launch_params = lambda n_cols: (block, warps)
    try:
        yield
    finally:
        ce_module.ce_launch_params = chosen


def ce_launch_variants(
    logits: torch.Tensor, target: torch.Tensor, launches: tuple[tuple[int, int], ...]
) -> dict[str, Callable]:
    """Providers "mathforge[launch=BLOCKxWARPS]": our Triton CE with each (BLOCK, num_warps) of `launches`."""

    def run(block: int, warps: int) -> torch.Tensor:
        with ce_launch(block, warps):
            return cross_entropy_triton(logits, target)

    return {f"mathforge[launch={b}x{w}]": (lambda b=b, w=w: run(b, w)) for b, w in launches}


def cross_entropy_case(
    n: int, v: int, dtype: torch.dtype, device: str, quick: bool, launches: tuple[tuple[int, int], ...] = ()
) -> Case:
    elt = torch.finfo(dtype).bits // 8

    def make():
        logits = torch.randn(n, v, device=device, dtype=dtype).requires_grad_()
        target = torch.randint(0, v, (n,), device=device)
        lf = _liger()
        base = {
            "mathforge": lambda: ours.cross_entropy(logits, target),
            **ce_launch_variants(logits, target, launches),
            "torch": lambda: F.cross_entropy(logits.float(), target),
        }
        # Liger writes its gradient into its input in place (also under no_grad): a copy of its own keeps the
        # other providers' logits intact
        own = logits.detach().clone().requires_grad_() if lf and device == "cuda" else None
        peers = {"liger": (lambda: lf.liger_cross_entropy(own, target)) if own is not None else None}
        inputs = [logits] if own is None else [logits, own]
        return {"grad_inputs": inputs, "providers": _providers(base, peers, device, quick)}

    return Case(
        "cross_entropy",
        {"tokens": n, "vocab": v},
        str(dtype).removeprefix("torch."),
        make,
        bytes_fwd=n * v * elt,
        bytes_full=2 * n * v * elt,
    )


def flce_variant_name(chunk: int, chunk_logits: str) -> str:
    """Provider name of our fused linear CE with a fixed chunk (0: automatic) and chunk-logits dtype:
    "mathforge", "mathforge[chunk=2048]", "mathforge[chunk=2048,logits=input]", "mathforge[logits=input]"."""
    tags = ([f"chunk={chunk}"] if chunk else []) + ([f"logits={chunk_logits}"] if chunk_logits != "fp32" else [])
    return f"mathforge[{','.join(tags)}]" if tags else "mathforge"


def flce_variants(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunks: tuple[int, ...], logits: tuple[str, ...]
) -> tuple[dict[str, Callable], dict[str, dict[str, Any]]]:
    """Our Triton FLCE at each (chunk, chunk_logits) of ({0} ∪ chunks) × logits except the plain automatic one
    (that is "mathforge", the public API), and per provider {"chunk_rows", "chunk_logits"} (chunk_rows of the
    automatic choice: `chunk_rows` with the free memory now)."""
    n, h, v = hidden.shape[0], hidden.shape[1], weight.shape[0]
    fns, info = {}, {}
    for mode in logits:
        for chunk in (0, *chunks):
            name = flce_variant_name(chunk, mode)
            rows = min(chunk, n) or chunk_rows(n, h, v, weight.dtype, hidden.device, mode)
            info[name] = {"chunk_rows": rows, "chunk_logits": mode}
            if name != "mathforge":
                fns[name] = lambda c=chunk, m=mode: fused_linear_cross_entropy_triton(
                    hidden, weight, target, chunk=c, chunk_logits=m
                )
    if hidden.device.type != "cuda":  # "mathforge" is the torch reference on CPU: no chunks
        info.pop("mathforge", None)
    return fns, info


def fused_linear_cross_entropy_case(
    n: int,
    h: int,
    v: int,
    dtype: torch.dtype,
    device: str,
    quick: bool,
    chunks: tuple[int, ...] = (),
    logits: tuple[str, ...] = ("fp32",),
) -> Case:
    """Ours (automatic chunks, plus a provider per fixed chunk / chunk-logits dtype asked for), torch, peers."""

    def make():
        hidden = torch.randn(n, h, device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(v, h, device=device, dtype=dtype) * h**-0.5).requires_grad_()
        target = torch.randint(0, v, (n,), device=device)
        lf, cce = _liger(), _cce()
        variants, info = flce_variants(hidden, weight, target, chunks, logits)
        base = {
            "mathforge": lambda: ours.fused_linear_cross_entropy(hidden, weight, target),
            **variants,
            "torch": lambda: F.cross_entropy((hidden @ weight.T).float(), target),
        }
        peers = {
            "liger": (lambda: lf.liger_fused_linear_cross_entropy(hidden, weight, target)) if lf else None,
            "cce": (lambda: cce(hidden, weight, target)) if cce else None,
        }
        providers = _providers(base, peers, device, quick)
        return {"grad_inputs": [hidden, weight], "providers": providers, "info": info}

    flops = 2.0 * n * h * v
    return Case(
        "fused_linear_cross_entropy",
        {"tokens": n, "hidden": h, "vocab": v},
        str(dtype).removeprefix("torch."),
        make,
        bytes_fwd=0.0,
        bytes_full=0.0,
        flops_fwd=flops,
        flops_full=3 * flops,
    )


def rms_norm_case(n: int, h: int, dtype: torch.dtype, device: str, quick: bool) -> Case:
    elt = torch.finfo(dtype).bits // 8

    def make():
        x = torch.randn(n, h, device=device, dtype=dtype).requires_grad_()
        w = torch.rand(h, device=device, dtype=dtype).requires_grad_()
        lf = _liger()
        base = {
            "mathforge": lambda: ours.rms_norm(x, w),
            "torch": lambda: reference.rms_norm(x, w),
        }
        peers = {"liger": (lambda: lf.liger_rms_norm(x, w, 1e-6)) if lf else None}
        return {"grad_inputs": [x, w], "providers": _providers(base, peers, device, quick)}

    # forward: read x, write y; backward: read x, dy, write dx (weight and rstd are negligible)
    return Case(
        "rms_norm",
        {"tokens": n, "hidden": h},
        str(dtype).removeprefix("torch."),
        make,
        bytes_fwd=2 * n * h * elt,
        bytes_full=5 * n * h * elt,
    )


def swiglu_case(n: int, i: int, dtype: torch.dtype, device: str, quick: bool) -> Case:
    elt = torch.finfo(dtype).bits // 8

    def make():
        gate = torch.randn(n, i, device=device, dtype=dtype).requires_grad_()
        up = torch.randn(n, i, device=device, dtype=dtype).requires_grad_()
        lf = _liger()
        base = {"mathforge": lambda: ours.swiglu(gate, up), "torch": lambda: F.silu(gate) * up}
        peers = {"liger": (lambda: lf.liger_swiglu(gate, up)) if lf else None}
        return {"grad_inputs": [gate, up], "providers": _providers(base, peers, device, quick)}

    # forward: read gate, up, write y; backward: read dy, gate, up, write dgate, dup
    return Case(
        "swiglu",
        {"tokens": n, "intermediate": i},
        str(dtype).removeprefix("torch."),
        make,
        bytes_fwd=3 * n * i * elt,
        bytes_full=8 * n * i * elt,
    )


def rope_case(t: int, hq: int, hk: int, d: int, dtype: torch.dtype, device: str, quick: bool) -> Case:
    elt = torch.finfo(dtype).bits // 8

    def make():
        q = torch.randn(t, hq, d, device=device, dtype=dtype).requires_grad_()
        k = torch.randn(t, hk, d, device=device, dtype=dtype).requires_grad_()
        ang = torch.arange(t, device=device, dtype=torch.float32)[:, None] * torch.rand(d // 2, device=device)
        ang = torch.cat((ang, ang), -1)
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        lf = _liger()
        base = {
            "mathforge": lambda: ours.apply_rope(q, k, cos, sin),
            "torch": lambda: reference.apply_rope(q, k, cos, sin),
        }
        peers = {  # Liger wants [batch, heads, seq, dim]
            "liger": (lambda: lf.liger_rope(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]))
            if lf
            else None,
        }
        return {"grad_inputs": [q, k], "providers": _providers(base, peers, device, quick)}

    # forward: read q, k, write q', k'; backward the same (cos/sin are reused from cache)
    qk = t * (hq + hk) * d * elt
    return Case(
        "apply_rope",
        {"tokens": t, "q_heads": hq, "k_heads": hk, "head_dim": d},
        str(dtype).removeprefix("torch."),
        make,
        bytes_fwd=2 * qk,
        bytes_full=4 * qk,
    )


OPS = {
    "cross_entropy": "ce",
    "fused_linear_cross_entropy": "flce",
    "rms_norm": "rms",
    "swiglu": "swiglu",
    "apply_rope": "rope",
}


@dataclass(frozen=True)
class FlceSweep:
    """The fused linear CE points: (H, V) shapes (None: the device's default) and our variants to time."""

    shapes: tuple[tuple[int, int], ...] | None = None
    chunks: tuple[int, ...] = ()
    logits: tuple[str, ...] = ("fp32",)
    tokens: int | None = None  # N (None: FLCE_TOKENS of the device)

    def cases(self, device: str, quick: bool, dtype: torch.dtype) -> list[Case]:
        default = FLCE_SHAPES_CUDA[:1] if quick else FLCE_SHAPES_CUDA
        shapes = self.shapes or (default if device == "cuda" else FLCE_SHAPES_CPU)
        n = self.tokens or FLCE_TOKENS[device]
        return [
            fused_linear_cross_entropy_case(n, h, v, dtype, device, quick, self.chunks, self.logits) for h, v in shapes
        ]


def sweep(
    device: str, quick: bool, flce_sweep: FlceSweep | None = None, ce_launches: tuple[tuple[int, int], ...] = ()
) -> list[Case]:
    """The sweep points: real LLM sizes on CUDA (a subset with --quick), small shapes on CPU."""
    flce_sweep = flce_sweep or FlceSweep()
    if device != "cuda":
        f32 = torch.float32
        return [
            cross_entropy_case(512, 32000, f32, device, quick, ce_launches),
            *flce_sweep.cases(device, quick, f32),
            rms_norm_case(4096, 1024, f32, device, quick),
            swiglu_case(2048, 2816, f32, device, quick),
            rope_case(1024, 8, 2, 64, f32, device, quick),
        ]
    bf16, n = torch.bfloat16, 16384
    vocabs = (32000, 128256) if quick else (32000, 128256, 151936)
    cases = [cross_entropy_case(n, v, bf16, device, quick, ce_launches) for v in vocabs]
    cases += flce_sweep.cases(device, quick, bf16)
    cases += [rms_norm_case(n, h, bf16, device, quick) for h in ((4096,) if quick else (2048, 4096, 8192))]
    cases += [swiglu_case(n, i, bf16, device, quick) for i in ((14336,) if quick else (4096, 11008, 14336))]
    rope_heads = ((32, 8),) if quick else ((32, 8), (28, 4))
    cases += [rope_case(n, hq, hk, 128, bf16, device, quick) for hq, hk in rope_heads]
    return cases


def _time_ms(fn: Callable[[], Any], device: str, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) in milliseconds."""
    if device == "cuda":
        import triton.testing

        med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], rep=200 if quick else 500)
        return med, p20, p80
    fn()  # warm-up
    times = []
    for _ in range(5 if quick else 15):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _peak_mib(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory above what was allocated before one call (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(
    case: Case, device: str, quick: bool, ceilings: dict[str, float], providers: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Times every provider of one case (those matching a `providers` pattern, fnmatch-style, when given) in
    forward and full mode; backward = full − forward."""
    made = case.make()
    rows = []
    for provider, fn in made["providers"].items():
        if providers and not any(fnmatch.fnmatchcase(provider, pattern) for pattern in providers):
            continue

        def forward(fn=fn):
            with torch.no_grad():
                return fn()

        def full(fn=fn, inputs=made["grad_inputs"]):
            full_step(fn, inputs)

        try:
            fwd, both = _time_ms(forward, device, quick), _time_ms(full, device, quick)
            peak = _peak_mib(full, device)
        except Exception as error:  # a peer failing on a shape is reported, not fatal
            rows.append(
                {
                    "op": case.op,
                    "provider": provider,
                    "shape": case.shape,
                    "dtype": case.dtype,
                    "mode": "full",
                    "error": f"{type(error).__name__}: {error}"[:200],
                }
            )
            continue
        for mode, (med, p20, p80) in (
            ("forward", fwd),
            ("full", both),
            ("backward", tuple(b - f for b, f in zip(both, fwd))),
        ):
            row = {
                "op": case.op,
                "provider": provider,
                "shape": case.shape,
                "dtype": case.dtype,
                "mode": mode,
                "median_ms": med,
                "p20_ms": p20,
                "p80_ms": p80,
                "peak_mib": peak if mode == "full" else None,
                **made.get("info", {}).get(provider, {}),
            }
            rows.append(_add_rates(row, case, ceilings))
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _add_rates(row: dict[str, Any], case: Case, ceilings: dict[str, float]) -> dict[str, Any]:
    """Adds achieved GB/s or TFLOP/s (and % of the measured ceiling) to a timed row; for ops with a flops
    model also floor_ms (the flops at the matmul ceiling) and x_floor = median / floor."""
    mode, med = row["mode"], row["median_ms"]
    work_bytes = {"forward": case.bytes_fwd, "full": case.bytes_full}.get(mode, case.bytes_full - case.bytes_fwd)
    flops = {"forward": case.flops_fwd, "full": case.flops_full}.get(mode, case.flops_full - case.flops_fwd)
    if work_bytes and med > 0:
        row["gbs"] = work_bytes / (med * 1e-3) / 1e9
        if "copy_gbs" in ceilings:
            row["pct_of_ceiling"] = 100 * row["gbs"] / ceilings["copy_gbs"]
    if flops and med > 0:
        row["tflops"] = flops / (med * 1e-3) / 1e12
        if "matmul_tflops" in ceilings:
            row["pct_of_ceiling"] = 100 * row["tflops"] / ceilings["matmul_tflops"]
            row["floor_ms"] = flops / (ceilings["matmul_tflops"] * 1e12) * 1e3
            row["x_floor"] = med / row["floor_ms"]
    return row


def add_flce_model(rows: list[dict[str, Any]], ceilings: dict[str, float]) -> None:
    """With measured ceilings, adds the traffic model's fwd+bwd prediction (model_ms, model_x_floor) to the
    "full" rows of our FLCE variants (those with chunk_rows), so a run shows model next to measurement."""
    if not {"matmul_tflops", "copy_gbs"} <= ceilings.keys():
        return
    for row in rows:
        if row.get("mode") != "full" or "chunk_rows" not in row:
            continue
        shape = row["shape"]
        bytes_ = chunk_logits_bytes(getattr(torch, row["dtype"]), row["chunk_logits"])
        model = predicted_ms(
            shape["tokens"],
            shape["hidden"],
            shape["vocab"],
            row["chunk_rows"],
            matmul_flops=ceilings["matmul_tflops"] * 1e12,
            copy_bytes_per_s=ceilings["copy_gbs"] * 1e9,
            logits_bytes=bytes_,
        )
        row["model_ms"], row["model_x_floor"] = model["total_ms"], model["x_floor"]


def shape_key(shape: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = [
        "op",
        "mode",
        "provider",
        "shape",
        "dtype",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "peak_mib",
        "gbs",
        "tflops",
        "pct_of_ceiling",
        "floor_ms",
        "x_floor",
        "chunk_rows",
        "chunk_logits",
        "model_ms",
        "model_x_floor",
        "error",
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row.get(k) for k in fields}, "shape": shape_key(row["shape"])})


def plot_op(op: str, rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: median full (fwd+bwd) time per sweep point and provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["op"] == op and r["mode"] == "full" and "median_ms" in r]
    points = list(dict.fromkeys(shape_key(r["shape"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.6 * len(points)), 4))
    width = 0.8 / max(len(providers), 1)
    for i, provider in enumerate(providers):
        times = {shape_key(r["shape"]): r["median_ms"] for r in rows if r["provider"] == provider}
        ax.bar([j + i * width for j in range(len(points))], [times.get(p, 0.0) for p in points], width, label=provider)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(points))], points, rotation=15, fontsize=7)
    ax.set_ylabel("forward + backward, median ms")
    ax.set_title(op)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_ceilings(device: str) -> dict[str, float]:
    if device != "cuda":
        return {}
    from mathforge.hardware import copy_bandwidth_gbs, matmul_tflops

    return {"copy_gbs": copy_bandwidth_gbs(), "matmul_tflops": matmul_tflops()}


def _int_list(text: str) -> tuple[int, ...]:
    """ "512,2048" → (512, 2048); each a positive integer."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"chunk sizes must be >= 1, got {text!r}")
    return values


def _logits_list(text: str) -> tuple[str, ...]:
    values = tuple(text.split(","))
    unknown = [value for value in values if value not in CHUNK_LOGITS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown chunk-logits {unknown} in {text!r}; known: {CHUNK_LOGITS}")
    return values


def _pairs(text: str, form: str) -> tuple[tuple[int, ...], ...]:
    """ "4096x128256,1536x151936" → ((4096, 128256), (1536, 151936)); each part two integers joined by "x"."""
    try:
        pairs = tuple(tuple(int(x) for x in part.split("x")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {form},... with integers, got {text!r}") from None
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected {form},... (two integers joined by x), got {text!r}")
    return pairs


def _shape_list(text: str) -> tuple[tuple[int, int], ...]:
    """ "4096x128256,1536x151936" → ((4096, 128256), (1536, 151936)): (H, V) points, both positive."""
    shapes = _pairs(text, "HxV")
    if any(min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f"expected HxV,... with positive H and V, got {text!r}")
    return shapes


def _launch_list(text: str) -> tuple[tuple[int, int], ...]:
    """ "16384x32,4096x8" → ((16384, 32), (4096, 8)); BLOCK a power of two ≥ 128, warps one of 1, 2, ..., 32."""
    launches = _pairs(text, "BLOCKxWARPS")
    for block, warps in launches:
        if not (block >= 128 and block & (block - 1) == 0 and warps in (1, 2, 4, 8, 16, 32)):
            raise argparse.ArgumentTypeError(
                f"bad launch '{block}x{warps}' in {text!r}: BLOCK a power of two >= 128, warps one of 1, 2, 4, 8, 16, 32"
            )
    return launches


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mathforge.bench.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", choices=sorted(set(OPS) | set(OPS.values())), help="ops (default: all)")
    parser.add_argument("--quick", action="store_true", help="a small subset (and torch-only on CPU)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<device>)")
    parser.add_argument(
        "--flce-chunks",
        type=_int_list,
        default=(),
        help="fused linear CE: also time our op at these fixed rows per chunk, e.g. 512,2048,4096",
    )
    parser.add_argument(
        "--flce-logits",
        type=_logits_list,
        default=("fp32",),
        help=f"fused linear CE chunk-logits dtypes to time, from {','.join(CHUNK_LOGITS)} (default fp32)",
    )
    parser.add_argument(
        "--flce-tokens", type=int, default=None, help="fused linear CE tokens N (default 16384 on CUDA, 256 on CPU)"
    )
    parser.add_argument(
        "--flce-shapes",
        type=_shape_list,
        default=None,
        help="fused linear CE (H, V) points as HxV,... (default on CUDA: 4096x128256,1536x151936,3584x152064)",
    )
    parser.add_argument(
        "--ce-launch",
        type=_launch_list,
        default=(),
        help="cross-entropy: also time our Triton CE at these BLOCKxWARPS launches, e.g. 16384x32,4096x8 (GPU)",
    )
    parser.add_argument("--name", default=None, help="results file name (default kernels, or kernels_quick)")
    parser.add_argument(
        "--providers", nargs="+", default=None, help="only these providers, fnmatch patterns (e.g. 'mathforge*' liger)"
    )
    return parser


def main(argv: list[str] | None = None) -> Path:
    parser = _parser()
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.quick:
        parser.error("on CPU only --quick is supported (the Triton kernels need a GPU)")
    wanted = {op for op, short in OPS.items() if not args.ops or op in args.ops or short in args.ops}
    torch.manual_seed(0)
    ceilings = measure_ceilings(device)
    rows: list[dict[str, Any]] = []
    if args.flce_tokens is not None and args.flce_tokens < 1:
        parser.error(f"--flce-tokens must be >= 1, got {args.flce_tokens}")
    flce_sweep = FlceSweep(args.flce_shapes, args.flce_chunks, args.flce_logits, args.flce_tokens)
    cases = [c for c in sweep(device, args.quick, flce_sweep, args.ce_launch) if c.op in wanted]
    name = args.name or ("kernels_quick" if args.quick else "kernels")
    payload = {
        "environment": environment("liger-kernel", "cut-cross-entropy"),
        "quick": args.quick,
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "ceilings": ceilings,
        "rows": rows,
        "complete": False,
    }
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.op} {shape_key(case.shape)} {case.dtype}", flush=True)
        rows += run_case(case, device, args.quick, ceilings, tuple(args.providers or ()))
        add_flce_model(rows, ceilings)
        path = write_result(name, payload, args.out)  # after every case: a run cut short keeps what it measured
    payload["complete"] = True
    path = write_result(name, payload, args.out)
    write_csv(rows, path.with_suffix(".csv"))
    for op in sorted({r["op"] for r in rows}):
        plot_op(op, rows, path.parent / f"{name}_{op}.png")
    _print_summary(rows)
    print(f"wrote {path} (+ .csv, PNGs)")
    return path


def _print_summary(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape  # provider names like "mathforge[chunk=2048]" are not markup
    from rich.table import Table

    table = Table(title="kernels: forward + backward")
    columns = ("op", "shape", "provider", "median ms", "p20–p80", "peak MiB", "GB/s | TFLOP/s", "% ceiling", "× floor")
    for col in columns:
        table.add_column(col)
    for r in rows:
        if r["mode"] != "full":
            continue
        if "error" in r:
            cells = (r["op"], shape_key(r["shape"]), escape(r["provider"]), "error", escape(r["error"][:40]))
            table.add_row(*cells, "", "", "", "")
            continue
        rate = f"{r['gbs']:.0f} GB/s" if "gbs" in r else f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else ""
        table.add_row(
            r["op"],
            shape_key(r["shape"]),
            escape(r["provider"]),
            f"{r['median_ms']:.3f}",
            f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}",
            "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
            rate,
            f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "",
            f"{r['x_floor']:.2f}" if "x_floor" in r else "",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
