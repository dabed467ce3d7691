"""What this machine is and what it can do: CPU name, package versions, and the GPU's measured ceilings.

Below both `mathforge doctor` and `mathforge.bench` (which judges kernels against these ceilings):
- `matmul_tflops`: dense matmul rate in TFLOP/s (bf16 by default), 2·n³ FLOPs per n×n×n product;
- `copy_bandwidth_gbs`: device-to-device copy rate in GB/s, counting bytes read plus bytes written.
Both time with CUDA events after a warm-up (`cuda_times_ms`) and report the median of `iters` runs.
torch is imported only by the GPU functions.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed version of each distribution, None when it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("measuring device ceilings needs a CUDA GPU")
    return torch


def cuda_times_ms(fn: Callable[[], Any], iters: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `iters` calls of `fn`, each timed with CUDA events after `warmup` untimed calls."""
    import torch

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


def _median_ms(fn: Callable[[], Any], iters: int, warmup: int = 3) -> float:
    return statistics.median(cuda_times_ms(fn, iters, warmup))


def matmul_tflops(n: int = 8192, dtype: Any = None, iters: int = 20) -> float:
    """Measured n×n×n matmul rate in TFLOP/s (`dtype` defaults to torch.bfloat16)."""
    torch = _require_cuda()
    dtype = torch.bfloat16 if dtype is None else dtype
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    out = torch.empty(n, n, device="cuda", dtype=dtype)
    ms = _median_ms(lambda: torch.mm(a, b, out=out), iters)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Measured device-to-device copy rate in GB/s (read + write)."""
    torch = _require_cuda()
    src = torch.empty(nbytes, device="cuda", dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), iters)
    return 2 * nbytes / (ms * 1e-3) / 1e9
