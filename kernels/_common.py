"""Helpers shared by the Triton op files: launch constants, block sizes and the target check mode.

Check mode: set the environment variable `MATHFORGE_CHECK=1` to validate inputs that a kernel cannot
check without a host synchronisation (today: loss targets outside [0, V) that are not `ignore_index`).
It is read at call time, costs one `.item()` per call, and raises `mathforge.errors.DataError`.
"""

from __future__ import annotations

import os

import torch
import triton

from mathforge.errors import DataError


def interpreting() -> bool:
    """True when Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_enabled() -> bool:
    """True when `MATHFORGE_CHECK=1` asks for the (host-synchronising) input checks."""
    return os.environ.get("MATHFORGE_CHECK", "0") not in ("", "0")


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension has stride 1 (what the kernels index by), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def check_targets(target: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Raises DataError naming the first target that is neither `ignore_index` nor in [0, vocab_size)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab_size))
    if bool(bad.any()):
        position = int(bad.nonzero()[0, 0])
        value = int(target.reshape(-1)[position])
        raise DataError(
            f"target[{position}] = {value} is out of range for vocab size {vocab_size} "
            f"(allowed: 0..{vocab_size - 1} or ignore_index={ignore_index}); {int(bad.sum())} such targets"
        )


# Launch parameters below were chosen from `python -m mathforge.bench.kernel_resources` (compiled for sm_90 with
# Triton's ptxas, not run; bench/results/sm90/kernel_resources.json holds every candidate). Rule, for every kernel:
# no spills to local memory; rows read twice kept within L2; most bytes in flight per SM up to ~32 KB (H200's HBM
# needs 4.8 TB/s × ~0.9 µs / 132 SMs); then most programs per SM; then fewest registers.
ROW_BLOCK_MAX = 16384  # widest row kept whole in registers (one read). A whole 32768 row spills at every num_warps
# (sm_90, fused fwd+bwd: 76-80 B/thread at 32 warps, 148 at 16; with softcap 172-336), 16384 at 32 warps does not
WARPS_BY_BLOCK = ((4096, 4), (8192, 8))  # (max block, warps) for a whole row: 72, 80 registers, no spills
WARPS_WIDEST = 32  # blocks beyond the last threshold (16384: 48-58 registers; 1024 threads, the most a block may have)
INTERPRETER_WARPS = 1  # TRITON_INTERPRET=1 runs a block as numpy ops: more warps only add overhead
INTERPRETER_ROW_BLOCK = 32768  # the interpreter's row block: bigger numpy ops, fewer loop steps


def row_block(n_cols: int, cap: int = ROW_BLOCK_MAX) -> int:
    """Block width for a loop over one row of `n_cols` elements: the whole row up to `cap`."""
    return min(triton.next_power_of_2(max(n_cols, 1)), cap)


def warps_for_block(block: int) -> int:
    """Warps on a GPU for a program holding a whole row of `block` elements (more warps for wide blocks)."""
    return next((warps for limit, warps in WARPS_BY_BLOCK if block <= limit), WARPS_WIDEST)


def num_warps_for(block: int) -> int:
    """`warps_for_block`, or INTERPRETER_WARPS under the interpreter."""
    return INTERPRETER_WARPS if interpreting() else warps_for_block(block)
