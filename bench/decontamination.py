"""Decontamination recall and false removals over the n-gram size and the match threshold.

    python -m mathforge.bench.decontamination     # writes bench/results/cpu/decontamination.json

Planted contamination: real test problems (GSM8K test, MATH test, vendored), each planted one way —
verbatim, after a prefix sentence, with one number changed, with two adjacent sentences swapped — and
checked against the default eval sets (GSM8K test, MATH test, MATH-500). Clean problems: symbolic ones
(`synth.symbolic`, difficulty 2-5) and the whole GSM8K train set; a GSM8K train problem flagged against a
test item is listed with both texts (train and test hold some near-identical items: a flag there can be
right). MATH train is not vendored; as its stand-in, MATH-500 is checked against the rest of MATH test
(distinct problems of one distribution; MATH reuses a problem's wording with other numbers, so many of these
flags are twins, listed with both texts at the default). For each n the best overlap of every query is computed once; the thresholds are then read off it
("any" = the old rule, one shared n-gram). The perturbations and samples are ours (seeded), not from a
published suite; `tests/test_decontamination.py` uses the same functions for its bars.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from typing import Any

from mathforge.evaluate import datasets
from mathforge.synth import quality

PREFIXES = (
    "Solve the following problem and explain each step.",
    "Here is a question from a practice worksheet.",
    "Answer carefully; show your reasoning before the final answer.",
    "Consider this problem.",
)
_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z$])")


def prefixed(text: str, rng: random.Random) -> str | None:
    return f"{rng.choice(PREFIXES)} {text}"


def number_changed(text: str, rng: random.Random) -> str | None:
    """One number (a run of digits) replaced by another of the same or one more digit; None if none."""
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    old = int(m.group())
    new = old + rng.randint(1, 9)
    return text[: m.start()] + str(new) + text[m.end() :]


def sentences_swapped(text: str, rng: random.Random) -> str | None:
    """Two adjacent sentences swapped; None for a one-sentence text."""
    parts = _SENTENCE.split(text.strip())
    if len(parts) < 2:
        return None
    i = rng.randrange(len(parts) - 1)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return " ".join(parts)


PERTURBATIONS: dict[str, Callable[[str, random.Random], str | None]] = {
    "verbatim": lambda text, rng: text,
    "prefixed": prefixed,
    "number_changed": number_changed,
    "sentences_swapped": sentences_swapped,
}


def test_problems() -> list[tuple[str, str]]:
    """(eval item id, text) of every GSM8K test and MATH test problem (ids as the Decontaminator names them)."""
    gsm = [(f"gsm8k_test#{i}", r["question"]) for i, r in enumerate(datasets.load("gsm8k", "test"))]
    math = [(f"math_test#{i}", r["problem"]) for i, r in enumerate(datasets.load("math", "test"))]
    return gsm + math


def planted(kind: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (eval item id, perturbed text) pairs: half from GSM8K test, half from MATH test, drawn at
    random (seeded) among the items the perturbation applies to."""
    rng = random.Random(f"{seed}:{kind}")
    perturb = PERTURBATIONS[kind]
    problems = test_problems()
    out = []
    for prefix, want in (("gsm8k_test", count - count // 2), ("math_test", count // 2)):
        pool = [p for p in problems if p[0].startswith(prefix + "#")]
        rng.shuffle(pool)
        chosen = []
        for item, text in pool:
            changed = perturb(text, rng)
            if changed is not None and len(chosen) < want:
                chosen.append((item, changed))
        out.extend(chosen)
    return out


def clean_symbolic(count: int, seed: int = 0) -> list[str]:
    from mathforge.synth.symbolic import generate

    return [p.question for p in generate(count, difficulty=[2, 3, 4, 5], seed=seed)]


def best_scores(deco: quality.Decontaminator, texts: list[str]) -> list[quality.Match | None]:
    return [deco.contaminated(t) for t in texts]


def measure(ns: list[int], thresholds: list[float], planted_count: int, symbolic_count: int) -> dict[str, Any]:
    """Recall per perturbation and false removals per clean set, for every (n, threshold)."""
    plants = {kind: planted(kind, planted_count) for kind in PERTURBATIONS}
    clean = {
        "symbolic": clean_symbolic(symbolic_count),
        "gsm8k_train": [r["question"] for r in datasets.load("gsm8k", "train")],
    }
    # MATH-500 against the rest of MATH test: distinct problems of one distribution (MATH reuses templates with
    # other numbers across items, so part of these flags are same-problem twins; see the examples)
    math500 = [r["problem"] for r in datasets.load("math500", "test")]
    math_rest = [r["problem"] for r in datasets.load("math", "train")]
    rows = []
    for n in ns:
        deco = quality.Decontaminator(n, threshold=1e-9)  # every overlap is returned; thresholds applied below
        found = {kind: best_scores(deco, [t for _, t in pairs]) for kind, pairs in plants.items()}
        flagged = {name: best_scores(deco, texts) for name, texts in clean.items()}
        rest = quality.Decontaminator(n, [], threshold=1e-9, extra={"math_test_minus_500": math_rest})
        flagged["math500_vs_rest_of_math_test"] = best_scores(rest, math500)
        for t in thresholds:
            hit = (lambda m: m is not None) if t == 0 else (lambda m, t=t: m is not None and m.score >= t)
            row: dict[str, Any] = {"n": n, "threshold": t or "any"}
            row["recall"] = {kind: round(sum(map(hit, ms)) / len(ms), 4) for kind, ms in found.items()}
            row["false_removals"] = {name: sum(map(hit, ms)) for name, ms in flagged.items()}
            rows.append(row)
    return {
        "planted": {kind: len(p) for kind, p in plants.items()},
        "clean": {name: len(texts) for name, texts in clean.items()} | {"math500_vs_rest_of_math_test": 500},
        "rows": rows,
    }


def flagged_examples(n: int, threshold: float, texts: list[str], limit: int = 20) -> list[dict[str, Any]]:
    """The clean texts the chosen setting flags, with the eval item they match (to judge by eye)."""
    deco = quality.Decontaminator(n, threshold=threshold)
    out = []
    for text in texts:
        m = deco.contaminated(text)
        if m is not None:
            out.append(
                {"text": text, "eval_item": m.eval_item, "eval_text": deco.text_of(m.eval_item), "overlap": m.score}
            )
    return out[:limit] if limit else out


def main() -> None:
    from mathforge.bench.common import environment, write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 10, 13, 20, 30])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8])
    parser.add_argument("--planted", type=int, default=1000, help="planted problems per perturbation")
    parser.add_argument("--symbolic", type=int, default=1000)
    args = parser.parse_args()
    result = measure(args.n, args.thresholds, args.planted, args.symbolic)
    train = [r["question"] for r in datasets.load("gsm8k", "train")]
    flagged = flagged_examples(quality.DEFAULT_N, quality.DEFAULT_THRESHOLD, train, limit=0)
    rest = quality.Decontaminator(
        extra={"math_test_minus_500": [r["problem"] for r in datasets.load("math", "train")]}, sets=[]
    )
    math_flags = [
        {"text": q, "eval_item": m.eval_item, "eval_text": rest.text_of(m.eval_item), "overlap": m.score}
        for q in (r["problem"] for r in datasets.load("math500", "test"))
        if (m := rest.contaminated(q)) is not None
    ]
    payload = {
        "name": "decontamination",
        "environment": environment(),
        "what": __doc__.split("\n\n")[1].strip(),
        "default": {"n": quality.DEFAULT_N, "threshold": quality.DEFAULT_THRESHOLD, "sets": list(quality.DEFAULT_SETS)},
        **result,
        "gsm8k_train_flagged_at_default": {"count": len(flagged), "examples": flagged[:25]},
        "math500_flagged_against_rest_of_math_test_at_default": {"count": len(math_flags), "examples": math_flags},
    }
    print(
        f"{'n':>3} {'thr':>5} "
        + " ".join(f"{k:>17}" for k in PERTURBATIONS)
        + "  flagged: symbolic gsm8k_train math500"
    )
    for row in result["rows"]:
        recall = " ".join(f"{row['recall'][k]:>17.3f}" for k in PERTURBATIONS)
        fr = row["false_removals"]
        cross = fr["math500_vs_rest_of_math_test"]
        print(
            f"{row['n']:>3} {row['threshold']!s:>5} {recall}  {fr['symbolic']:>16} {fr['gsm8k_train']:>11} {cross:>7}"
        )
    print(write_result("decontamination", payload))


if __name__ == "__main__":
    main()
