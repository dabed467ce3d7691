"""What every benchmark result carries: device, versions, git revision and date, and where it goes."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mathforge.hardware import cpu_name, package_versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_ENV = "MATHFORGE_RESULTS_DIR"


def device_slug() -> str:
    """Folder name for results: 'cpu', or the GPU's name in lower case with dashes (e.g. 'nvidia-h100-80gb-hbm3')."""
    import torch

    if torch.cuda.is_available():
        return "-".join(torch.cuda.get_device_name().lower().replace("_", " ").split())
    return "cpu"


def git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(*extra_packages: str) -> dict[str, Any]:
    """Device, versions, git revision and date for a results file."""
    import torch

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name(),
        "device_slug": device_slug(),
        "python": platform.python_version(),
        "versions": package_versions("mathforge", "torch", "triton", "numpy", *extra_packages),
        "cuda": torch.version.cuda,
        "git_revision": git_revision(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def results_folder(out_dir: Path | None = None) -> Path:
    """Where results go: `out_dir`, else $MATHFORGE_RESULTS_DIR (set by `bench.gpu_session` for its phases),
    else bench/results/<device>/."""
    if out_dir is not None:
        return Path(out_dir)
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return RESULTS_DIR / device_slug()


def write_result(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Writes `payload` as JSON to `results_folder(out_dir)`/<name>.json and returns the path."""
    folder = results_folder(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
