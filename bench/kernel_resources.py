"""Registers, spills and shared memory of mathforge's Triton kernels compiled for a CUDA GPU (Hopper, sm_90, by
default) on a machine without one, the occupancy they imply, and a sweep of block sizes × warps at issue 11's shapes.

    python -m mathforge.bench.kernel_resources [--arch 90] [--only ce_fused,swiglu_fwd] [--out DIR]

How: each launch is the kernel, its arguments (meta tensors of the real shapes and dtypes, and the ints and floats
the host code passes), its constexprs and num_warps. Triton's own launch binder turns them into the signature and
the specialisations a real launch gets (dtypes, 16-divisible pointers and ints, ints equal to 1 as constants);
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` then runs the whole pipeline down to Triton's
bundled ptxas, whose `-v` log (Triton's TRITON_DUMP_PTXAS_LOG) gives registers per thread, the stack frame and the
spill stores/loads; the compiled metadata gives the shared memory. Nothing runs on a GPU ("compiled for sm_90, not
run"): a GPU session still has to time the candidates. Registers depend on the Triton version (its code generation
and bundled ptxas: 16384-wide CE loops take 64 registers with Triton 3.9, 64 + 40 B of spills with 3.6), so the
results file is per version (`result_name`), and the kernels' choices must not spill under any committed one.

Occupancy (`occupancy`): programs (CTAs) per SM as the CUDA occupancy calculator computes it for sm_90 — registers
are allocated per warp in units of 256 (the per-thread count rounded up to a multiple of 8) from 4 sub-partitions of
16384 each, so warps by registers = 4·⌊16384 / regs_per_warp⌋; then the smallest of that / warps per program,
2048 threads / threads per program, 228 KB / (shared + 1 KB reserved per program) and 32 programs per SM.
"Bytes in flight per SM" = programs per SM × the bytes one program loads per step (a block of every input it reads):
what the SM has requested from memory at once when every program is waiting on its loads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mathforge.bench.common import RESULTS_DIR, environment, write_result

# the modules, not the public functions of the same names that mathforge.kernels re-exports
ce = importlib.import_module("mathforge.kernels.cross_entropy")
rms_norm = importlib.import_module("mathforge.kernels.rms_norm")
rope = importlib.import_module("mathforge.kernels.rope")
swiglu = importlib.import_module("mathforge.kernels.swiglu")

ISSUE = "compiled for sm_{arch}, not run"
RESULT_NAME = "kernel_resources"  # + "_triton<major>.<minor>": one file per Triton (registers differ between them)
WARPS = (4, 8, 16, 32)  # num_warps tried for every block
MAX_ELEMENTS_PER_THREAD = 64  # candidates with more are not compiled: they need > 255 registers and spill (and
# ptxas takes up to 90 s on each)


def result_name(triton_version: str | None = None) -> str:
    """Results file name for a Triton version (default the installed one): "kernel_resources_triton3.6"."""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    return f"{RESULT_NAME}_triton{'.'.join(triton_version.split('.')[:2])}"


class ToolchainError(RuntimeError):
    """The installed Triton cannot compile for the CUDA target here (no NVIDIA backend, no ptxas, ...)."""


# ---------------------------------------------------------------------------------------------- occupancy


@dataclass(frozen=True)
class SMLimits:
    """Per-SM resources of a CUDA architecture, as the occupancy calculator uses them."""

    registers: int = 65536
    sub_partitions: int = 4  # the register file is split in 4; a warp's registers come from one
    register_unit: int = 256  # registers are allocated per warp in units of 256 (8 per thread)
    threads: int = 2048
    programs: int = 32
    shared: int = 228 * 1024
    shared_reserved: int = 1024  # the driver reserves 1 KB of shared memory per program (CTA)


SM90 = SMLimits()


def occupancy(registers: int, shared: int, num_warps: int, limits: SMLimits = SM90) -> dict[str, Any]:
    """Programs per SM for a kernel using `registers` per thread and `shared` bytes per program at `num_warps`,
    what limits it, and the resident warps (of 64)."""
    if registers <= 0 or num_warps <= 0 or shared < 0:
        raise ValueError(
            f"occupancy needs registers > 0, num_warps > 0, shared >= 0: got {registers}, {num_warps}, {shared}"
        )
    unit = limits.register_unit
    regs_per_warp = -(-registers * 32 // unit) * unit
    warps_by_registers = limits.sub_partitions * (limits.registers // limits.sub_partitions // regs_per_warp)
    by = {
        "registers": warps_by_registers // num_warps,
        "threads": limits.threads // (32 * num_warps),
        "shared": limits.shared // (shared + limits.shared_reserved),
        "programs": limits.programs,
    }
    limiter = min(by, key=by.get)
    programs = by[limiter]
    return {"programs_per_sm": programs, "limited_by": limiter, "warps_per_sm": programs * num_warps}


# ---------------------------------------------------------------------------------------------- ptxas log

_PTXAS_FIELDS = {
    "registers": r"Used (\d+) registers",
    "stack_frame": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
}


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers per thread, stack frame and spill store/load bytes per thread from a `ptxas -v` log of one kernel."""
    found = {name: re.search(pattern, log) for name, pattern in _PTXAS_FIELDS.items()}
    missing = [name for name, match in found.items() if match is None]
    if missing:
        raise ToolchainError(f"ptxas -v log lacks {missing}; log was:\n{log}")
    return {name: int(match.group(1)) for name, match in found.items()}


