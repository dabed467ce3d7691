"""The device's measured ceilings, the yardsticks kernels are judged against (CUDA only).

- `matmul_tflops`: dense matmul rate in TFLOP/s (bf16 by default), 2·n³ FLOPs per n×n×n product;
- `copy_bandwidth_gbs`: device-to-device copy rate in GB/s, counting bytes read plus bytes written.
Both time with CUDA events after a warm-up and report the median of `iters` runs.
"""

from __future__ import annotations

import statistics

import torch


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("measuring device ceilings needs a CUDA GPU")


def cuda_times_ms(fn, iters: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `iters` calls of `fn`, each timed with CUDA events after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _median_ms(fn, iters: int, warmup: int = 3) -> float:
    return statistics.median(cuda_times_ms(fn, iters, warmup))


def matmul_tflops(n: int = 8192, dtype: torch.dtype = torch.bfloat16, iters: int = 20) -> float:
    """Measured n×n×n matmul rate in TFLOP/s."""
    _require_cuda()
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    out = torch.empty(n, n, device="cuda", dtype=dtype)
    ms = _median_ms(lambda: torch.mm(a, b, out=out), iters)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Measured device-to-device copy rate in GB/s (read + write)."""
    _require_cuda()
    src = torch.empty(nbytes, device="cuda", dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), iters)
    return 2 * nbytes / (ms * 1e-3) / 1e9
