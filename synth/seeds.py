"""Seed problems for the Skywork-Math pipeline and their diversity selection.

Seeds: a built-in source of `SEED_SOURCES` (`"gsm8k"`: GSM8K train, 7,473; `"math"`: MATH test minus
MATH-500, 4,500, with levels: a TEST split), or a data file, folder or `hf:` set
(`mathforge.datasources.read_rows`, its train split) whose rows hold a question (and optionally an answer
and a level) under the field names given by `[skywork] seed_fields`, or laid out by a data convention
(`seed_fields = {convention = "math"}`: MATH's problem / boxed solution / level).

Seed pools never come from a test split unless the recipe says so (`skywork.allow_test_split = true`):
`load_checked_seeds` refuses a built-in test source, and any source most of whose seeds are evaluation items
(checked with the run's decontamination settings against every set of `quality.EVAL_SETS`); the few
seeds of an otherwise clean source that match an evaluation item (train/test near-twins) are dropped and
counted. When the recipe allows test splits, `load_checked_seeds` returns the evaluation sets that seeded the
pool; the run's manifest records them, and `mathforge eval` on those sets refuses a model trained on it.
The rule for one source is `check_source` (a `TestSplitRule` names the settings in its refusal): the target
sets of `mathforge synth select` (synth/select.py) go through it too.

Selection (`[skywork] select = k`) is a core-set that covers the seed space: each seed becomes a TF-IDF
vector of its word unigrams and bigrams (numbers folded to one token, LaTeX commands kept as words),
feature-hashed with random signs into `dim` dimensions (a sparse random projection: inner products kept
in expectation) and L2-normalised; the distance is the cosine distance. The k seeds are the medoids of a
spherical k-means (the member nearest each centroid), which minimises the mean distance from a seed to
its nearest pick — what "covers" means here (`coverage`). The k-center greedy rule (each pick the seed
farthest from all picks) was measured worse than random picks on that mean (it spends the budget on
outliers), hence not used. The selection is stratified: the budget is split over sources by
`select_mix` (default: in proportion to the seeds each has) and, within a source, over MATH levels in
proportion to their counts. Everything random (order, k-means start) follows `seed`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class TestSplitRule:
    """How a refusal names the setting it checks (the check itself is `check_source`, one for seed pools and
    influence target sets alike)."""

    key: str  # the setting that named the source
    allow: str  # the setting that allows a test split
    items: str  # what the source's rows are ("seeds", "target problems")
    consequence: str  # why a test split is a problem
    train_hint: str  # how to name MATH train instead
    recorded: str  # where the allowed split is recorded, and what it then refuses


SKYWORK_SEEDS = TestSplitRule(
    "skywork.seeds",
    "skywork.allow_test_split",
    "seeds",
    "rows made from them are contaminated for that benchmark",
    'skywork.seed_fields = {convention = "math"}',
    "the manifest then records the split, and `mathforge eval` on it refuses a model trained on these rows without "
    "--allow-contaminated",
)


@dataclass
class SourceCheck:
    """One source against the evaluation sets: the indices of its rows kept, the rows dropped as evaluation
    items (by eval set), and the evaluation sets it was knowingly drawn from (allow_test_split) with counts."""

    keep: list[int]
    dropped: dict[str, int]
    seeded_from_test: dict[str, dict[str, Any]]


def check_source(
    source: str,
    questions: Sequence[str],
    *,
    builtin: BuiltinSeeds | None = None,
    allow_test_split: bool = False,
    decontamination: tuple[int, float, int] | None = None,
    rule: TestSplitRule = SKYWORK_SEEDS,
) -> SourceCheck:
    """The test-split rule for one source (see module docstring): a built-in source declares its evaluation sets
    (`builtin`); any other is a test split when most of its `questions` match items of one evaluation set. A
    test split is a ConfigError naming the source and the split unless `allow_test_split`; a clean source loses
    its few rows that match an evaluation item. `decontamination` = (n, threshold, min_words), None = defaults."""
    declared = builtin.eval_sets if builtin is not None else ()
    hits = {} if declared else _eval_hits(tuple(questions), decontamination)
    test_sets = set(declared) or {e for sets in hits.values() for e in sets if _mostly(hits, len(questions), e)}
    if test_sets and not allow_test_split:
        raise ConfigError(_refusal(source, builtin, sorted(test_sets), len(questions), hits, rule))
    # a test split, allowed: every eval set any of its rows matched is recorded (a file of the whole MATH
    # test set is mostly math_test, and also holds all of MATH-500)
    recorded = test_sets | {e for sets in hits.values() for e in sets} if test_sets else set()
    seeded = {
        e: {"sources": [source], "seeds": len(questions) if declared else sum(e in sets for sets in hits.values())}
        for e in sorted(recorded)
    }
    dropped: dict[str, int] = {}
    keep = []
    for i in range(len(questions)):
        if i in hits and not test_sets:
            for eval_set in hits[i]:
                dropped[eval_set] = dropped.get(eval_set, 0) + 1
        else:
            keep.append(i)
    return SourceCheck(keep, dropped, seeded)


def add_check(seeded_from_test: dict[str, dict[str, Any]], dropped: dict[str, int], check: SourceCheck) -> None:
    """Adds one source's `check` into the totals of several (the shape synth manifests and select.json record)."""
    for eval_set, entry in check.seeded_from_test.items():
        into = seeded_from_test.setdefault(eval_set, {"sources": [], "seeds": 0})
        into["sources"] += entry["sources"]
        into["seeds"] += entry["seeds"]
    for eval_set, count in check.dropped.items():
        dropped[eval_set] = dropped.get(eval_set, 0) + count