# ---------------------------------------------------------------------------------------------- compiling


@dataclass(frozen=True)
class Launch:
    """One launch of one kernel: the arguments in the kernel's order (meta tensors for pointers), constexprs by
    name, num_warps, and the bytes one program loads per step (a block of every input it reads)."""

    kernel: Any
    args: tuple
    constexprs: dict[str, Any]
    num_warps: int
    load_bytes: int
    reread_bytes: int = 0  # bytes per program read a second time (must stay in L2 meanwhile)


def _target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


def check_toolchain(arch: int) -> str:
    """The ptxas Triton would use for sm_`arch` (path and version line); ToolchainError when it cannot compile."""
    try:
        import triton.backends
        from triton.backends.nvidia.compiler import get_ptxas, get_ptxas_version
    except ImportError as exc:
        raise ToolchainError(f"the installed Triton has no NVIDIA backend: {exc}") from exc
    if "nvidia" not in triton.backends.backends:
        raise ToolchainError(
            f"the installed Triton has no NVIDIA backend (backends: {sorted(triton.backends.backends)})"
        )
    try:
        ptxas = get_ptxas(arch).path
        version = get_ptxas_version(arch).strip().splitlines()[-1]
    except (RuntimeError, OSError) as exc:
        raise ToolchainError(f"Triton cannot find or run ptxas for sm_{arch}: {exc}") from exc
    return f"{ptxas} ({version})"


def _specialise(launch: Launch, arch: int) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as Triton's launcher would make them for these arguments."""
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise ToolchainError(
            f"{getattr(kernel, '__name__', kernel)} is not a JITFunction (TRITON_INTERPRET=1 was set when Triton "
            "was imported?): compile in a process without TRITON_INTERPRET"
        )
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.constexprs, num_warps=launch.num_warps)
    # the packing a launch does (private to Triton 3.x: the one place that maps the binder's output to ASTSource's)
    _, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    return signature, constexprs, attrs


_COMPILED: dict[tuple, dict[str, int]] = {}


