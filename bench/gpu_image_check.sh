#!/usr/bin/env bash
# Pre-flight for a GPU session, on a machine without a GPU: the GPU image's stack (the device tool's KINDS.md:
# Python 3.12, torch 2.11.0, triton 3.6.0, transformers 5.17.0; no datasets, openai or latex2sympy2 there) in a venv
# of its own, then, with what the GPU machine would run:
#   1. bench/gpu_session.sh smoke (carried wheels, the image's build line, one phase per kind);
#   2. the kernel, attention, model, GPU-session and bench.train tests under Triton 3.6's interpreter;
#   3. every kernel compiled for sm_90 by Triton 3.6 (bench/results/sm90/kernel_resources_triton3.6.json).
#     bash bench/gpu_image_check.sh [VENV]      (VENV default .venv-gpu-image; PYTHON312 picks the interpreter;
#                                               NO_RESOURCES=1 skips step 3, ~15 minutes on one core)
# The first run downloads ~3 GB (PyPI's CUDA build of torch 2.11, which runs on the CPU). numpy stays below 2.4:
# Triton 3.6's interpreter converts 1-element arrays to ints, which numpy 2.4 refuses.
set -euo pipefail
venv=$(realpath -m "${1:-.venv-gpu-image}")
py=${PYTHON312:-$(command -v python3.12 || ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}
[ -x "$py" ] || { echo "no Python 3.12 found: set PYTHON312" >&2; exit 2; }
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch==2.11.0 triton==3.6.0 transformers==5.17.0 "numpy<2.4" pytest pytest-timeout \
    safetensors tokenizers sympy matplotlib pandas pyarrow pyyaml typer rich psutil scikit-build-core nanobind ninja cmake
fi
export PATH="$venv/bin:$PATH"
python -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
OUT=$(mktemp -d) bash bench/gpu_session.sh smoke 300
PYTHONPATH=/tmp/site python -m pytest -q -p no:cacheprovider tests/test_kernels_*.py tests/test_attention.py \
  tests/test_kernel_resources.py tests/test_gpu_session.py tests/test_doctor.py tests/test_model.py tests/test_bench_train.py
[ -n "${NO_RESOURCES:-}" ] || python -m mathforge.bench.kernel_resources
