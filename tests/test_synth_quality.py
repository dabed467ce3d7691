"""Quality filters: native n-gram/MinHash hashing, exact and near dedup, decontamination, lengths, answers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mathforge import _native
from mathforge.evaluate import datasets
from mathforge.synth.quality import (
    Decontaminator,
    Report,
    exact_dedup,
    length_filter,
    marked_answer,
    near_dedup,
    normalize,
    self_consistency,
)
from mathforge.synth.symbolic import generate


def test_ngram_hashes_count_windows_and_ignore_case_and_punctuation():
    assert len(_native.ngram_hashes("one two three four five", 3)) == 3
    assert len(_native.ngram_hashes("one two", 3)) == 0
    a = _native.ngram_hashes("The cat, sat ON the mat!", 2)
    b = _native.ngram_hashes("the cat sat on the   mat", 2)
    np.testing.assert_array_equal(a, b)
    assert len(set(_native.ngram_hashes("a b a b a b", 2).tolist())) == 2  # "a b" and "b a"


def test_minhash_estimates_jaccard_similarity():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = rng.sample(vocab, 300)
    other = base[:200] + rng.sample(vocab, 100)  # unigram Jaccard = 200 / 400 (if the samples are disjoint)
    sig = _native.minhash_signatures([" ".join(base), " ".join(other)], 1, 512, 7)
    true = len(set(base) & set(other)) / len(set(base) | set(other))
    assert abs((sig[0] == sig[1]).mean() - true) < 0.07
    assert sig.shape == (2, 512) and sig.dtype == np.uint64


def rows(texts):
    return [{"prompt": t, "response": "ok, fine.", "meta": {"id": f"r{i}"}} for i, t in enumerate(texts)]


def test_exact_and_near_dedup_remove_copies_and_keep_the_first():
    gsm = [r["question"] for r in datasets.load("gsm8k", "train")[:300]]
    near = gsm[5].replace(" a ", " one ", 1) + " Explain."  # a light edit of a long problem
    data = rows([*gsm, gsm[3].upper() + "  ", near])
    kept, removed = exact_dedup(data)
    assert removed == [{"id": "r300", "reason": "exact duplicate", "duplicate_of": "r3"}]
    kept, removed = near_dedup(kept, ngram=3, threshold=0.6)
    assert [r["id"] for r in removed] == ["r301"] and removed[0]["duplicate_of"] == "r5"
    assert len(kept) == 300


def test_decontamination_removes_planted_test_problems_and_nothing_else():
    gsm_test = [r["question"] for r in datasets.load("gsm8k", "test")]
    math500 = [r["problem"] for r in datasets.load("math500", "test")]
    long_ones = [q for q in gsm_test + math500 if len(q.split()) >= 40][:40:2]
    planted = []
    for i, q in enumerate(long_ones):
        words = q.split()
        if i % 4 == 0:
            planted.append(q)  # verbatim
        elif i % 4 == 1:
            planted.append(q.lower().replace(",", " ,").replace(".", " . "))  # case, spacing, punctuation
        elif i % 4 == 2:
            mid = len(words) // 2
            planted.append(" ".join(words[:mid] + ["certain"] + words[mid + 1 :]))  # one word swapped mid-way
        else:
            planted.append("Please solve this: " + q + " Show your work.")  # wrapped
    short = [q for q in gsm_test if 9 <= len(q.split()) <= 12][:3]  # shorter than n: caught when contained whole
    clean = [p.question for p in generate(1500, seed=4)] + [
        "A farmer plants 12 rows of corn with 30 plants in each row. How many plants are there?",
        "Find all real x such that x^3 - 6x^2 + 11x - 6 = 0 and list them in increasing order.",
    ]
    data = rows(clean + planted + short)
    deco = Decontaminator(n=13, threshold=0.5)
    kept, removed = deco.filter(data)
    planted_ids = {f"r{i}" for i in range(len(clean), len(data))}
    assert {r["id"] for r in removed} == planted_ids
    assert all("13-grams with" in r["reason"] or "-grams with" in r["reason"] and r["overlap"] == 1.0 for r in removed)
    assert all(r["eval_item"].split("#")[0] in ("gsm8k_test", "math_test", "math500_test") for r in removed)
    assert len(kept) == len(clean)
    assert deco.summary()["eval_items"] == 1319 + 5000 + 500


def test_typographic_punctuation_is_folded_for_index_and_query():
    assert normalize("Janet\u2019s \u201cducks\u201d \u2014 16\u00a0eggs\u200b!") == "janet s ducks 16 eggs"
    assert normalize('Janet\'s "ducks" - 16 eggs!') == "janet s ducks 16 eggs"
    assert normalize("\uff21\uff22 \u00bd") == "ab 1 2"  # NFKC: full-width letters, vulgar fractions
    gsm_test = [r["question"] for r in datasets.load("gsm8k", "test")]
    curly = [q for q in gsm_test if "\u2019" in q]
    assert len(curly) >= 5
    deco = Decontaminator(sets=["gsm8k_test"])
    for q in curly:  # verbatim, and with the apostrophes typed straight
        assert deco.contaminated(q).score == 1.0
        assert deco.contaminated(q.replace("\u2019", "'")).score == 1.0


def test_short_items_are_indexed_whole():
    math_test = [r["problem"] for r in datasets.load("math", "test")]
    short = [q for q in math_test if 3 <= len(normalize(q).split()) < 8]
    deco = Decontaminator(n=8, sets=["math_test"])
    summary = deco.summary()
    assert summary["eval_items_shorter_than_n"] == len(short) and summary["eval_items_not_indexed"] == 0
    assert len(short) == 196  # MATH test items of 3-7 words (never checked before, at min_words = 8)
    for q in short:
        m = deco.contaminated("Answer this one: " + q)
        assert m is not None and m.score == 1.0 and deco.text_of(m.eval_item).strip() == q.strip()
    assert deco.contaminated("Compute $\\cos 45^\\circ$.") is not None  # "compute cos 45 circ"
    assert deco.contaminated("Compute $\\cos 46^\\circ$.") is None


def test_length_filter_and_report_counts():
    data = rows(["short", "a reasonable question here?"])
    data[1]["response"] = "x" * 50
    kept, removed = length_filter(data, min_prompt_chars=10, max_response_chars=40)
    assert kept == [] and [r["id"] for r in removed] == ["r0", "r1"]
    assert "response has 50 chars" in removed[1]["reason"]
    report = Report()
    report.add("length", 2, removed)
    assert report.counts["length"] == {"in": 2, "removed": 2, "kept": 0}


def test_marked_answer_and_self_consistency():
    assert marked_answer("steps\nThe answer is: \\frac{3}{4}.") == "\\frac{3}{4}"
    assert marked_answer("The answer is: 7\nThe answer is: 8") == "8"
    assert marked_answer("no marker") is None
    samples = ["a\nThe answer is: 12", "b\nThe answer is: 12.0", "c\nThe answer is: 13", "d\nThe answer is: 12"]
    same = lambda a, b: float(a) == float(b)
    keep, top, info = self_consistency(samples, min_agree=0.6, equal=same)
    assert keep == [0, 1, 3] and top == "12" and info["votes"] == 3
    keep, _, _ = self_consistency(samples[:3] + ["The answer is: 14"], min_agree=0.6, equal=same)
    assert keep == []


@pytest.mark.parametrize("bad", [{"n": 0}, {"sets": ["nope_test"]}, {"threshold": 0}, {"threshold": 1.5}])
def test_decontaminator_rejects_bad_settings(bad):
    from mathforge.errors import ConfigError

    with pytest.raises(ConfigError):
        Decontaminator(**bad)
