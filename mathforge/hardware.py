"""What this machine is and what it can do: CPU name, package versions, and the GPU's measured ceilings.

Below both `mathforge doctor` and `mathforge.bench` (which judges kernels against these ceilings):
- `matmul_tflops`: dense matmul rate in TFLOP/s (bf16 by default), 2·n³ FLOPs per n×n×n product;
- `copy_bandwidth_gbs`: device-to-device copy rate in GB/s, counting bytes read plus bytes written.
Both time with CUDA events after a warm-up (`cuda_times_ms`) and report the median of `iters` runs.
For CPU work, `configure_threads` picks torch's intra-op thread count from the physical cores this process
may use and how many of them other work keeps busy now (`choose_threads` is the rule). torch is imported only inside the functions that use it.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
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


def _affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (`os.sched_getaffinity`); SMT siblings count once.
    Falls back to the number of those CPUs where /sys has no topology. (torch's default thread count is this.)"""
    cpus, cores = _affinity(), set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        except OSError:
            return len(cpus)
    return max(len(cores), 1)


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over `cpus` from /proc/stat, None where it cannot be read."""
    busy = total = 0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def busy_cpus(interval: float = 0.1) -> float:
    """How many of this process's CPUs other work keeps busy now: /proc/stat sampled over `interval` seconds
    while we sleep (so our own work does not count), in CPUs. Where /proc/stat is missing, the 1-minute load
    average capped at the CPU count. Why not the load average first: it lags by a minute, so it still shows
    a run that just ended (e.g. the previous command) and misses a job started seconds ago."""
    cpus = _affinity()
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(interval)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return min(os.getloadavg()[0], float(len(cpus)))
    except OSError:  # no load average on this platform: assume idle
        return 0.0


def choose_threads(cores: int, busy: float) -> int:
    """The intra-op thread count for `cores` physical cores of which `busy` (in cores) other work occupies: the
    free cores rounded to nearest, at least 1, at most `cores`. An OpenMP thread whose core is taken stalls
    every parallel region at its barrier (measured: 4-5x fewer tokens/s with 2 threads and one core busy), so
    a mostly busy core counts as none: 2 cores, busy 0.4 → 2 threads; busy ≥ 0.5 → 1."""
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


def configure_threads() -> int | None:
    """Sets torch's intra-op threads for CPU work to `choose_threads(physical_cores(), busy_cpus())` unless the
    user chose already: it leaves them when OMP_NUM_THREADS or MKL_NUM_THREADS is set, or when
    torch.get_num_threads() is not torch's default (the physical cores available), i.e. torch.set_num_threads
    was called. Returns the count it set, or None. Called once when `train`, `demo` or `eval` starts (`mathforge.cli.main`); costs a
    0.1 s sample of /proc/stat."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    import torch

    cores = physical_cores()
    if torch.get_num_threads() != cores:
        return None
    threads = choose_threads(cores, busy_cpus())
    torch.set_num_threads(threads)
    return threads


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
