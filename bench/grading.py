"""Grading agreement and speed, side by side with Math-Verify, on our case table and the peers' suites.

    python -m mathforge.bench.grading            # writes bench/results/cpu/grading.json

Case sets: `evaluate/cases/equivalence.jsonl` ((pred, gold, true verdict) rows by category, written by us
after the categories of the peers' public test suites) and every `evaluate/cases/peers/<source>.jsonl`
(the peers' own grader tests ported as data, each with its repository, file, commit and licence; the true
verdict is `equal`, conflicts between peers are marked `conflict`). Each grader sees every case once, in one
process on one core, caches cleared first; per case we time the call and report the total, median, p99
and max. Math-Verify 0.9.0 is called as its README shows: `verify(parse(gold), parse(pred))`, each side
wrapped in `$…$` unless it already holds math delimiters or a box (a whole response is passed as it is).
"""

from __future__ import annotations

import argparse
import gc
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
PEERS = CASES.parent / "peers"


def load_cases(path: Path = CASES) -> list[dict[str, Any]]:
    """A case file: dicts with pred, gold, equal (the true verdict) and category (ours) or id/source (peers)."""
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for case in cases:
        case.setdefault("category", case.get("kind", "case"))
    return cases


def case_sets(peers: Path = PEERS) -> dict[str, list[dict[str, Any]]]:
    """The case sets: "equivalence" (ours) and "peers/<source>" per peer file."""
    sets = {"equivalence": load_cases()}
    for path in sorted(peers.glob("*.jsonl")) if peers.is_dir() else []:
        sets[f"peers/{path.stem}"] = load_cases(path)
    return sets


def ours(pred: str, gold: str) -> bool:
    from mathforge.evaluate import grade

    return grade(pred, gold)


def wrap_for_math_verify(text: str, kind: str = "answer") -> str:
    """Math-Verify's documented input: `$text$` for a bare answer; anything delimited (`$`, `\\(`, `\\[`, a box,
    `####`), a whole solution (`kind`), or a text of more than six words unchanged."""
    delimited = any(m in text for m in ("$", "\\boxed", "\\fbox", "\\(", "\\[", "####"))
    return text if delimited or kind == "solution" or len(text.split()) > 6 else f"${text}$"


def math_verify(pred: str, gold: str, kind: str = "answer") -> bool:
    """Math-Verify 0.9's verdict on `pred` against `gold` (a GSM8K gold's text after `####`), both wrapped by
    `wrap_for_math_verify` (`kind`: of the prediction)."""
    from math_verify import parse, verify

    gold_text = gold.split("####")[-1].strip() if "####" in gold else gold
    return bool(verify(parse(wrap_for_math_verify(gold_text)), parse(wrap_for_math_verify(pred, kind))))


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
    ordinary = [t for t, c in zip(times, cases) if c["category"] != "garbage-adversarial"] or times
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for case, verdict in zip(cases, verdicts):
        agree = verdict == case["equal"]
        by_category[case["category"]][0] += agree
        by_category[case["category"]][1] += 1
        if not agree:
            wrong.append(
                {
                    "id": case.get("id", case["category"]),
                    "pred": case["pred"][:300],
                    "gold": case["gold"][:300],
                    "expected": case["equal"],
                }
            )
    correct = sum(v == c["equal"] for v, c in zip(verdicts, cases))
    return {
        "agreement": correct / len(cases),
        "correct": correct,
        "cases": len(cases),
        "seconds_per_case": seconds / len(cases),
        "seconds_per_case_without_adversarial": sum(ordinary) / len(ordinary),
        "median_seconds_per_case": statistics.median(times),
        "p99_seconds_per_case": sorted(times)[min(len(times) - 1, int(0.99 * len(times)))],
        "max_seconds_per_case": max(times),
        "total_seconds": seconds,
        "by_category": {k: {"agreement": a / n, "cases": n} for k, (a, n) in sorted(by_category.items())},
        "disagreements": wrong,
        "_times": times,
    }


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall agreement and timing of several `score` results (same keys as `_summary` reads)."""
    times = [t for r in results for t in r["_times"]]
    correct, cases = sum(r["correct"] for r in results), sum(r["cases"] for r in results)
    return {
        "agreement": correct / cases,
        "correct": correct,
        "cases": cases,
        "seconds_per_case": sum(times) / len(times),
        "median_seconds_per_case": statistics.median(times),
        "p99_seconds_per_case": sorted(times)[min(len(times) - 1, int(0.99 * len(times)))],
        "max_seconds_per_case": max(times),
        "total_seconds": sum(times),
    }


def _warm_up() -> None:
    """Imports and first-call costs (parsers, sympy) happen before timing, for both graders alike."""
    from mathforge.evaluate import symbolic

    symbolic.load()
    ours("\\sqrt[3]{8}", "2")
    math_verify("\\sqrt[3]{8}", "2")


def _clear_caches() -> None:
    import math_verify.parser as mv_parser

    for name in dir(mv_parser):
        func = getattr(mv_parser, name)
        if hasattr(func, "cache_clear"):
            func.cache_clear()


def _run_set(cases: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each grader on the set with cold caches and a collected heap (so a garbage-collection pause caused by the
    other grader's garbage is not charged to this one: one such pause put 150-210 ms on a 1 ms case)."""
    _clear_caches()
    gc.collect()
    mine = score(ours, cases)
    _clear_caches()
    gc.collect()
    theirs = score(math_verify, cases)
    return mine, theirs


