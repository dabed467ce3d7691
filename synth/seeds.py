"""Seed problems for the Skywork-Math pipeline and their diversity selection.

Seeds: a built-in source of `SEED_SOURCES` (`"gsm8k"`: GSM8K train, 7,473; `"math"`: MATH test minus
MATH-500, 4,500, with levels: a TEST split), or a data file, folder or `hf:` set
(`mathforge.datasources.read_rows`, its train split) whose rows hold a question (and optionally an answer
and a level) under the field names given by `[skywork] seed_fields`, or laid out by a data convention
(`seed_fields = {convention = "math"}`: MATH's problem / boxed solution / level).

Seed pools never come from a test split unless the recipe says so (`skywork.allow_test_split = true`):
`check_seeds` refuses a built-in test source, and any source most of whose seeds are evaluation items
(checked with the run's decontamination settings against every set of `quality.EVAL_SETS`); the few
seeds of an otherwise clean source that match an evaluation item (train/test near-twins) are dropped and
counted. When the recipe allows test splits, `check_seeds` returns the evaluation sets that seeded the
pool; the run's manifest records them, and `mathforge eval` on those sets refuses a model trained on it.

The selection is a k-center greedy core-set over MinHash sketches of word n-grams: each pick is the seed
farthest (1 - estimated Jaccard) from all picks so far, so a small budget
covers the seed set's variety instead of its most common templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mathforge import _native
from mathforge.datasources import CONVENTIONS, parse_level, pick, read_rows, text_field
from mathforge.errors import ConfigError, DataError
from mathforge.registry import Registry
from mathforge.synth.quality import DEFAULT_MIN_WORDS, DEFAULT_N, DEFAULT_THRESHOLD, EVAL_SETS, Decontaminator


@dataclass(frozen=True)
class Seed:
    id: str
    question: str
    answer: str | None
    level: int | None  # MATH level 1-5 where known
    source: str


@dataclass(frozen=True)
class BuiltinSeeds:
    """A vendored seed set (`mathforge.evaluate.datasets` name and split) and the evaluation sets it is
    drawn from (empty for a train split)."""

    dataset: str
    split: str
    what: str
    eval_sets: tuple[str, ...] = ()


SEED_SOURCES: Registry[BuiltinSeeds] = Registry("built-in seed source")
SEED_SOURCES.add("gsm8k", BuiltinSeeds("gsm8k", "train", "GSM8K train"))
SEED_SOURCES.add(
    "math", BuiltinSeeds("math", "train", "MATH test minus MATH-500 (the MATH test split)", ("math_test",))
)


def load_seeds(sources: list[str], fields: dict[str, str] | None = None) -> list[Seed]:
    """Seeds from the named sources, in order (see module docstring)."""
    from mathforge.evaluate import datasets

    fields = {"question": "question", "answer": "answer", "level": "level", **(fields or {})}
    out: list[Seed] = []
    for source in sources:
        if source in SEED_SOURCES:
            builtin = SEED_SOURCES.get(source)
            out.extend(
                Seed(f"{source}-{p.index}", p.question, p.answer, p.level, source)
                for p in datasets.problems(builtin.dataset, builtin.split)
            )
        else:
            out.extend(_file_seeds(source, fields))
    return out


def _file_seeds(source: str, fields: dict[str, str]) -> list[Seed]:
    if not source.startswith("hf:") and not Path(source).exists():
        raise DataError(
            f"seed source {source!r} is neither {', '.join(map(repr, SEED_SOURCES))} nor an existing data file or folder"
        )
    convention = (
        CONVENTIONS.get(fields["convention"], "skywork.seed_fields.convention") if "convention" in fields else None
    )
    out = []
    for i, row in enumerate(read_rows(source)):
        origin = row.key.rsplit("-", 1)[0]
        if convention is not None:
            try:
                p = convention(row.value, i)
            except (KeyError, TypeError) as error:
                raise DataError(f"{row.where}: not a {fields['convention']} row (missing {error})") from None
            out.append(Seed(row.key, p.question, p.answer, p.level, origin))
            continue
        question = text_field(row, fields["question"])
        answer = pick(row.value, fields["answer"])
        level = pick(row.value, fields["level"])
        out.append(Seed(row.key, question, None if answer is None else str(answer), parse_level(level), origin))
    return out


@dataclass
class SeedCheck:
    """What `load_checked_seeds` found: the seeds kept, the seeds dropped as evaluation items (by eval set),
    and the evaluation sets that seeded the pool knowingly (allow_test_split) with their sources and counts."""

    seeds: list[Seed] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    seeded_from_test: dict[str, dict[str, Any]] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"seeds_dropped_as_eval_items": self.dropped, "seeded_from_test": self.seeded_from_test}


def load_checked_seeds(
    sources: list[str],
    fields: dict[str, str] | None = None,
    *,
    allow_test_split: bool = False,
    decontamination: tuple[int, float, int] | None = None,
) -> SeedCheck:
    """`load_seeds`, source by source, refusing test splits unless `allow_test_split` (see module docstring):
    a ConfigError names the source and the split. `decontamination` = (n, threshold, min_words) of the run's
    [quality] settings (the defaults when None) for the check against every evaluation set."""
    check = SeedCheck()
    for source in sources:
        group = load_seeds([source], fields)
        declared = SEED_SOURCES.get(source).eval_sets if source in SEED_SOURCES else ()
        hits = {} if declared else _eval_hits(tuple(s.question for s in group), decontamination)
        test_sets = set(declared) or {e for sets in hits.values() for e in sets if _mostly(hits, len(group), e)}
        if test_sets and not allow_test_split:
            raise ConfigError(_refusal(source, sorted(test_sets), len(group), hits))
        # a test split, allowed: every eval set any of its seeds matched is recorded (a file of the whole MATH
        # test set is mostly math_test, and also holds all of MATH-500)
        recorded = test_sets | {e for sets in hits.values() for e in sets} if test_sets else set()
        for eval_set in sorted(recorded):
            entry = check.seeded_from_test.setdefault(eval_set, {"sources": [], "seeds": 0})
            entry["sources"].append(source)
            entry["seeds"] += len(group) if declared else sum(eval_set in sets for sets in hits.values())
        for i, seed in enumerate(group):
            if i in hits and not test_sets:
                for eval_set in hits[i]:
                    check.dropped[eval_set] = check.dropped.get(eval_set, 0) + 1
            else:
                check.seeds.append(seed)
    return check


def _mostly(hits: dict[int, tuple[str, ...]], total: int, eval_set: str) -> bool:
    return sum(eval_set in sets for sets in hits.values()) * 2 > total


def _refusal(source: str, test_sets: list[str], total: int, hits: dict[int, tuple[str, ...]]) -> str:
    splits = ", ".join(f"{'/'.join(EVAL_SETS.get(e)[:2])} (decontamination set {e})" for e in test_sets)
    found = (
        f"is {SEED_SOURCES.get(source).what}"
        if source in SEED_SOURCES
        else f"holds evaluation items ({len(hits)} of its {total} seeds match one)"
    )
    return (
        f"skywork.seeds: {source!r} {found}: its seeds come from the test split {splits}, and rows made from "
        "them are contaminated for that benchmark. Seed from train splits (GSM8K: 'gsm8k'; MATH train: e.g. "
        'hf:EleutherAI/hendrycks_math:<subject> with skywork.seed_fields = {convention = "math"}), or set '
        "skywork.allow_test_split = true to use it knowingly: the manifest then records the split, and "
        "`mathforge eval` on it refuses a model trained on these rows without --allow-contaminated"
    )


@lru_cache(maxsize=8)
def _eval_hits(questions: tuple[str, ...], decontamination: tuple | None) -> dict[int, tuple[str, ...]]:
    """Index of each question that matches an item of any evaluation set -> those sets (cached: the built-in
    sources are checked once per process)."""
    n, threshold, min_words = decontamination or (DEFAULT_N, DEFAULT_THRESHOLD, DEFAULT_MIN_WORDS)
    deco = _decontaminator(n, threshold, min_words, tuple(EVAL_SETS.names()))
    return {i: sets for i, q in enumerate(questions) if (sets := deco.contaminated_sets(q))}


@lru_cache(maxsize=2)
def _decontaminator(n: int, threshold: float, min_words: int, sets: tuple[str, ...]) -> Decontaminator:
    return Decontaminator(n, sets, threshold=threshold, min_words=min_words)


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
