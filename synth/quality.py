"""Quality filters for synthesized rows: exact and near-duplicate removal, decontamination, lengths, answers.

Every filter takes rows and returns (kept rows, removed records); a removed record says which row
(`meta.id`), which filter, and why (the duplicate it matched, the eval item it overlaps and how much, the
length). `Report` collects the counts per filter for the run's manifest.

One text normalisation (`words` / `normalize`: NFKC, typographic punctuation folded, case folded) serves
exact dedup and both sides of decontamination; hashing of the normalised words, n-grams and MinHash
signatures runs in `mathforge._native` (C++).
The LSH banding + union-find of near dedup runs there too. The key functions (`exact_key`,
`first_occurrences`, `minhash`, `near_duplicate_roots`, `LengthBounds`) are shared with the streaming finalize
(stream.py), which applies them without holding the rows.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
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


# Typographic punctuation and invisible characters NFKC leaves alone, folded to their ASCII forms.
_FOLD = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u00b4\u0060", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
        **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad"),  # zero-width and soft hyphen: removed
    }
)
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of `text` under the one normalisation of this module: Unicode NFKC, typographic quotes,
    apostrophes and dashes folded to ASCII, invisible characters dropped, case folded; a word is a run of
    letters and digits (punctuation, LaTeX symbols and whitespace separate words)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).translate(_FOLD).casefold())


def normalize(text: str) -> str:
    """`words` joined by single spaces: the key for exact duplicates and the text decontamination hashes."""
    return " ".join(words(text))


ROW_FIELDS = ("prompt", "response")  # a dedup key names one of these, or a key of the row's meta


def key_text(row: Row, name: str) -> str:
    """The text of a dedup key: the row field `name` (prompt, response) or else its meta value ("" if absent)."""
    value = row.get(name) if name in ROW_FIELDS else row.get("meta", {}).get(name)
    return "" if value is None else str(value)


def exact_key(row: Row, fields: tuple[str, ...] = ("prompt",)) -> bytes:
    """16-byte digest of the row's `fields` (row fields or meta keys, `key_text`) after `normalize`: equal digests
    <=> equal normalized fields (the separator cannot occur in a normalized text). Exact dedup keeps these, not
    the texts."""
    joined = "\x1f".join(normalize(key_text(row, f)) for f in fields)
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
    """Keeps the first row of each group whose `fields` (row fields or meta keys) are equal after `normalize`."""
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


# The defaults, chosen by bench/decontamination.py (results in bench/results/cpu/decontamination.json):
# recall on planted test problems (verbatim, prefixed, one number changed, two sentences swapped) against
# false removals of clean problems, over n and the threshold.
DEFAULT_N = 8
DEFAULT_THRESHOLD = 0.3
DEFAULT_MIN_WORDS = 3
DEFAULT_SETS = ("gsm8k_test", "math_test", "math500_test")
NORMALIZATION = "NFKC, typographic quotes/apostrophes/dashes folded, invisible characters dropped, case folded, words"


@dataclass(frozen=True)
class Match:
    """Why a text counts as contaminated: the eval item it overlaps, how much, and at which n-gram length."""

    eval_item: str  # "<set>#<index>", e.g. "gsm8k_test#12"
    score: float  # shared n-grams / the smaller of the two texts' n-gram counts (1.0: one contains the other)
    shared: int  # distinct n-grams the two texts share
    gram: int  # n-gram length (n, or a short item's whole length)

    def reason(self) -> str:
        return f"{self.shared} shared {self.gram}-grams with {self.eval_item} (overlap {self.score:.2f})"


class Decontaminator:
    """Flags texts that overlap an evaluation item (GSM8K test, MATH test, MATH-500 …) in word n-grams.

    Index and query go through the same normalisation (`words`). A text is contaminated by an eval item
    when they share at least `threshold` of the n-grams of the shorter of the two (the overlap coefficient
    of their n-gram sets): a verbatim copy or a copy inside a longer prompt scores 1.0, one changed number
    loses the n grams that hold it, two swapped sentences only the grams across their border. An eval item
    of fewer than `n` words (but at least `min_words`) is indexed whole, as one gram of its own length: a
    text containing it is contaminated. `contaminated(text)` answers for one text, `filter` for rows.
    """

    def __init__(
        self,
        n: int = DEFAULT_N,
        sets: Iterable[str] = DEFAULT_SETS,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        min_words: int = DEFAULT_MIN_WORDS,
        extra: dict[str, list[str]] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"decontamination.n = {n}: must be >= 1")
        if not 0 < threshold <= 1:
            raise ConfigError(f"decontamination.threshold = {threshold}: must be in (0, 1]")
        self.sets = [EVAL_SETS.check(name, "decontamination.sets") for name in sets]
        self.n, self.threshold, self.min_words = n, threshold, min_words
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.position: dict[str, int] = {}
        self.grams: list[int] = []  # distinct grams of each item
        self.postings: dict[int, list[int]] = {}  # gram hash (its length is mixed into the hash) -> items
        self.lengths: set[int] = set()  # gram lengths in the index: n and the short items' own lengths
        self.short_items = self.too_short = 0
        for name, texts in {**_eval_texts(tuple(self.sets)), **(extra or {})}.items():
            for j, text in enumerate(texts):
                self._add(f"{name}#{j}", text)

    def _add(self, item_id: str, text: str) -> None:
        canon = normalize(text)
        size = canon.count(" ") + 1 if canon else 0
        length = self.n
        if size < self.n:
            if size < self.min_words:
                self.too_short += 1
                return
            self.short_items += 1
            length = size
        grams = np.unique(_native.ngram_hashes(canon, length))
        item = len(self.ids)
        self.position[item_id] = item
        self.ids.append(item_id)
        self.texts.append(text)
        self.grams.append(len(grams))
        self.lengths.add(length)
        for g in grams.tolist():
            self.postings.setdefault(g, []).append(item)

    def matches(self, text: str) -> Iterator[Match]:
        """Every eval item `text` overlaps at or above the threshold."""
        canon = normalize(text)
        for length in sorted(self.lengths):
            grams = np.unique(_native.ngram_hashes(canon, length))
            if len(grams) == 0:
                continue
            found = [self.postings[g] for g in grams.tolist() if g in self.postings]
            if not found:
                continue
            for item, shared in Counter(chain.from_iterable(found)).items():
                own = self.grams[item]
                score = shared / (own if length < self.n else min(own, len(grams)))
                if score >= self.threshold:
                    yield Match(self.ids[item], round(score, 4), shared, length)

    def contaminated(self, text: str) -> Match | None:
        """The best-overlapping eval item when the overlap reaches the threshold, else None."""
        return max(self.matches(text), key=lambda m: (m.score, m.shared), default=None)

    def contaminated_sets(self, text: str) -> tuple[str, ...]:
        """The eval sets (names) holding an item `text` overlaps at or above the threshold."""
        return tuple(sorted({m.eval_item.split("#", 1)[0] for m in self.matches(text)}))

    def contaminated_batch(self, texts: Iterable[str]) -> list[Match | None]:
        return [self.contaminated(t) for t in texts]

    def text_of(self, eval_item: str) -> str:
        return self.texts[self.position[eval_item]]

    def filter(self, rows: list[Row], fields: tuple[str, ...] = ("prompt",)) -> tuple[list[Row], list[dict]]:
        """Keeps the rows none of whose `fields` is contaminated; a removal names the eval item and the overlap."""
        kept, removed = [], []
        for i, row in enumerate(rows):
            found = ((f, self.contaminated(str(row.get(f, "")))) for f in fields)
            f, match = next(((f, m) for f, m in found if m is not None), ("", None))
            if match is None:
                kept.append(row)
                continue
            removed.append(
                {
                    "id": _id(row, i),
                    "reason": f"{match.reason()} in {f}",
                    "eval_item": match.eval_item,
                    "overlap": match.score,
                    "eval_text": self.text_of(match.eval_item)[:300],
                    "text": str(row.get(f, ""))[:300],
                }
            )
        return kept, removed

    def summary(self) -> dict[str, Any]:
        """What the manifest records: the settings, and how many eval items were indexed whole or not at all."""
        return {
            "sets": self.sets,
            "n": self.n,
            "threshold": self.threshold,
            "match": "shared n-grams / n-grams of the shorter text >= threshold; short items: contained whole",
            "normalization": NORMALIZATION,
            "min_words": self.min_words,
            "eval_items": len(self.ids) + self.too_short,
            "eval_items_shorter_than_n": self.short_items,
            "eval_items_not_indexed": self.too_short,
        }


def _eval_texts(sets: tuple[str, ...]) -> dict[str, list[str]]:
    from mathforge.evaluate import datasets  # lazy: owned by the evaluation package

    out = {}
    for name in sets:
        ds, split, key = EVAL_SETS.get(name)
        out[name] = [row[key] for row in datasets.load(ds, split)]
    return out


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
