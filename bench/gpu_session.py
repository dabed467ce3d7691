"""One prepared GPU session: `python -m mathforge.bench.gpu_session PLAN --budget SECONDS --out DIR`.

A GPU machine is lent here for minutes (one command of at most 10 minutes, 15 minutes of device time per
task, start-up included), so each GPU issue's checks run as one command that was written and exercised on
the CPU first. A plan is a fixed list of phases (`PLANS`); each phase is a subprocess with its own log,
given at most its cap and never more than what is left of the budget (a phase that would get less than
its minimum is skipped and reported). Results of the benchmarks go to one folder (MATHFORGE_RESULTS_DIR,
read by `bench.common.write_result`); after every phase the results and logs are packed into
DIR/session.tar.gz and the phases' outcomes into DIR/summary.json (two files: the device tool brings back at
most eight; rewritten per phase so that a command cut short still returns what was measured), and a short
table is printed last. Nothing here judges a result: the benchmarks and `pytest -m gpu` do.

On the GPU machine `bash bench/gpu_session.sh PLAN [BUDGET]` installs the carried peer wheels (.whl/),
builds mathforge and runs this; README "GPU runs" says how to fetch the wheels and unpack the results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mathforge.bench.common import RESULTS_ENV
from mathforge.errors import ConfigError

KERNEL_TESTS = (
    "tests/test_kernels_gpu.py",
    "tests/test_kernels_ce_fused.py",
    "tests/test_kernels_flce_chunks.py",
    "tests/test_kernels_flce_paths.py",
)
MODEL_TESTS = ("tests/test_attention.py", "tests/test_doctor.py")
PEER_CASE_TESTS = ("tests/test_kernels_peer_cases.py", "tests/test_kernels_peer_cases_cce.py")  # marked peer_cases
CE_LAUNCHES = "16384x32,4096x8,4096x16,32768x32"
KILL_GRACE_S = 10  # after the cap: SIGTERM, then SIGKILL this much later
LOG_TAIL_LINES = 12
RESERVE_S = 15  # kept back from the budget for packing the results


@dataclass(frozen=True)
class Phase:
    """One step of a session: `argv` run with this Python (`python ARGV...`), for at most `cap_s` seconds;
    skipped when less than `min_s` seconds of the budget are left."""

    name: str
    argv: tuple[str, ...]
    cap_s: int
    min_s: int = 30


def _pytest_gpu(cap_s: int, *files: str) -> Phase:
    return Phase("pytest-gpu", ("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files), cap_s)


PLANS: dict[str, tuple[Phase, ...]] = {
    # issue 11: kernels correct on the GPU; the sweep with the peers in the same run; our fused linear CE at
    # fixed chunk sizes and 16-bit chunk logits next to the automatic choice (a results file of its own)
    "kernels": (
        _pytest_gpu(150, *KERNEL_TESTS, *MODEL_TESTS),
        # the CE at the launch candidates of bench.kernel_resources next to the kernel's own (8192 x 32 warps)
        Phase("kernel-sweep", ("-m", "mathforge.bench.kernels", "--ce-launch", CE_LAUNCHES), 200, min_s=90),
        Phase(
            "flce-chunks",
            (
                "-m",
                "mathforge.bench.kernels",
                "--ops",
                "flce",
                "--name",
                "kernels_flce_chunks",
                "--providers",
                "mathforge*",
                "--flce-chunks",
                "1024,2816,4096,8192",
                "--flce-logits",
                "fp32,input",
            ),
            100,
            min_s=60,
        ),
        # last (skipped first when time is short): Liger's and CCE's own test cases at their full shapes
        Phase(
            "peer-cases",
            ("-m", "pytest", "-q", "-m", "peer_cases", "-p", "no:cacheprovider", *PEER_CASE_TESTS),
            90,
            min_s=30,
        ),
    ),
    # issue 12: full training steps against transformers + Liger padding-free and padded (bench.train writes
    # its results after every row and stops starting rows at its own budget), then the model per backend
    "train": (
        _pytest_gpu(60, *MODEL_TESTS),
        Phase(
            "train",
            (
                "-m",
                "mathforge.bench.train",
                "--preset",
                "qwen2.5-1.5b",
                "--precision",
                "bf16-autocast",
                "bf16",
                "--hf-attn",
                "flex_attention",
                "sdpa",
                "--profile",
                "--compile",
                "--time-budget-s",
                "270",
            ),
            320,
            min_s=120,
        ),
        Phase("model", ("-m", "mathforge.bench.model", "--no-compile", "--iters", "5"), 120, min_s=60),
    ),
    # the runner itself on any machine (CPU included): quick subsets, a few seconds each
    "smoke": (
        Phase("python", ("-c", "import mathforge.kernels, mathforge.bench.kernels; print('imports ok')"), 60),
        Phase("kernel-sweep", ("-m", "mathforge.bench.kernels", "--quick", "--ops", "rms"), 120),
    ),
}


def plan_phases(name: str) -> tuple[Phase, ...]:
    """The phases of plan `name`; ConfigError naming the known plans otherwise."""
    try:
        return PLANS[name]
    except KeyError:
        raise ConfigError(f"unknown plan {name!r}; known: {', '.join(sorted(PLANS))}") from None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def run_phase(phase: Phase, work: Path, deadline: float, env: dict[str, str]) -> dict:
    """Runs one phase into work/logs/<name>.log; its outcome: ok, failed (exit code), timeout or skipped."""
    left = deadline - time.monotonic()
    if left < phase.min_s:
        return {"phase": phase.name, "status": "skipped", "why": f"{left:.0f} s of the budget left"}
    timeout = min(phase.cap_s, left)
    log = work / "logs" / f"{phase.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *phase.argv], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _stop(proc)
            code, status = None, "timeout"
    return {
        "phase": phase.name,
        "status": status,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "limit_s": round(timeout, 1),
        "log_tail": _tail(log),
    }


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the phase's process group (its workers too), SIGKILL after KILL_GRACE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _pack(work: Path, out: Path, summary: dict) -> None:
    """out/session.tar.gz (work as "session/", with summary.json) and out/summary.json, each replaced whole
    (written beside, then renamed): a command cut short by the device's limit still returns the last pack."""
    text = json.dumps(summary, indent=2) + "\n"
    (work / "summary.json").write_text(text)
    with tarfile.open(out / "session.tar.gz.part", "w:gz") as tar:
        tar.add(work, arcname="session")
    (out / "session.tar.gz.part").replace(out / "session.tar.gz")
    (out / "summary.json.part").write_text(text)
    (out / "summary.json.part").replace(out / "summary.json")