def compile_launch(launch: Launch, arch: int = 90) -> dict[str, int]:
    """Compiles `launch` for CUDA sm_`arch` (no GPU needed): registers, stack_frame, spill_stores, spill_loads
    (bytes per thread) and shared (bytes per program). Identical specialisations are compiled once."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    signature, constexprs, attrs = _specialise(launch, arch)
    key = (launch.kernel.__name__, arch, launch.num_warps, repr(signature), repr(constexprs), repr(attrs))
    if key not in _COMPILED:
        log = io.StringIO()
        with (
            knobs.nvidia.scope(),
            knobs.compilation.scope(),
            contextlib.redirect_stdout(log),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # Triton 3.9's TRITON_DEFAULT_FP_FUSION notice (default kept: enabled)
            knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas' -v log
            knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and print no log
            source = ASTSource(launch.kernel, signature, constexprs, attrs)
            compiled = triton.compile(source, target=_target(arch), options={"num_warps": launch.num_warps})
        _COMPILED[key] = {**parse_ptxas(log.getvalue()), "shared": int(compiled.metadata.shared)}
    return dict(_COMPILED[key])


# ---------------------------------------------------------------------------------------------- launches

ROWS = 16384  # tokens in every issue-11 shape
BF16 = torch.bfloat16
CE_VOCABS = (32000, 128256, 151936)
CE_SOFTCAP = 30.0  # Gemma-2's final-logit soft-cap


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


@dataclass(frozen=True)
class CEShape:
    """A cross-entropy launch at N = ROWS rows of `vocab` logits of `dtype` (gradient in `grad_dtype`)."""

    vocab: int
    softcap: bool
    dtype: torch.dtype = BF16
    grad_dtype: torch.dtype = BF16

    def label(self) -> str:
        cap = " softcap" if self.softcap else ""
        return f"N={ROWS} V={self.vocab} {str(self.dtype).removeprefix('torch.')}{cap}"


def _ce_launch(shape: CEShape, block: int, warps: int, *, forward: bool, backward: bool, per_row: bool) -> Launch:
    """`_ce_kernel` as `launch_ce` calls it: forward fills loss/lse, backward writes the gradient scaled by a [1]
    scalar (fused training path) or, `per_row`, by a [N] upstream (reduction "none")."""
    n, v = ROWS, shape.vocab
    logits, target = _meta((n, v), shape.dtype), _meta((n,), torch.int64)
    loss, lse = _meta((n,), torch.float32), _meta((n,), torch.float32)
    grad = _meta((n, v), shape.grad_dtype) if backward else logits
    scale = _meta((n if per_row else 1,), torch.float32) if backward else lse
    args = (logits, v, target, loss if forward else lse, lse, grad, v if backward else 0, scale)
    args += ((1 if per_row else 0) if backward else 0, v, -100, 0.0, 0.0, CE_SOFTCAP if shape.softcap else 1.0)
    flags = dict(FORWARD=forward, BACKWARD=backward, HAS_SOFTCAP=shape.softcap)
    constexprs = dict(**flags, SINGLE_BLOCK=v <= block, BLOCK=block)
    row_bytes = v * shape.dtype.itemsize  # the fused multi-block launch reads its row a second time for the gradient
    reread = row_bytes if forward and backward and v > block else 0
    return Launch(ce._ce_kernel, args, constexprs, warps, min(block, v) * shape.dtype.itemsize, reread)


def _scale_launch(vocab: int, block: int, warps: int) -> Launch:
    """`_scale_kernel` on the [ROWS, vocab] bf16 gradient (the pass it makes when the upstream scalar is not 1)."""
    grad = _meta((ROWS, vocab), BF16)
    return Launch(
        ce._scale_kernel,
        (grad, _meta((1,), torch.float32), grad.numel()),
        dict(BLOCK=block),
        warps,
        block * BF16.itemsize,
    )


RMS_HIDDENS = (2048, 4096, 8192)  # 4096: issue 11's; 2048 and 8192 guard the tile rule for other models


def _rms_launch(hidden: int, block_m: int, warps: int, *, backward: bool) -> Launch:
    """`_rms_fwd_kernel` / `_rms_bwd_kernel` on [ROWS, hidden] bf16 with a bf16 weight, BLOCK_M rows per tile."""
    x, w, rstd = _meta((ROWS, hidden), BF16), _meta((hidden,), BF16), _meta((ROWS,), torch.float32)
    block_n = 1 << (hidden - 1).bit_length()
    constexprs = dict(HAS_WEIGHT=True, BLOCK_M=block_m, BLOCK_N=block_n)
    tile_bytes = block_m * hidden * BF16.itemsize
    if backward:
        partial = _meta((4 * 132, hidden), torch.float32)
        args = (x, hidden, x, hidden, w, rstd, x, partial, ROWS, hidden, 0.0)
        return Launch(rms_norm._rms_bwd_kernel, args, constexprs, warps, 2 * tile_bytes)
    args = (x, hidden, w, x, rstd, ROWS, hidden, 1e-6, 0.0)
    return Launch(rms_norm._rms_fwd_kernel, args, constexprs, warps, tile_bytes)


SWIGLU_SHAPE = (ROWS, 14336)


def _swiglu_launch(shape: tuple[int, int], block: int, warps: int, *, backward: bool) -> Launch:
    """`_swiglu_fwd_kernel` (reads gate, up) / `_swiglu_bwd_kernel` (reads dy, gate, up) on bf16 `shape`."""
    t = _meta(shape, BF16)
    if backward:
        return Launch(swiglu._swiglu_bwd_kernel, (t, t, t, t, t, t.numel()), dict(BLOCK=block), warps, 3 * block * 2)
    return Launch(swiglu._swiglu_fwd_kernel, (t, t, t, t.numel()), dict(BLOCK=block), warps, 2 * block * 2)


@dataclass(frozen=True)
class RopeShape:
    """q [ROWS, q_heads, head_dim], k [ROWS, kv_heads, head_dim], cos/sin [ROWS, head_dim], all bf16."""

    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128

    def label(self) -> str:
        return f"q [{ROWS}, {self.q_heads}, {self.head_dim}] k [{ROWS}, {self.kv_heads}, {self.head_dim}] bf16"


def _rope_launch(shape: RopeShape, block_t: int, warps: int, *, backward: bool, cos_grad: bool) -> Launch:
    """`_rope_kernel` as `rope._launch` calls it: BLOCK_T tokens of q and k per program."""
    d, half = shape.head_dim, shape.head_dim // 2
    q, k = _meta((ROWS, shape.q_heads, d), BF16), _meta((ROWS, shape.kv_heads, d), BF16)
    cos = _meta((ROWS, d), BF16)
    dcos = _meta((ROWS, d), torch.float32) if cos_grad else q
    args = (q, q.stride(0), q.stride(1), k, k.stride(0), k.stride(1), q, k, q, k, cos, cos, cos.stride(0))
    args += (dcos, dcos, ROWS, shape.q_heads, shape.kv_heads, half)
    blocks = dict(BLOCK_QH=1 << (shape.q_heads - 1).bit_length(), BLOCK_KH=1 << (shape.kv_heads - 1).bit_length())
    constexprs = dict(BACKWARD=backward, COS_GRAD=cos_grad, BLOCK_T=block_t, **blocks, BLOCK_D=half)
    per_token = (shape.q_heads + shape.kv_heads) * d * (2 if cos_grad else 1) + 2 * d
    return Launch(rope._rope_kernel, args, constexprs, warps, block_t * per_token * BF16.itemsize)


# ---------------------------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Family:
    """One kernel variant at its shapes: the launch of a (block, warps) candidate, the blocks swept (each with
    every num_warps in WARPS), the kernel module's own choice for a GPU launch, and the choice before the sweep."""

    block_name: str  # what "block" means for this kernel
    shapes: dict[str, Any]  # label → shape
    blocks: tuple[int, ...]
    build: Callable[[Any, int, int], Launch]
    chosen: Callable[[Any], tuple[int, int]]
    previous: Callable[[Any], tuple[int, int]]


