"""Planted contamination against the default decontamination settings (the issue's bars).

Real GSM8K test and MATH test problems (vendored) planted verbatim, after a prefix sentence and with one
number changed, mixed into 1,000 clean symbolic problems, through the same `filter` the synth run uses.
"""

from __future__ import annotations

import pytest

from mathforge.bench.decontamination import clean_symbolic, planted
from mathforge.synth import quality


@pytest.fixture(scope="module")
def deco():
    return quality.Decontaminator()  # the defaults: n = 8, threshold 0.3, GSM8K test + MATH test + MATH-500


def rows(texts: list[str], tag: str) -> list[dict]:
    return [{"prompt": t, "response": "x", "meta": {"id": f"{tag}{i}"}} for i, t in enumerate(texts)]


def test_defaults_cover_every_reported_eval_set(deco):
    assert set(quality.DEFAULT_SETS) == {"gsm8k_test", "math_test", "math500_test"}
    summary = deco.summary()
    assert (summary["n"], summary["threshold"], summary["eval_items"]) == (8, 0.3, 1319 + 5000 + 500)


@pytest.mark.parametrize(("kind", "bar"), [("verbatim", 0.95), ("prefixed", 0.95), ("number_changed", 0.80)])
def test_planted_test_problems_are_removed(deco, kind, bar):
    plants = planted(kind, 25, seed=17)
    assert len(plants) == 25 and sum(item.startswith("gsm8k_test#") for item, _ in plants) == 13
    clean = clean_symbolic(1000, seed=3)
    kept, removed = deco.filter(rows(clean, "clean") + rows([t for _, t in plants], "plant"))
    removed_ids = {r["id"] for r in removed}
    assert not {i for i in removed_ids if i.startswith("clean")}  # 0 false removals among 1,000 clean
    caught = [
        (item, r)
        for (item, _), r in zip(plants, rows([t for _, t in plants], "plant"))
        if r["meta"]["id"] in removed_ids
    ]
    assert len(caught) / len(plants) >= bar
    # a removal names the eval item that was planted (or an identical copy of it in another set)
    by_id = {r["id"]: r for r in removed}
    for item, row in caught:
        named = by_id[row["meta"]["id"]]["eval_item"]
        assert named == item or deco.text_of(named) == deco.text_of(item)
    assert len(kept) == 1000 + 25 - len(caught)


def test_the_synth_manifest_reports_the_decontamination_settings(tmp_path):
    from mathforge.synth import config, run

    cfg = config.load(None, [f'run.output="{tmp_path / "r"}"', "run.items=20", "run.progress=false"])
    summary = run.synthesize(cfg)["decontamination"]
    assert {k: summary[k] for k in ("sets", "n", "threshold", "min_words")} == {
        "sets": ["gsm8k_test", "math_test", "math500_test"],
        "n": 8,
        "threshold": 0.3,
        "min_words": 3,
    }
    assert summary["eval_items"] == 6819 and summary["eval_items_not_indexed"] == 0
    assert summary["normalization"].startswith("NFKC")