def load_checked_seeds(
    sources: list[str],
    fields: dict[str, str] | None = None,
    *,
    allow_test_split: bool = False,
    decontamination: tuple[int, float, int] | None = None,
) -> SeedCheck:
    """`load_seeds`, source by source, through `check_source`: a test split is a ConfigError naming the source
    and the split unless `allow_test_split`. `decontamination` = (n, threshold, min_words) of the run's
    [quality] settings (the defaults when None) for the check against every evaluation set."""
    check = SeedCheck()
    for source in sources:
        group = load_seeds([source], fields)
        one = check_source(
            source,
            [s.question for s in group],
            builtin=SEED_SOURCES.get(source) if source in SEED_SOURCES else None,
            allow_test_split=allow_test_split,
            decontamination=decontamination,
        )
        add_check(check.seeded_from_test, check.dropped, one)
        check.seeds += [group[i] for i in one.keep]
    return check


def _mostly(hits: dict[int, tuple[str, ...]], total: int, eval_set: str) -> bool:
    return sum(eval_set in sets for sets in hits.values()) * 2 > total


def _refusal(
    source: str,
    builtin: BuiltinSeeds | None,
    test_sets: list[str],
    total: int,
    hits: dict[int, tuple[str, ...]],
    rule: TestSplitRule,
) -> str:
    splits = ", ".join(f"{'/'.join(EVAL_SETS.get(e)[:2])} (decontamination set {e})" for e in test_sets)
    found = (
        f"is {builtin.what}"
        if builtin is not None
        else f"holds evaluation items ({len(hits)} of its {total} {rule.items} match one)"
    )
    return (
        f"{rule.key}: {source!r} {found}: its {rule.items} come from the test split {splits}, and "
        f"{rule.consequence}. Use train splits (GSM8K: 'gsm8k'; MATH train: e.g. "
        f"hf:EleutherAI/hendrycks_math:<subject> with {rule.train_hint}), or set {rule.allow} = true to use it "
        f"knowingly: {rule.recorded}"
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


_TOKEN = re.compile(r"\\[a-zA-Z]+|[a-zA-Z]+|\d+(?:\.\d+)?|[^\sa-zA-Z\d]")


def _grams(text: str) -> list[str]:
    """Word unigrams and bigrams of `text`, lower-cased, each number folded to "<n>"."""
    words = ["<n>" if w[0].isdigit() else w for w in _TOKEN.findall(text.lower())]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def embed(texts: Sequence[str], dim: int = 256) -> np.ndarray:
    """[len(texts), dim] float32 rows of unit length: sublinear-TF x IDF weights of each text's unigrams and
    bigrams, feature-hashed (crc32) with a random sign into `dim` buckets. Cosine distance = 1 - dot product."""
    vocab: dict[str, int] = {}
    docs, feats = [], []
    for i, text in enumerate(texts):
        grams = _grams(text)
        feats.extend(vocab.setdefault(g, len(vocab)) for g in grams)
        docs.extend([i] * len(grams))
    n, size = len(texts), max(1, len(vocab))
    pairs, tf = np.unique(np.asarray(docs, np.int64) * size + np.asarray(feats, np.int64), return_counts=True)
    doc, feat = pairs // size, pairs % size
    idf = np.log((1 + n) / (1 + np.bincount(feat, minlength=size))) + 1.0
    hashes = np.fromiter((zlib.crc32(g.encode()) for g in vocab), np.int64, len(vocab))
    bucket, sign = hashes % dim, np.where((hashes >> 16) & 1, 1.0, -1.0)
    out = np.zeros((n, dim), np.float32)
    np.add.at(out, (doc, bucket[feat]), (sign[feat] * (1.0 + np.log(tf)) * idf[feat]).astype(np.float32))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def coverage(vectors: np.ndarray, picks: Sequence[int], block: int = 4096) -> float:
    """Mean cosine distance from each row of `vectors` to its nearest picked row (0 = every row picked)."""
    chosen = vectors[np.asarray(picks, np.int64)]
    nearest = [(vectors[i : i + block] @ chosen.T).max(axis=1) for i in range(0, len(vectors), block)]
    return float(np.mean(1.0 - np.concatenate(nearest)))


def kmeans_medoids(vectors: np.ndarray, k: int, *, seed: int = 0, iters: int = 5) -> list[int]:
    """Indices of k rows of `vectors` (unit rows) covering them: the medoids (member nearest the centroid) of a
    spherical k-means started from k random rows; clusters that end empty are refilled with random rows."""
    n = len(vectors)
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    rng = np.random.default_rng(seed)
    centroids = vectors[rng.choice(n, k, replace=False)].astype(np.float32)
    for _ in range(iters):
        owner, _ = _nearest(vectors, centroids)
        order = np.argsort(owner, kind="stable")
        used, starts = np.unique(owner[order], return_index=True)
        sums = np.zeros_like(centroids)
        sums[used] = np.add.reduceat(vectors[order], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] < 1e-9
        centroids = sums / np.maximum(norms, 1e-9)
        if empty.any():
            centroids[empty] = vectors[rng.choice(n, int(empty.sum()), replace=False)]
    owner, closeness = _nearest(vectors, centroids)
    order = np.lexsort((-closeness, owner))  # by cluster, the closest member first
    first = np.ones(n, bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    picks = order[first]
    if len(picks) < k:  # clusters left empty at the end: top up with random other rows
        rest = np.setdiff1d(np.arange(n), picks)
        picks = np.concatenate([picks, rng.choice(rest, k - len(picks), replace=False)])
    return sorted(int(i) for i in picks)


def _nearest(vectors: np.ndarray, centroids: np.ndarray, cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the index of its most similar centroid and that similarity, in row blocks of at most
    `cells` similarities (memory stays bounded for large seed sets)."""
    block = max(1, cells // max(1, len(centroids)))
    owner = np.empty(len(vectors), np.int64)
    best = np.empty(len(vectors), np.float32)
    for i in range(0, len(vectors), block):
        sims = vectors[i : i + block] @ centroids.T
        owner[i : i + block] = sims.argmax(axis=1)
        best[i : i + block] = sims[np.arange(len(sims)), owner[i : i + block]]
    return owner, best


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """`total` split over parts in proportion to `weights` (largest remainders), no part above its cap; what a
    capped part cannot take goes to the others in the same proportions."""
    quota = [0] * len(weights)
    open_ = [i for i, w in enumerate(weights) if w > 0 and caps[i] > 0]
    left = min(total, sum(caps[i] for i in open_))
    while left > 0 and open_:
        weight = sum(weights[i] for i in open_)
        share = {i: left * weights[i] / weight for i in open_}
        add = {i: int(share[i]) for i in open_}
        for i in sorted(open_, key=lambda i: (-(share[i] - add[i]), i))[: left - sum(add.values())]:
            add[i] += 1
        for i in open_:
            take = min(add[i], caps[i] - quota[i])
            quota[i] += take
            left -= take
        open_ = [i for i in open_ if quota[i] < caps[i]]
    return quota


def select(
    seeds: Sequence[Seed],
    k: int,
    *,
    mix: Mapping[str, float] | None = None,
    by_level: bool = True,
    seed: int = 0,
    dim: int = 256,
    vectors: np.ndarray | None = None,
) -> list[Seed]:
    """k seeds covering `seeds` (see the module docstring), stratified by source (`mix`: source -> weight, a
    source it does not name gets none, one absent from `seeds` is ignored; empty = in proportion to each
    source's count; a seed file's source is its name without suffix) and, with `by_level`,
    by level within a source; in a seeded random order. All seeds (in their order) when k <= 0 or k >= len(seeds).
    `vectors`: `embed` of the seeds' questions when already at hand."""
    if k <= 0 or k >= len(seeds):
        return list(seeds)
    strata: dict[tuple[str, int | None], list[int]] = {}
    for i, s in enumerate(seeds):
        strata.setdefault((s.source, s.level if by_level else None), []).append(i)
    sources = sorted({src for src, _ in strata})
    counts = {src: sum(len(v) for (s, _), v in strata.items() if s == src) for src in sources}
    mix = dict(mix or {})
    weights = [float(mix.get(src, 0.0)) if mix else float(counts[src]) for src in sources]
    if sum(weights) <= 0:
        raise ConfigError(f"skywork.select_mix = {mix} gives no weight to any of this pool's seed sources {sources}")
    per_source = dict(zip(sources, apportion(k, weights, [counts[src] for src in sources])))
    vectors = embed([s.question for s in seeds], dim) if vectors is None else vectors
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for src in sources:
        keys = sorted((key for key in strata if key[0] == src), key=lambda key: (key[1] is None, key[1] or 0))
        sizes = [len(strata[key]) for key in keys]
        for key, quota in zip(keys, apportion(per_source[src], sizes, sizes)):
            members = np.asarray(strata[key])
            members = members[rng.permutation(len(members))]  # ties (duplicates, equal distances) broken at random
            chosen = kmeans_medoids(vectors[members], quota, seed=int(rng.integers(1 << 31)))
            picks.extend(int(members[j]) for j in chosen)
    order = rng.permutation(len(picks))  # a seeded shuffle: any prefix of the pool keeps about the mix
    return [seeds[picks[i]] for i in order]
