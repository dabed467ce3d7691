"""Seed problems for the Skywork-Math pipeline and their diversity selection.

Seeds: `"gsm8k"` (GSM8K train, 7,473), `"math"` (MATH test minus MATH-500, 4,500, with levels), or a
data file, folder or `hf:` set (`mathforge.datasources.read_rows`) whose rows hold a question (and
optionally an answer and a level) under the field names given by `[skywork] seed_fields`. The
selection is a k-center greedy core-set over MinHash sketches of word n-grams: each pick is the seed
farthest (1 - estimated Jaccard) from all picks so far, so a small budget
covers the seed set's variety instead of its most common templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mathforge import _native
from mathforge.datasources import parse_level, pick, read_rows, text_field
from mathforge.errors import DataError


@dataclass(frozen=True)
class Seed:
    id: str
    question: str
    answer: str | None
    level: int | None  # MATH level 1-5 where known
    source: str


def load_seeds(sources: list[str], fields: dict[str, str] | None = None) -> list[Seed]:
    """Seeds from the named sources, in order (see module docstring)."""
    from mathforge.evaluate import datasets

    fields = {"question": "question", "answer": "answer", "level": "level", **(fields or {})}
    out: list[Seed] = []
    for source in sources:
        if source in ("gsm8k", "math"):
            out.extend(
                Seed(f"{source}-{p.index}", p.question, p.answer, p.level, source)
                for p in datasets.problems(source, "train")
            )
        else:
            out.extend(_file_seeds(source, fields))
    return out


def _file_seeds(source: str, fields: dict[str, str]) -> list[Seed]:
    if not source.startswith("hf:") and not Path(source).exists():
        raise DataError(f"seed source {source!r} is neither 'gsm8k', 'math' nor an existing data file or folder")
    out = []
    for row in read_rows(source):
        question = text_field(row, fields["question"])
        answer = pick(row.value, fields["answer"])
        level = pick(row.value, fields["level"])
        origin = row.key.rsplit("-", 1)[0]
        out.append(Seed(row.key, question, None if answer is None else str(answer), parse_level(level), origin))
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
