"""Metrics over graded samples: accuracy, pass@k (unbiased), maj@k, and breakdowns by subject/level."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of a representative of the largest group of equivalent answers (first seen wins ties)."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if same(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal-sized groups


def ks_for(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarize(records: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Aggregate per-problem records (keys: correct [list of bools, both modes], maj_correct, meta).

    Returns accuracy (mean over all samples, lenient and strict), pass@k, maj@n, count."""
    if not records:
        return {"count": 0}
    out: dict[str, Any] = {"count": len(records)}
    for mode in ("lenient", "strict"):
        flags = [r["correct"][mode] for r in records]
        out[f"accuracy_{mode}"] = sum(sum(f) / len(f) for f in flags) / len(flags)
    if n > 1:
        for k in ks_for(n):
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(r["correct"]["lenient"]), k) for r in records) / len(records)
        out[f"maj@{n}"] = sum(r["maj_correct"] for r in records) / len(records)
    return out


def breakdown(records: Sequence[dict[str, Any]], key: str, n: int) -> dict[str, Any]:
    """summarize() per value of meta[key] (MATH subject or level), sorted by value."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        value = record.get("meta", {}).get(key)
        if value is not None:
            groups[str(value)].append(record)
    return {value: summarize(groups[value], n) for value in sorted(groups)}
