"""Quality filters for synthesized rows: exact and near-duplicate removal, decontamination, lengths, answers.

Every filter takes rows and returns (kept rows, removed records); a removed record says which row
(`meta.id`), which filter, and why (the duplicate it matched, the eval item and n-gram it shares, the
length). `Report` collects the counts per filter for the run's manifest.

Hashing of words, n-grams and MinHash signatures runs in `mathforge._native` (C++).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mathforge import _native
from mathforge.errors import ConfigError
from mathforge.registry import Registry

Row = dict[str, Any]
# decontamination set ([quality] decontamination_sets) -> (dataset, split, text field) of mathforge.evaluate.datasets
EVAL_SETS: Registry[tuple[str, str, str]] = Registry("decontamination set")
EVAL_SETS.add("gsm8k_test", ("gsm8k", "test", "question"))
EVAL_SETS.add("math_test", ("math", "test", "problem"))
EVAL_SETS.add("math500_test", ("math500", "test", "problem"))


@dataclass
class Report:
    """Counts per filter (in order of application) and every removed row with its reason."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, seen: int, removed: list[dict[str, Any]]) -> None:
        self.counts[name] = {"in": seen, "removed": len(removed), "kept": seen - len(removed)}
        self.removed.extend({"filter": name, **r} for r in removed)


def _id(row: Row, index: int) -> str:
    return str(row.get("meta", {}).get("id", index))


