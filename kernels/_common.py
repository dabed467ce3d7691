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


ROW_BLOCK_MAX = 32768  # a whole 32K-vocab row per iteration; its 3 per-lane fp32 vectors still fit at 32 warps
WARPS_BY_BLOCK = ((2048, 4), (8192, 8), (16384, 16))  # (max block, warps): ≤ 16-32 elements per thread
WARPS_WIDEST = 32  # blocks beyond the last threshold: the most warps a CUDA block may have (1024 threads)
INTERPRETER_WARPS = 1  # TRITON_INTERPRET=1 runs a block as numpy ops: more warps only add overhead


def row_block(n_cols: int, cap: int = ROW_BLOCK_MAX) -> int:
    """Block width for a loop over one row of `n_cols` elements: the whole row up to `cap`."""
    return min(triton.next_power_of_2(max(n_cols, 1)), cap)


def num_warps_for(block: int) -> int:
    """Warps for a program working on `block` elements (more warps for wide blocks)."""
    if interpreting():
        return INTERPRETER_WARPS
    return next((warps for limit, warps in WARPS_BY_BLOCK if block <= limit), WARPS_WIDEST)