def _summary(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    keep = ("agreement", "correct", "cases", "seconds_per_case", "median_seconds_per_case")
    keep += ("p99_seconds_per_case", "max_seconds_per_case", "total_seconds")
    return {
        "mathforge": {k: mine[k] for k in keep},
        "math_verify": {k: theirs[k] for k in keep},
        "speedup_total": theirs["total_seconds"] / mine["total_seconds"],
        "speedup_median": theirs["median_seconds_per_case"] / mine["median_seconds_per_case"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for grading.json (default bench/results/cpu)")
    parser.add_argument("--peers", type=Path, default=PEERS, help="folder of the peer case files")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    from mathforge.bench.common import RESULTS_DIR, environment, package_versions, write_result

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts log the whole input
    _warm_up()
    sources, results, all_cases = {}, {}, []
    for name, cases in case_sets(args.peers).items():
        mine, theirs = _run_set(cases)
        results[name] = (mine, theirs)
        sources[name] = {**_summary(mine, theirs), "disagreements": {"mathforge": mine["disagreements"]}}
        sources[name]["disagreements"]["math_verify"] = theirs["disagreements"]
        if name == "equivalence":
            sources[name]["by_category"] = {"mathforge": mine["by_category"], "math_verify": theirs["by_category"]}
        all_cases += cases
        print(
            f"{name:28s} {len(cases):4d} cases  mathforge {mine['agreement']:6.1%}  math-verify {theirs['agreement']:6.1%}"
            f"  median {mine['median_seconds_per_case'] * 1e3:.2f} / {theirs['median_seconds_per_case'] * 1e3:.2f} ms"
            f"  max {mine['max_seconds_per_case'] * 1e3:.1f} / {theirs['max_seconds_per_case'] * 1e3:.1f} ms"
        )
    peer_names = [n for n in results if n.startswith("peers/")]
    payload = {
        "name": "grading",
        "environment": environment("sympy", "latex2sympy2_extended", "math-verify"),
        "what": "agreement with the true verdicts, and seconds per case on one core, on evaluate/cases/ "
        "(equivalence.jsonl: ours; peers/*.jsonl: the peers' own grader tests, ported as data)",
        "peers": {"math-verify": package_versions("math-verify")["math-verify"]},
        "overall": _summary(*(_combine([r[k] for r in results.values()]) for k in (0, 1))),
        "peers_overall": _summary(*(_combine([results[n][k] for n in peer_names]) for k in (0, 1)))
        if peer_names
        else None,
        "sources": sources,
    }
    path = write_result("grading", payload, args.out or RESULTS_DIR / "cpu")
    o = payload["overall"]
    print(
        f"all {len(all_cases)} cases: mathforge {o['mathforge']['agreement']:.1%}, math-verify "
        f"{o['math_verify']['agreement']:.1%}; speed-up {o['speedup_total']:.1f}x total, {o['speedup_median']:.1f}x "
        f"median; max {o['mathforge']['max_seconds_per_case'] * 1e3:.1f} ms per case  -> {path}"
    )


if __name__ == "__main__":
    main()