def normalize(text: str) -> str:
    """Lower-case words joined by single spaces, punctuation dropped: the key for exact duplicates."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


ROW_FIELDS = ("prompt", "response")  # a dedup key names one of these, or a key of the row's meta


def key_text(row: Row, name: str) -> str:
    """The text of a dedup key: the row field `name` (prompt, response) or else its meta value ("" if absent)."""
    value = row.get(name) if name in ROW_FIELDS else row.get("meta", {}).get(name)
    return "" if value is None else str(value)


def exact_dedup(rows: list[Row], fields: tuple[str, ...] = ("prompt",)) -> tuple[list[Row], list[dict]]:
    """Keeps the first row of each group whose `fields` (row fields or meta keys) are equal after `normalize`."""
    first: dict[tuple[str, ...], str] = {}
    kept, removed = [], []
    for i, row in enumerate(rows):
        key = tuple(normalize(key_text(row, f)) for f in fields)
        if key in first:
            removed.append({"id": _id(row, i), "reason": "exact duplicate", "duplicate_of": first[key]})
        else:
            first[key] = _id(row, i)
            kept.append(row)
    return kept, removed


def near_duplicate_groups(
    texts: list[str], *, ngram: int = 5, num_perm: int = 128, bands: int = 16, threshold: float = 0.7, seed: int = 0
) -> np.ndarray:
    """For each text the index of the earliest text it is a near-duplicate of (itself if none).

    MinHash over word n-grams with LSH banding (`bands` bands of num_perm/bands rows); candidate pairs
    that share a band are confirmed when their estimated Jaccard similarity is >= `threshold`.
    """
    if num_perm % bands:
        raise ConfigError(f"near_dedup: num_perm = {num_perm} must be a multiple of bands = {bands}")
    n = len(texts)
    parent = np.arange(n)
    if n < 2:
        return parent
    sig = _native.minhash_signatures(list(texts), ngram, num_perm, seed)
    rows = num_perm // bands
    mult = (np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    with np.errstate(over="ignore"):
        for b in range(bands):
            keys = (sig[:, b * rows : (b + 1) * rows] * mult).sum(axis=1, dtype=np.uint64)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            ends = np.r_[starts[1:], n]
            for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = order[s:e]
                head = members.min()
                sims = (sig[members] == sig[head]).mean(axis=1)
                for m, sim in zip(members, sims):
                    if m != head and sim >= threshold:
                        ra, rb = find(int(m)), find(int(head))
                        parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def near_dedup(
    rows: list[Row], *, fields: tuple[str, ...] = ("prompt",), **kwargs: Any
) -> tuple[list[Row], list[dict]]:
    """Removes rows whose `fields` (joined by newlines) are a MinHash near-duplicate of an earlier row's (see
    near_duplicate_groups)."""
    roots = near_duplicate_groups(["\n".join(key_text(r, f) for f in fields) for r in rows], **kwargs)
    kept, removed = [], []
    for i, (row, root) in enumerate(zip(rows, roots)):
        if root == i:
            kept.append(row)
        else:
            removed.append({"id": _id(row, i), "reason": "near duplicate", "duplicate_of": _id(rows[root], int(root))})
    return kept, removed


class Decontaminator:
    """Flags texts sharing a word n-gram with an evaluation set (GSM8K test, MATH test, …).

    An eval item with fewer than `n` words cannot share an n-gram with anything, so it is indexed as
    one gram of its full length (when it has at least `min_words` words): a candidate is flagged if it
    contains the whole short item. `short_items` counts them — with n = 30 most GSM8K and MATH
    problems are shorter than n and are caught only verbatim, which is why n is configurable
    (13 or fewer catches light rewording of short problems).
    """

    def __init__(
        self,
        n: int = 30,
        sets: Iterable[str] = ("gsm8k_test", "math500_test"),
        *,
        min_words: int = 8,
        extra: dict[str, list[str]] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"decontamination.n = {n}: must be >= 1")
        sets = [EVAL_SETS.check(name, "decontamination.sets") for name in sets]
        from mathforge.evaluate import datasets

        self.n, self.min_words = n, min_words
        self.index: dict[int, dict[int, str]] = {}  # gram length -> gram hash -> eval item id
        self.texts: dict[str, str] = {}
        self.short_items = self.items = 0
        sources: dict[str, list[str]] = {}
        for name in sets:
            ds, split, key = EVAL_SETS.get(name)
            sources[name] = [row[key] for row in datasets.load(ds, split)]
        sources.update(extra or {})
        for name, texts in sources.items():
            for j, text in enumerate(texts):
                self._add(f"{name}#{j}", text)

    def _add(self, item_id: str, text: str) -> None:
        self.items += 1
        self.texts[item_id] = text
        grams = _native.ngram_hashes(text, self.n)
        length = self.n
        if len(grams) == 0:
            words = len(normalize(text).split())
            if words < self.min_words:
                return
            self.short_items += 1
            length, grams = words, _native.ngram_hashes(text, words)
        table = self.index.setdefault(length, {})
        for g in grams.tolist():
            table.setdefault(g, item_id)

    def match(self, text: str) -> tuple[str, int] | None:
        """(eval item id, n-gram length) of the first overlap found, or None."""
        for length, table in self.index.items():
            for g in _native.ngram_hashes(text, length).tolist():
                hit = table.get(g)
                if hit is not None:
                    return hit, length
        return None

    def filter(self, rows: list[Row], fields: tuple[str, ...] = ("prompt",)) -> tuple[list[Row], list[dict]]:
        kept, removed = [], []
        for i, row in enumerate(rows):
            hit = next((h + (f,) for f in fields if (h := self.match(str(row.get(f, "")))) is not None), None)
            if hit is None:
                kept.append(row)
            else:
                eval_id, length, f = hit
                removed.append(
                    {
                        "id": _id(row, i),
                        "reason": f"{length}-gram overlap with {eval_id} in {f}",
                        "eval_item": eval_id,
                        "eval_text": self.texts[eval_id][:300],
                        "text": str(row.get(f, ""))[:300],
                    }
                )
        return kept, removed

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "eval_items": self.items,
            "eval_items_shorter_than_n": self.short_items,
            "min_words": self.min_words,
        }


def length_filter(
    rows: list[Row],
    *,
    min_prompt_chars: int = 10,
    max_prompt_chars: int = 4000,
    min_response_chars: int = 10,
    max_response_chars: int = 16000,
) -> tuple[list[Row], list[dict]]:
    """Keeps rows whose prompt and response lengths (characters) are within the bounds."""
    kept, removed = [], []
    for i, row in enumerate(rows):
        p, r = len(str(row.get("prompt", ""))), len(str(row.get("response", "")))
        why = (
            f"prompt has {p} chars, outside [{min_prompt_chars}, {max_prompt_chars}]"
            if not min_prompt_chars <= p <= max_prompt_chars
            else f"response has {r} chars, outside [{min_response_chars}, {max_response_chars}]"
            if not min_response_chars <= r <= max_response_chars
            else None
        )
        (removed.append({"id": _id(row, i), "reason": why}) if why else kept.append(row))
    return kept, removed


def marked_answer(text: str, marker: str = "The answer is:") -> str | None:
    """The answer after the last `marker` in `text` (to the end of its line, trailing period dropped)."""
    at = text.rfind(marker)
    if at < 0:
        return None
    answer = text[at + len(marker) :].strip().split("\n", 1)[0].strip()
    answer = answer[:-1].strip() if answer.endswith(".") and not answer[:-1].endswith(".") else answer
    return answer or None


def extract(text: str, marker: str = "The answer is:") -> str | None:
    """The marked answer, else whatever `mathforge.evaluate.extract_answer` finds (boxed, last number …)."""
    found = marked_answer(text, marker)
    if found is not None:
        return found
    from mathforge.evaluate import extract_answer  # lazy: owned by the evaluation package

    return extract_answer(text)


def majority(answers: list[str | None], *, equal: Callable[[str, str], bool] | None = None) -> tuple[str | None, int]:
    """The most common answer among samples and how many samples agree with it (equivalence by `equal`)."""
    if equal is None:
        from mathforge.evaluate import grade  # lazy: owned by the evaluation package

        equal = grade
    classes: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for cls in classes:
            if cls[0] == a or equal(a, cls[0]):
                cls.append(a)
                break
        else:
            classes.append([a])
    if not classes:
        return None, 0
    best = max(classes, key=len)  # ties: the earliest class
    return best[0], len(best)


def self_consistency(
    responses: list[str],
    *,
    min_agree: float = 0.5,
    marker: str = "The answer is:",
    equal: Callable[[str, str], bool] | None = None,
) -> tuple[list[int], str | None, dict[str, Any]]:
    """Indices of the responses whose answer agrees with the majority, if the majority's share >= min_agree."""
    answers = [extract(r, marker) for r in responses]
    top, votes = majority(answers, equal=equal)
    info = {"samples": len(responses), "votes": votes, "answers": Counter(a for a in answers if a).most_common(4)}
    if top is None or votes < min_agree * len(responses):
        return [], top, info
    eq = equal or _grade()
    keep = [i for i, a in enumerate(answers) if a is not None and (a == top or eq(a, top))]
    return keep, top, info


def _grade() -> Callable[[str, str], bool]:
    from mathforge.evaluate import grade

    return grade
