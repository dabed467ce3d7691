"""The device's measured ceilings moved to `mathforge.hardware` (below both `doctor` and `bench`).

This name stays so `from mathforge.bench.ceilings import matmul_tflops` keeps working.
"""

from mathforge.hardware import copy_bandwidth_gbs, cuda_times_ms, matmul_tflops

__all__ = ["copy_bandwidth_gbs", "cuda_times_ms", "matmul_tflops"]
