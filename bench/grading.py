"""Grading agreement and speed, side by side with Math-Verify, on our equivalence case table.

    python -m mathforge.bench.grading            # writes bench/results/cpu/grading.json

The table (`evaluate/cases/equivalence.jsonl`) holds (pred, gold, true verdict) rows by category,
written by us after the categories of the peers' public test suites. Each grader sees every case
once, in one process on one core, with caches cleared first; the timing is the whole table's wall
time divided by the number of cases. Math-Verify is called the way its README shows:
`verify(parse(gold), parse(pred))`, with short answers wrapped in `$\\boxed{…}$` so its extractor
finds them and whole responses passed as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

CASES = Path(__file__).resolve().parent.parent / "evaluate" / "cases" / "equivalence.jsonl"


def load_cases(path: Path = CASES) -> list[dict[str, Any]]:
    """The case table: dicts with category, pred, gold, equal (the true verdict)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ours(pred: str, gold: str) -> bool:
    from mathforge.evaluate import grade

    return grade(pred, gold)


def _wrap(text: str) -> str:
    is_response = "\\boxed" in text or "\\fbox" in text or "####" in text or len(text.split()) > 6
    return text if is_response else f"${{\\boxed{{{text}}}}}$"


def math_verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_text = gold.split("####")[-1].strip() if "####" in gold else gold
    return bool(verify(parse(_wrap(gold_text)), parse(_wrap(pred))))


def score(grader: Callable[[str, str], bool], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement with the true verdicts (overall and per category), seconds per case, disagreements."""
    verdicts, wrong, times = [], [], []
    for case in cases:
        start = time.perf_counter()
        try:
            verdicts.append(bool(grader(case["pred"], case["gold"])))
        except Exception:  # noqa: BLE001 - a grader that raises counts as answering "not equal"
            verdicts.append(False)
        times.append(time.perf_counter() - start)
    seconds = sum(times)
    ordinary = [t for t, c in zip(times, cases) if c["category"] != "garbage-adversarial"]
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for case, verdict in zip(cases, verdicts):
        agree = verdict == case["equal"]
        by_category[case["category"]][0] += agree
        by_category[case["category"]][1] += 1
        if not agree:
            wrong.append(
                {"category": case["category"], "pred": case["pred"], "gold": case["gold"], "expected": case["equal"]}
            )
    correct = sum(v == c["equal"] for v, c in zip(verdicts, cases))
    return {
        "agreement": correct / len(cases),
        "correct": correct,
        "cases": len(cases),
        "seconds_per_case": seconds / len(cases),
        "seconds_per_case_without_adversarial": sum(ordinary) / len(ordinary),
        "median_seconds_per_case": statistics.median(times),
        "by_category": {k: {"agreement": a / n, "cases": n} for k, (a, n) in sorted(by_category.items())},
        "disagreements": wrong,
    }


def _warm_up() -> None:
    """Imports and first-call costs (parsers, sympy) happen before timing, for both graders alike."""
    ours("\\sqrt[3]{8}", "2")
    math_verify("\\sqrt[3]{8}", "2")


def _clear_caches() -> None:
    import math_verify.parser as mv_parser

    for name in dir(mv_parser):
        func = getattr(mv_parser, name)
        if hasattr(func, "cache_clear"):
            func.cache_clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for grading.json (default bench/results/cpu)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    from mathforge.bench.common import RESULTS_DIR, environment, package_versions, write_result

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts log the whole input
    cases = load_cases()
    _warm_up()
    _clear_caches()
    mine = score(ours, cases)
    _clear_caches()
    theirs = score(math_verify, cases)
    payload = {
        "name": "grading",
        "environment": environment("sympy", "latex2sympy2_extended", "math-verify"),
        "what": "agreement with true verdicts on evaluate/cases/equivalence.jsonl, and seconds per case on one core",
        "peers": {"math-verify": package_versions("math-verify")["math-verify"]},
        "mathforge": mine,
        "math_verify": theirs,
        "speedup_vs_math_verify": theirs["seconds_per_case"] / mine["seconds_per_case"],
        "speedup_without_adversarial": theirs["seconds_per_case_without_adversarial"]
        / mine["seconds_per_case_without_adversarial"],
        "speedup_median": theirs["median_seconds_per_case"] / mine["median_seconds_per_case"],
    }
    path = write_result("grading", payload, args.out or RESULTS_DIR / "cpu")
    print(f"cases: {len(cases)}")
    print(f"mathforge   agreement {mine['agreement']:.1%}  {mine['seconds_per_case'] * 1e3:.3f} ms/case")
    print(f"math-verify agreement {theirs['agreement']:.1%}  {theirs['seconds_per_case'] * 1e3:.3f} ms/case")
    print(
        f"speed-up {payload['speedup_vs_math_verify']:.1f}x (mean), {payload['speedup_without_adversarial']:.1f}x "
        f"(mean without the adversarial category), {payload['speedup_median']:.1f}x (median)  -> {path}"
    )


if __name__ == "__main__":
    main()