def _ce_previous(shape: CEShape) -> tuple[int, int]:
    """Before the sweep: the whole row up to 32768 (then a 32768 loop), warps by ((2048, 4), (8192, 8), (16384, 16))
    else 32."""
    block = min(1 << (shape.vocab - 1).bit_length(), 32768)
    return block, next((w for limit, w in ((2048, 4), (8192, 8), (16384, 16)) if block <= limit), 32)


def _ce_family(*, forward: bool, backward: bool, per_row: bool = False, dtype=BF16) -> Family:
    vocabs = (16384, *CE_VOCABS)  # 16384: the widest row kept whole (SINGLE_BLOCK) by the choice below
    shapes = {s.label(): s for s in (CEShape(v, cap, dtype) for cap in (False, True) for v in vocabs)}
    return Family(
        "BLOCK (columns per step)",
        shapes,
        (4096, 8192, 16384, 32768),
        lambda s, b, w: _ce_launch(s, b, w, forward=forward, backward=backward, per_row=per_row),
        lambda s: ce.ce_launch_params(s.vocab),
        _ce_previous,
    )


def _hidden_label(h: int) -> str:
    return f"[{ROWS}, {h}] bf16"


def _rms_family(*, backward: bool) -> Family:
    return Family(
        "BLOCK_M (rows per program)",
        {_hidden_label(h): h for h in RMS_HIDDENS},
        (1, 2, 4, 8),
        lambda h, b, w: _rms_launch(h, b, w, backward=backward),
        lambda h: rms_norm.launch_params(h, backward=backward)[::2],
        lambda h: (max(1, 8192 // h), 8),  # the old 8192-element tile at 8 warps
    )


def _swiglu_family(*, backward: bool) -> Family:
    return Family(
        "BLOCK",
        {"[16384, 14336] bf16": SWIGLU_SHAPE},
        (1024, 2048, 4096, 8192),
        lambda s, b, w: _swiglu_launch(s, b, w, backward=backward),
        lambda s: (swiglu.BLOCK_ELEMENTS, swiglu.NUM_WARPS),
        lambda s: (2048, 8),
    )


FAMILIES: dict[str, Family] = {
    "ce_fused": _ce_family(forward=True, backward=True),
    "ce_forward": _ce_family(forward=True, backward=False),
    "ce_backward": _ce_family(forward=False, backward=True, per_row=True),
    "flce_chunk": _ce_family(forward=True, backward=True, dtype=torch.float32),
    "ce_scale": Family(
        "BLOCK",
        {f"grad [{ROWS}, {v}] bf16": v for v in (CE_VOCABS[0], CE_VOCABS[-1])},
        (2048, 4096, 8192, 16384),
        _scale_launch,
        lambda v: (ce.SCALE_BLOCK, ce.SCALE_WARPS),
        lambda v: (8192, 8),
    ),
    "rms_norm_fwd": _rms_family(backward=False),
    "rms_norm_bwd": _rms_family(backward=True),
    "swiglu_fwd": _swiglu_family(backward=False),
    "swiglu_bwd": _swiglu_family(backward=True),
}
for _name, _backward, _cos_grad in (
    ("rope_fwd", False, False),
    ("rope_bwd", True, False),
    ("rope_bwd_cos", True, True),
):
    FAMILIES[_name] = Family(
        "BLOCK_T (tokens per program)",
        {RopeShape().label(): RopeShape()},
        (1, 2, 4, 8),
        lambda s, b, w, bw=_backward, cg=_cos_grad: _rope_launch(s, b, w, backward=bw, cos_grad=cg),
        lambda s: rope.launch_params(s.q_heads, s.kv_heads, s.head_dim),
        lambda s: (1, 4),
    )

# Selection rule (the same for every kernel; `rank` is its sort key):
#   1. fewest spill bytes per thread (stores + loads): zero wherever a candidate has none;
#   2. rows read twice (fused CE over several blocks) fit the 50 MB L2 (programs per SM × 132 SMs × row bytes),
#      else the second read goes to HBM: 3 instead of 2 [N, V] passes;
#   3. most bytes in flight per SM, counted up to IN_FLIGHT_TARGET — what keeps H200's HBM busy
#      (4.8 TB/s × ~0.9 µs loaded latency / 132 SMs ≈ 32 KB; H100: 3.35 TB/s → ~23 KB); more buys nothing;
#   4. most programs per SM: a program's reductions, stores and row switches are overlapped by the others' loads;
#   5. fewest registers per thread: margin before a change to the kernel makes it spill.
IN_FLIGHT_TARGET = 32 * 1024
L2_BYTES, SMS = 50 * 1024 * 1024, 132  # H100 SXM / H200


def rank(record: dict[str, Any]) -> tuple:
    """Sort key of the selection rule above (smaller is better)."""
    return (
        record["spill_stores"] + record["spill_loads"],
        record["programs_per_sm"] * SMS * record["reread_bytes_per_program"] > L2_BYTES,
        -min(record["bytes_in_flight_per_sm"], IN_FLIGHT_TARGET),
        -record["programs_per_sm"],
        record["registers"],
    )


def measure(family: str, label: str, block: int, warps: int, arch: int = 90) -> dict[str, Any]:
    """The record of one candidate: its launch's constexprs, compiled resources, occupancy and bytes in flight."""
    fam = FAMILIES[family]
    launch = fam.build(fam.shapes[label], block, warps)
    resources = compile_launch(launch, arch)
    occ = occupancy(resources["registers"], resources["shared"], warps)
    return {
        "variant": family,
        "kernel": launch.kernel.__name__,
        "shape": label,
        "block_name": fam.block_name,
        "block": block,
        "num_warps": warps,
        "constexprs": {k: v for k, v in launch.constexprs.items()},
        **resources,
        **occ,
        "load_bytes_per_program": launch.load_bytes,
        "bytes_in_flight_per_sm": occ["programs_per_sm"] * launch.load_bytes,
        "reread_bytes_per_program": launch.reread_bytes,
    }


def _elements_per_thread(fam: Family, shape: Any, block: int, warps: int) -> float:
    """Elements of the program's tile per thread (the tile's element count from the launch's constexprs)."""
    c = fam.build(shape, block, warps).constexprs
    tile = c.get("BLOCK") or c.get("BLOCK_M", 1) * c.get("BLOCK_N", 1) or 0
    if "BLOCK_T" in c:
        tile = c["BLOCK_T"] * (c["BLOCK_QH"] + c["BLOCK_KH"]) * c["BLOCK_D"]
    return tile / (32 * warps)


def sweep(names: list[str], arch: int = 90, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Records of every candidate of the families `names` at their shapes, with `chosen` (the kernel module's
    choice), `previous` (the choice before this sweep) and `best` (the rule's pick) marked."""
    records = []
    for name in names:
        fam = FAMILIES[name]
        for label, shape in fam.shapes.items():
            pairs = [
                (b, w)
                for b in fam.blocks
                for w in WARPS
                if _elements_per_thread(fam, shape, b, w) <= MAX_ELEMENTS_PER_THREAD
            ]
            group = [measure(name, label, b, w, arch) for b, w in pairs]
            best = min(group, key=rank)
            for record in group:
                pick = (record["block"], record["num_warps"])
                record.update(
                    chosen=pick == fam.chosen(shape), previous=pick == fam.previous(shape), best=record is best
                )
            if not any(r["chosen"] for r in group):
                raise ValueError(f"{name} at {label}: the chosen {fam.chosen(shape)} is not among the candidates")
            records += group
            if progress:
                progress(f"{name} {label}: {len(group)} candidates")
    return records


# ---------------------------------------------------------------------------------------------- report

_COLUMNS = (
    ("variant", 13, "variant"),
    ("shape", 34, "shape"),
    ("block", 6, "block"),
    ("num_warps", 5, "warps"),
    ("registers", 5, "regs"),
    ("spill_stores", 6, "st B"),
    ("spill_loads", 6, "ld B"),
    ("shared", 6, "smem"),
    ("programs_per_sm", 4, "p/SM"),
    ("limited_by", 9, "limit"),
    ("warps_per_sm", 5, "w/SM"),
)


def table(records: list[dict[str, Any]], everything: bool = False) -> str:
    """Text table of the records (only chosen, previous and best unless `everything`); marks: * chosen,
    p previous, + best by the selection rule."""
    head = " ".join(f"{title:>{width}}" for _, width, title in _COLUMNS) + "  KB/SM marks"
    lines = [head]
    for r in records:
        if not (everything or r["chosen"] or r["previous"] or r["best"]):
            continue
        marks = "".join(mark for key, mark in (("chosen", "*"), ("previous", "p"), ("best", "+")) if r[key])
        cells = " ".join(f"{str(r[key])[:width]:>{width}}" for key, width, _ in _COLUMNS)
        lines.append(f"{cells} {r['bytes_in_flight_per_sm'] / 1024:6.0f} {marks}")
    return "\n".join(lines)


def report(records: list[dict[str, Any]], arch: int, ptxas: str) -> dict[str, Any]:
    """The JSON payload: what was done, the rules, the environment (its device is the CPU that compiled) and records."""
    return {
        "what": ISSUE.format(arch=arch),
        "target": f"cuda sm_{arch} (triton.compile with GPUTarget('cuda', {arch}, 32))",
        "ptxas": ptxas,
        "environment": environment(),
        "sm_limits": SM90.__dict__ if arch == 90 else None,
        "occupancy": "programs per SM = min(4·⌊16384 / regs_per_warp⌋ / warps, 2048 / threads, "
        "228 KB / (shared + 1 KB), 32); regs_per_warp = 32·registers rounded up to 256",
        "bytes_in_flight": "programs per SM × bytes one program loads per step (a block of every input)",
        "selection_rule": "fewest spill bytes; rows read twice fit the 50 MB L2 (132 SMs); most bytes in flight "
        "per SM up to 32 KB; most programs per SM; fewest registers",
        "marks": {
            "chosen": "the kernel module's choice (what a launch uses)",
            "previous": "before the sweep",
            "best": "the selection rule's pick",
        },
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability to compile for (default 90)")
    parser.add_argument("--only", default="", help=f"comma-separated variants (default all: {', '.join(FAMILIES)})")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/sm<arch>)")
    parser.add_argument("--all", action="store_true", help="print every candidate, not only chosen/previous/best")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(FAMILIES)}")
    try:
        ptxas = check_toolchain(args.arch)
        records = sweep(names, args.arch, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ToolchainError as exc:
        print(f"kernel_resources: cannot compile for CUDA sm_{args.arch} here: {exc}", file=sys.stderr)
        return 2
    out = args.out or RESULTS_DIR / f"sm{args.arch}"
    path = write_result(result_name(), report(records, args.arch, ptxas), out)
    print(f"{ISSUE.format(arch=args.arch)}; ptxas {ptxas}")
    print(table(records, args.all))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
