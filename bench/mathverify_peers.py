"""Math-Verify's agreement with the verdicts of the ported peer grading cases (evaluate/cases/peers/).

    python -m mathforge.bench.mathverify_peers   # writes bench/results/cpu/grading_peers_mathverify.json

The bar a grader must beat on cases none of us wrote. Math-Verify is called the documented way,
`verify(parse(gold), parse(pred))` with its default extraction settings and default timeouts, one
process (per run) on one core. sympy's results on a few inputs (`4 0/0`) depend on the string hash seed, so
the whole set is run once per `PYTHONHASHSEED` in (0, 1, 2), each in a fresh interpreter; the table is the
first run, and cases whose verdict moves between seeds are listed. A bare answer (no `$`, `\\(`, `\\[` or `\\boxed` in it, and no prose) is wrapped in
`$…$` first; texts that already carry math delimiters, and whole solutions, are passed as they are.
Agreement is counted against `equal` (our verdict, the peer's own except on `conflict` lines) and, for
reference, against `peer_equal`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any


def math_verify_verdict(case: dict[str, Any]) -> bool:
    from mathforge.bench.grading import math_verify

    return math_verify(case["pred"], case["gold"], case["kind"])


def _tally(rows: list[tuple[dict[str, Any], bool | None]]) -> dict[str, Any]:
    cases = len(rows)
    errors = sum(verdict is None for _, verdict in rows)
    agree = sum(verdict is not None and verdict == case["equal"] for case, verdict in rows)
    agree_peer = sum(verdict is not None and verdict == case["peer_equal"] for case, verdict in rows)
    conflict_rows = [(case, verdict) for case, verdict in rows if "conflict" in case]
    false_equal = sum(verdict is True and not case["equal"] for case, verdict in rows)
    return {
        "cases": cases,
        "agree": agree,
        "agreement": agree / cases if cases else 0.0,
        "agree_with_peer_verdict": agree_peer,
        "conflicts": len(conflict_rows),
        "agree_on_conflicts": sum(verdict == case["equal"] for case, verdict in conflict_rows),
        "false_equal": false_equal,
        "errors": errors,
    }


def verdicts() -> dict[str, bool | None]:
    """Math-Verify's verdict on every peer case (None where it raised), by case id."""
    from mathforge.evaluate import peer_cases

    out: dict[str, bool | None] = {}
    for case in peer_cases.load():
        try:
            out[case["id"]] = math_verify_verdict(case)
        except Exception:  # noqa: BLE001 - counted as an error and as disagreement
            out[case["id"]] = None
    return out


def _child_verdicts(seed: int) -> tuple[dict[str, bool | None], float]:
    """verdicts() in a fresh interpreter with PYTHONHASHSEED=seed (sympy's results on some inputs depend on it)."""
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mathforge.bench.mathverify_peers", "--child"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def measure(seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """Tallies for the first seed's run; ids whose verdict differs between seeds are listed as unstable."""
    from mathforge.evaluate import peer_cases

    runs = [_child_verdicts(seed) for seed in seeds]
    first = runs[0][0]
    unstable = sorted(i for i in first if len({run[i] for run, _ in runs}) > 1)
    by_source: dict[str, list[tuple[dict[str, Any], bool | None]]] = defaultdict(list)
    for case in peer_cases.load():
        by_source[case["id"].rsplit("-", 1)[0]].append((case, first[case["id"]]))
    every = [row for rows in by_source.values() for row in rows]
    overall = [sum(run[case["id"]] == case["equal"] for case, _ in every) / len(every) for run, _ in runs]
    return {
        "hash_seeds": list(seeds),
        "per_source": {source: _tally(rows) for source, rows in sorted(by_source.items())},
        "total": _tally(every),
        "agreement_per_seed": overall,
        "unstable": unstable,
        "seconds_per_run": [seconds for _, seconds in runs],
        "disagreements": [
            {"id": case["id"], "math_verify": verdict, "equal": case["equal"]}
            for case, verdict in every
            if verdict != case["equal"]
        ],
    }


def markdown(result: dict[str, Any], version: str) -> str:
    lines = [
        f"## Math-Verify {version} agreement with the verdicts in these files",
        "",
        "`python -m mathforge.bench.mathverify_peers` (one process, one core, Math-Verify's default settings and "
        'timeouts; bare answers wrapped in `$…$`). "agree" counts Math-Verify\'s verdict against `equal`; on the '
        "`conflict` lines `equal` is the verdict chosen by us (see the rules above), so those lines are also shown "
        'apart, with the agreement against the peer\'s own verdict for reference. "false equal" = Math-Verify '
        "said equal where `equal` is false.",
        "",
        "| source | cases | agree | agreement | conflict lines (agree) | agree with peer_equal | false equal | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [*result["per_source"].items(), ("**all**", result["total"])]
    seeds = ", ".join(f"{a:.1%}" for a in result["agreement_per_seed"])
    for source, t in rows:
        name = source if source.startswith("**") else f"`{source}`"
        lines.append(
            f"| {name} | {t['cases']} | {t['agree']} | {t['agreement']:.1%} | {t['conflicts']} "
            f"({t['agree_on_conflicts']}) | {t['agree_with_peer_verdict']} | {t['false_equal']} | {t['errors']} |"
        )
    lines += [
        "",
        f"Table: the run with `PYTHONHASHSEED={result['hash_seeds'][0]}`. Math-Verify's verdicts depend on the hash "
        f"seed for {len(result['unstable'])} case(s) ({', '.join(result['unstable']) or 'none'}): overall agreement "
        f"per seed {result['hash_seeds']}: {seeds}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the JSON (default bench/results/cpu)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts log the whole input
    if args.child:
        print(json.dumps(verdicts()))
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    from pathlib import Path

    from mathforge.bench.common import RESULTS_DIR, environment, package_versions, write_result

    version = package_versions("math-verify")["math-verify"]
    result = measure()
    payload = {
        "name": "grading_peers_mathverify",
        "environment": environment("sympy", "latex2sympy2_extended", "math-verify"),
        "what": "Math-Verify's agreement with the verdicts of evaluate/cases/peers/*.jsonl (cases written by the "
        "peers' own test suites, not by us), per source, one run per hash seed in a fresh process on one core; "
        "seconds are whole-run wall times including interpreter start",
        "math_verify": version,
        **result,
        "markdown": markdown(result, version),
    }
    path = write_result("grading_peers_mathverify", payload, Path(args.out) if args.out else RESULTS_DIR / "cpu")
    print(payload["markdown"])
    runs = ", ".join(f"{seconds:.1f} s" for seconds in result["seconds_per_run"])
    print(f"\n{result['total']['cases']} cases; runs took {runs} -> {path}")


if __name__ == "__main__":
    main()
