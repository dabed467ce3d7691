#!/usr/bin/env bash
# The one device call of a GPU issue, from the repository root on the GPU machine:
#     bash bench/gpu_session.sh PLAN [BUDGET_S]      (PLAN: kernels = issue 11, train = issue 12; BUDGET_S 540)
# with the device tool: run(command="bash bench/gpu_session.sh kernels 540", carry=[".whl"], timeout_s=590).
# Installs the carried peer wheels from .whl/ (README "GPU runs" says how to fetch them), builds mathforge
# against the image's torch, then runs `python -m mathforge.bench.gpu_session`, which writes
# $OUT/session.tar.gz and $OUT/summary.json.
set -uo pipefail
plan=${1:?usage: bash bench/gpu_session.sh PLAN [BUDGET_S]}
budget=${2:-540}
out=${OUT:-/tmp/gpu-session-out}
mkdir -p "$out"
start=$SECONDS
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no .whl/*.whl: the peers (liger-kernel, cut-cross-entropy) will be reported as not measured" >&2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv >"$out/gpu.csv" 2>&1
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
echo "built in $((SECONDS - start)) s"
PYTHONUNBUFFERED=1 exec python3 -m mathforge.bench.gpu_session "$plan" --budget $((budget - (SECONDS - start))) --out "$out"