def run_plan(name: str, budget_s: float, out: Path) -> dict:
    """Runs plan `name` within `budget_s` seconds; after every phase (re)writes out/session.tar.gz and
    out/summary.json, the phases not yet run listed as "pending"."""
    phases = plan_phases(name)
    deadline = time.monotonic() + budget_s - RESERVE_S
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-session-") as tmp:
        work = Path(tmp) / "session"
        (work / "results").mkdir(parents=True)
        env = {**os.environ, RESULTS_ENV: str(work / "results"), "PYTHONUNBUFFERED": "1"}
        outcomes = []
        for i, phase in enumerate(phases):
            outcomes.append(run_phase(phase, work, deadline, env))
            print(f"[{phase.name}] {outcomes[-1]['status']}", flush=True)
            pending = [{"phase": p.name, "status": "pending", "why": "not run yet"} for p in phases[i + 1 :]]
            summary = {"plan": name, "budget_s": budget_s, "phases": outcomes + pending}
            _pack(work, out, summary)
    return summary


def print_summary(summary: dict) -> None:
    """The last lines of every phase that did not end ok, then one line per phase."""
    for outcome in summary["phases"]:
        if outcome["status"] in ("failed", "timeout"):
            print(f"--- {outcome['phase']} ({outcome['status']}), last lines:")
            print("\n".join(outcome["log_tail"]))
    print(f"plan {summary['plan']}, budget {summary['budget_s']:.0f} s:")
    for outcome in summary["phases"]:
        took = f"{outcome['seconds']:7.1f} s of {outcome['limit_s']:.0f}" if "seconds" in outcome else outcome["why"]
        print(f"  {outcome['phase']:14} {outcome['status']:8} {took}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathforge.bench.gpu_session", description=__doc__.splitlines()[0])
    parser.add_argument("plan", help=f"one of: {', '.join(sorted(PLANS))}")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole plan (default 540)")
    parser.add_argument("--out", type=Path, required=True, help="folder for session.tar.gz and summary.json")
    args = parser.parse_args(argv)
    try:
        summary = run_plan(args.plan, args.budget, args.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0 if all(o["status"] == "ok" for o in summary["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
