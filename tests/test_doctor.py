"""`mathforge doctor` reports this environment truthfully; the GPU part runs only with CUDA."""

import json
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch

from mathforge.cli import main
from mathforge.evaluate.sandbox import Sandbox


def test_doctor_json_matches_environment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--json", "--no-measure"])
    assert exit_info.value.code == 0
    info = json.loads(capsys.readouterr().out)
    # the installed distribution's version: "2.11.0" for PyPI's CUDA build, whose torch.__version__ says
    # "2.11.0+cu130" (the CUDA version is reported on its own, below)
    assert info["versions"]["torch"] == version("torch") and torch.__version__.startswith(version("torch"))
    assert info["cuda"]["torch_cuda"] == torch.version.cuda
    assert info["native_extension"]["ok"] is True
    backends = {b["name"]: b for b in info["attention_backends"]}
    assert list(backends) == ["flash-attn-3", "flash-attn-2", "torch-varlen", "flex", "sdpa"]
    assert backends["sdpa"]["usable"] is True
    assert info["cuda"]["available"] == torch.cuda.is_available()
    sandbox = Sandbox(preload=())
    assert info["sandbox"] == sandbox.isolation.as_dict()
    sandbox.close()
    assert info["sandbox"]["safe"] == (info["sandbox"]["level"] != "none" and all(info["sandbox"]["held"].values()))


def test_doctor_does_not_import_bench_and_bench_measures_with_the_same_functions():
    code = (
        "import sys, mathforge.doctor\n"
        "print([m for m in sys.modules if m.startswith('mathforge.bench')])\n"
        "from mathforge import hardware\n"
        "from mathforge.bench import common, model\n"
        "print(common.cpu_name is hardware.cpu_name, model.cuda_times_ms is hardware.cuda_times_ms)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True True"]
    from mathforge.hardware import cpu_name, package_versions

    assert cpu_name()
    assert package_versions("torch", "no-such-package-xyz") == {"torch": version("torch"), "no-such-package-xyz": None}


@pytest.mark.gpu
def test_gpu_ceilings_are_plausible():
    from mathforge.hardware import copy_bandwidth_gbs, matmul_tflops

    assert 10 < matmul_tflops(n=4096, iters=5) < 5000
    assert 50 < copy_bandwidth_gbs(nbytes=1 << 28, iters=5) < 20000
