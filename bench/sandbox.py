"""Code-sandbox throughput: snippets per second and latency per snippet, by design and isolation level.

    python -m mathforge.bench.sandbox [--quick]

Rows, all measured in the same run on two workloads (a one-line print, and sympy solving a quadratic):
- ``fresh interpreter``: the design before the zygote — one `python -I` process per snippet (under
  `unshare -rn` where that works, as it was), which pays interpreter start-up and every import each time;
- ``zygote, <level>``: `mathforge.evaluate.sandbox.Sandbox` at isolation "none" (rlimits only), "landlock"
  and "namespaces", one snippet at a time: the difference between "none" and the others is what the
  isolation itself costs per snippet;
- ``zygote, namespaces, N threads``: the same sandbox fed by N threads (as `eval --tool` does).
Results go to bench/results/<device>/sandbox.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result
from mathforge.evaluate.sandbox import Sandbox

WORKLOADS = {
    "print": ("print(sum(range(1000)))", "499500"),
    "sympy": ("import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - 5*x + 6, x))", "[2, 3]"),
}


def _fresh_interpreter(code: str) -> str:
    prefix = ["unshare", "-rn"] if shutil.which("unshare") else []
    if prefix and subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        prefix = []
    result = subprocess.run([*prefix, sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def _measure(run_one, code: str, expected: str, count: int, threads: int = 1) -> dict:
    """Runs `count` snippets (`threads` at a time); checks every output; latency per snippet and throughput."""
    latencies: list[float] = []

    def one(_: int) -> None:
        start = time.perf_counter()
        output = run_one(code)
        latencies.append(time.perf_counter() - start)
        if output != expected:
            raise RuntimeError(f"wrong output {output!r}, expected {expected!r}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    return {
        "snippets": count,
        "threads": threads,
        "snippets_per_s": round(count / wall, 1),
        "median_ms": round(1000 * statistics.median(latencies), 2),
        "p90_ms": round(1000 * statistics.quantiles(latencies, n=10)[-1], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few snippets: checks the code, not the speed")
    args = parser.parse_args(argv)
    fresh_n, seq_n, par_n = (3, 10, 20) if args.quick else (20, 300, 600)
    rows = []
    for workload, (code, expected) in WORKLOADS.items():
        rows.append(
            {
                "design": "fresh interpreter",
                "level": "network namespace only",
                "workload": workload,
                **_measure(_fresh_interpreter, code, expected, fresh_n),
            }
        )
        for level in ("none", "landlock", "namespaces"):
            with Sandbox(isolation=level) as sandbox:
                got = sandbox.isolation.level
                run_one = lambda c, s=sandbox: s.run(c, timeout=30).output.strip()
                rows.append(
                    {"design": "zygote", "level": got, "workload": workload, **_measure(run_one, code, expected, seq_n)}
                )
                if level == "namespaces":
                    rows.append(
                        {
                            "design": "zygote",
                            "level": got,
                            "workload": workload,
                            **_measure(run_one, code, expected, par_n, threads=4),
                        }
                    )
    table = Table(title="sandbox: snippets per second (each output checked)")
    for column in ("workload", "design", "level", "threads", "snippets", "snippets/s", "median ms", "p90 ms"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["workload"],
            r["design"],
            r["level"],
            str(r["threads"]),
            str(r["snippets"]),
            f"{r['snippets_per_s']:.1f}",
            f"{r['median_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
        )
    Console().print(table)
    if not args.quick:
        path = write_result("sandbox", {"environment": environment("sympy"), "rows": rows})
        print(f"results in {path}")


if __name__ == "__main__":
    main()
