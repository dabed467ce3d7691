"""Quality filters for synthesized rows: exact and near-duplicate removal, decontamination, lengths, answers.

Every filter takes rows and returns (kept rows, removed records); a removed record says which row
(`meta.id`), which filter, and why (the duplicate it matched, the eval item and n-gram it shares, the
length). `Report` collects the counts per filter for the run's manifest.

Hashing of words, n-grams and MinHash signatures, and the LSH banding + union-find of near dedup, run in
`mathforge._native` (C++). The key functions (`exact_key`, `first_occurrences`, `minhash`, `near_duplicate_roots`,
`LengthBounds`) are shared with the streaming finalize (stream.py), which applies them without holding the rows.
"""

from __future__ import annotations

import hashlib
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


_WORDS = re.compile(r"[^\W_]+")


def normalize(text: str) -> str:
    """Lower-case words joined by single spaces, punctuation dropped: the key for exact duplicates."""
    return " ".join(_WORDS.findall(text.lower()))


def exact_key(row: Row, fields: tuple[str, ...] = ("prompt",)) -> bytes:
    """16-byte digest of the row's `fields` after `normalize`: equal digests <=> equal normalized fields (the
    separator cannot occur in a normalized text). Exact dedup keeps these, not the texts."""
    if len(fields) == 1:
        joined = " ".join(_WORDS.findall(str(row.get(fields[0], "")).lower()))
    else:
        joined = "\x1f".join(normalize(str(row.get(f, ""))) for f in fields)
    return hashlib.blake2b(joined.encode(), digest_size=16).digest()


def first_occurrences(digests: np.ndarray) -> np.ndarray:
    """For each row of `digests` ([n, 16] uint8), the index of the first row with the same digest."""
    n = len(digests)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.ascontiguousarray(digests).view(np.uint64).reshape(n, 2)
    order = np.lexsort((words[:, 1], words[:, 0]))  # stable: equal digests stay in index order
    ordered = words[order]
    starts = np.flatnonzero(np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)])
    first = np.empty(n, dtype=np.int64)
    first[order] = np.repeat(order[starts], np.diff(np.r_[starts, n]))
    return first


def exact_dedup(rows: list[Row], fields: tuple[str, ...] = ("prompt",)) -> tuple[list[Row], list[dict]]:
    """Keeps the first row of each group whose `fields` are equal after `normalize`."""
    digests = np.frombuffer(b"".join(exact_key(r, fields) for r in rows), dtype=np.uint8).reshape(len(rows), 16)
    first = first_occurrences(digests)
    kept, removed = [], []
    for i, (row, f) in enumerate(zip(rows, first.tolist())):
        if f == i:
            kept.append(row)
        else:
            removed.append({"id": _id(row, i), "reason": "exact duplicate", "duplicate_of": _id(rows[f], f)})
    return kept, removed


def minhash(texts: list[str], *, ngram: int = 5, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures [len(texts), num_perm] uint32 of the word `ngram` sets (4 bytes a value)."""
    return _native.minhash_signatures32(list(texts), ngram, num_perm, seed)


def near_duplicate_roots(
    sig: np.ndarray, rows: np.ndarray | None = None, *, bands: int = 16, threshold: float = 0.7
) -> np.ndarray:
    """LSH banding + union-find (C++) over the signature rows `rows` (all when None), in priority order: per
    position, the earliest position of its near-duplicate component. Memory: the signatures plus O(len(rows))."""
    if sig.shape[1] % bands:
        raise ConfigError(f"near_dedup: num_perm = {sig.shape[1]} must be a multiple of bands = {bands}")
    rows = np.arange(len(sig), dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    return _native.near_duplicate_roots(np.ascontiguousarray(sig, dtype=np.uint32), rows, bands, threshold)


def near_duplicate_groups(
    texts: list[str], *, ngram: int = 5, num_perm: int = 128, bands: int = 16, threshold: float = 0.7, seed: int = 0
) -> np.ndarray:
    """For each text the index of the earliest text it is a near-duplicate of (itself if none).

    MinHash over word n-grams with LSH banding (`bands` bands of num_perm/bands rows): within a bucket of texts
    whose band values are equal, each member is joined to the bucket's earliest one when their estimated Jaccard
    similarity is >= `threshold`; groups are the connected components (union-find), rooted at their earliest text.
    """
    if num_perm % bands:
        raise ConfigError(f"near_dedup: num_perm = {num_perm} must be a multiple of bands = {bands}")
    if len(texts) < 2:
        return np.arange(len(texts))
    return near_duplicate_roots(
        minhash(texts, ngram=ngram, num_perm=num_perm, seed=seed), bands=bands, threshold=threshold
    )


def near_dedup(rows: list[Row], *, field_name: str = "prompt", **kwargs: Any) -> tuple[list[Row], list[dict]]:
    """Removes rows whose `field_name` is a MinHash near-duplicate of an earlier row's (see near_duplicate_groups)."""
    roots = near_duplicate_groups([str(r.get(field_name, "")) for r in rows], **kwargs)
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


@dataclass(frozen=True)
class LengthBounds:
    """Character bounds of prompt and response (`[quality] min_/max_prompt_chars`, …)."""

    min_prompt_chars: int = 10
    max_prompt_chars: int = 4000
    min_response_chars: int = 10
    max_response_chars: int = 16000

    def reason(self, prompt_chars: int, response_chars: int) -> str | None:
        """Why a row with these lengths is removed, or None when it is kept."""
        p, r = prompt_chars, response_chars
        if not self.min_prompt_chars <= p <= self.max_prompt_chars:
            return f"prompt has {p} chars, outside [{self.min_prompt_chars}, {self.max_prompt_chars}]"
        if not self.min_response_chars <= r <= self.max_response_chars:
            return f"response has {r} chars, outside [{self.min_response_chars}, {self.max_response_chars}]"
        return None

    def keep(self, prompt_chars: np.ndarray, response_chars: np.ndarray) -> np.ndarray:
        """`reason(...) is None`, vectorised over arrays of lengths."""
        p, r = prompt_chars, response_chars
        return (
            (p >= self.min_prompt_chars)
            & (p <= self.max_prompt_chars)
            & (r >= self.min_response_chars)
            & (r <= self.max_response_chars)
        )


def row_lengths(row: Row) -> tuple[int, int]:
    """(prompt chars, response chars) as the length filter counts them."""
    return len(str(row.get("prompt", ""))), len(str(row.get("response", "")))


def length_filter(
    rows: list[Row],
    *,
    min_prompt_chars: int = 10,
    max_prompt_chars: int = 4000,
    min_response_chars: int = 10,
    max_response_chars: int = 16000,
) -> tuple[list[Row], list[dict]]:
    """Keeps rows whose prompt and response lengths (characters) are within the bounds."""
    bounds = LengthBounds(min_prompt_chars, max_prompt_chars, min_response_chars, max_response_chars)
    kept, removed = [], []
    for i, row in enumerate(rows):
        why = bounds.reason(*row_lengths(row))
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
