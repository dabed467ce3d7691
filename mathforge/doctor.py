"""`mathforge doctor`: what this machine offers mathforge — versions, the GPU and its measured ceilings,
the compiled extension, and the attention backends that can be imported."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from mathforge.hardware import cpu_name, package_versions
from mathforge.kernels.backends import attention_backends


def _native_status() -> dict[str, Any]:
    try:
        from mathforge import _native
    except ImportError as error:
        return {"ok": False, "detail": str(error)}
    return {"ok": True, "detail": _native.__file__}


def _sandbox_status() -> dict[str, Any]:
    """The isolation the code sandbox gets on this machine, as its own probe found it."""
    from mathforge.errors import MathforgeError
    from mathforge.evaluate.sandbox import Sandbox

    try:
        with Sandbox(preload=()) as sandbox:
            return sandbox.isolation.as_dict()
    except (MathforgeError, OSError) as error:
        return {"level": "unavailable", "safe": False, "mechanisms": [], "held": {}, "errors": [str(error)]}


def report(measure: bool = True) -> dict[str, Any]:
    """Everything `mathforge doctor` shows, as a JSON-ready dict."""
    versions = package_versions("mathforge", "torch", "triton", "transformers", "datasets", "tokenizers", "flash-attn")
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "versions": versions,
        "cuda": {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda},
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "native_extension": _native_status(),
        "attention_backends": [
            {"name": b.name, "importable": b.importable, "usable": b.usable, "detail": b.detail}
            for b in attention_backends()
        ],
        "sandbox": _sandbox_status(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu: dict[str, Any] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count,
        }
        if measure:
            from mathforge.hardware import copy_bandwidth_gbs, matmul_tflops

            gpu["bf16_matmul_tflops"] = round(matmul_tflops(), 1)
            gpu["copy_bandwidth_gbs"] = round(copy_bandwidth_gbs(), 1)
        info["gpu"] = gpu
    return info


def render(info: dict[str, Any]) -> None:
    """Prints the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="mathforge doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", f"{info['python']} ({info['platform']})")
    table.add_row("cpu", f"{info['cpu']} ({info['cpu_threads']} torch threads)")
    for name, version in info["versions"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    cuda = info["cuda"]
    table.add_row("cuda", f"torch built with {cuda['torch_cuda']}" if cuda["torch_cuda"] else "torch has no CUDA")
    gpu = info.get("gpu")
    if gpu:
        table.add_row(
            "gpu",
            f"{gpu['count']} x {gpu['name']} ({gpu['memory_gib']} GiB, sm_{gpu['capability'].replace('.', '')}, {gpu['sms']} SMs)",
        )
        if "bf16_matmul_tflops" in gpu:
            table.add_row("bf16 matmul", f"{gpu['bf16_matmul_tflops']} TFLOP/s (measured, 8192^3)")
            table.add_row(
                "copy bandwidth", f"{gpu['copy_bandwidth_gbs']} GB/s (measured, device to device, read+write)"
            )
    else:
        table.add_row(
            "gpu", "none: Triton kernels run only under TRITON_INTERPRET=1; torch references are the CPU path"
        )
    native = info["native_extension"]
    table.add_row("mathforge._native", ("[green]ok[/] " if native["ok"] else "[red]missing[/] ") + native["detail"])
    box = info["sandbox"]
    verdict = "[green]safe[/]" if box["safe"] else "[red]NOT SAFE[/] (eval --tool needs --unsafe-sandbox)"
    detail = ", ".join(box["mechanisms"]) + ("; " + "; ".join(box["errors"]) if box["errors"] else "")
    table.add_row("code sandbox", f"{box['level']}, {verdict}: {detail}")
    console.print(table)

    backends = Table(title="attention backends (auto tries them top to bottom)")
    for column in ("backend", "importable", "usable here", "detail"):
        backends.add_column(column)
    for b in info["attention_backends"]:
        backends.add_row(b["name"], "yes" if b["importable"] else "no", "yes" if b["usable"] else "no", b["detail"])
    console.print(backends)
