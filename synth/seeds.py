"""Seed problems for the Skywork-Math pipeline and their diversity selection.

Seeds: `"gsm8k"` (GSM8K train, 7,473), `"math"` (MATH test minus MATH-500, 4,500, with levels), or a
JSONL file whose rows hold a question (and optionally an answer and a level) under the field names
given by `[skywork] seed_fields`. The selection is a k-center greedy core-set over MinHash sketches
of word n-grams: each pick is the seed farthest (1 - estimated Jaccard) from all picks so far, so a
small budget covers the seed set's variety instead of its most common templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mathforge import _native
from mathforge.errors import DataError
from mathforge.jsonl import iter_jsonl


@dataclass(frozen=True)
class Seed:
    id: str
    question: str
    answer: str | None
    level: int | None  # MATH level 1-5 where known
    source: str


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text` (braces balanced), or None."""
    at = text.rfind("\\boxed")
    if at < 0:
        return None
    i = text.find("{", at)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def load_seeds(sources: list[str], fields: dict[str, str] | None = None) -> list[Seed]:
    """Seeds from the named sources, in order (see module docstring)."""
    from mathforge.evaluate import datasets

    fields = {"question": "question", "answer": "answer", "level": "level", **(fields or {})}
    out: list[Seed] = []
    for source in sources:
        if source == "gsm8k":
            for i, row in enumerate(datasets.load("gsm8k", "train")):
                gold = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
                out.append(Seed(f"gsm8k-{i}", row["question"], gold, None, "gsm8k"))
        elif source == "math":
            for i, row in enumerate(datasets.load("math", "train")):
                level = re.search(r"\d", str(row.get("level", "")))
                out.append(Seed(f"math-{i}", row["problem"], boxed(row["solution"]),
                                int(level.group()) if level else None, "math"))
        else:
            out.extend(_file_seeds(Path(source), fields))
    return out


def _file_seeds(path: Path, fields: dict[str, str]) -> list[Seed]:
    if not path.is_file():
        raise DataError(f"seed source {str(path)!r} is neither 'gsm8k', 'math' nor an existing JSONL file")
    out = []
    for number, row in iter_jsonl(path):
        question = row.get(fields["question"]) if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}:{number}: no text under field {fields['question']!r}")
        answer = row.get(fields["answer"])
        level = row.get(fields["level"])
        out.append(Seed(f"{path.stem}-{number}", question, None if answer is None else str(answer),
                        int(level) if isinstance(level, (int, float)) else None, path.stem))
    return out


def k_center_greedy(texts: list[str], k: int, *, ngram: int = 3, num_perm: int = 64, seed: int = 0) -> list[int]:
    """Indices of a k-center greedy core-set of `texts` under MinHash (1 - Jaccard) distance, in pick order."""
    n = len(texts)
    if k <= 0 or k >= n:
        return list(range(n))
    sig = _native.minhash_signatures(list(texts), ngram, num_perm, seed)
    picks = [0]
    dist = 1.0 - (sig == sig[0]).mean(axis=1)
    dist[0] = -1.0  # picked items get -1 (their true distance 0 could tie with exact duplicates)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        picks.append(nxt)
        dist = np.minimum(dist, 1.0 - (sig == sig[nxt]).mean(axis=1))
        dist[nxt] = -1.0
    return picks
