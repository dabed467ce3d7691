"""pytest-benchmark benchmarks of the kernel ops (forward + backward through the public API):
`pytest bench/benchmarks --benchmark-only [--benchmark-autosave] [--benchmark-compare --benchmark-compare-fail=median:5%]`.

The cases are those of `python -m mathforge.bench.kernels --quick` (`mathforge.bench.kernels.sweep`): one
definition of each op's inputs, shapes and call, here timed for the "mathforge" provider only. On CUDA: bf16
LLM-sized inputs through the Triton kernels, each round ending in torch.cuda.synchronize(). On CPU: small
fp32 inputs through the torch references (the CPU path)."""

from __future__ import annotations

import pytest
import torch

from mathforge.bench.kernels import case_id, full_step, sweep

CUDA = torch.cuda.is_available()
CASES = sweep("cuda" if CUDA else "cpu", quick=True)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel(benchmark, case):
    made = case.make()
    fn, inputs = made["providers"]["mathforge"], made["grad_inputs"]

    def step():
        full_step(fn, inputs)
        if CUDA:
            torch.cuda.synchronize()

    benchmark.group = case.op
    benchmark(step)
