"""The Skywork pipeline's keeps against the loopback teacher: several distinct correct solutions per question,
self-consistency over all drafts, the hard-stage prompt, and replies cut at max_tokens never kept."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from fake_openai import LoopbackServer

from mathforge.synth import config, run

SEEDS = [
    {"question": "Tom has 3 apples and buys 5 more. How many apples does he have?", "answer": "8", "level": 1},
    {"question": "A box holds 6 pens. How many pens are in 4 boxes?", "answer": "24", "level": 2},
    {"question": "Find the sum of the roots of $x^2 - 7x + 10 = 0$.", "answer": "7", "level": 5},
    {"question": "How many positive divisors does 36 have?", "answer": "9", "level": 5},
]
GOLD = {s["question"]: s["answer"] for s in SEEDS}
TRAILER = "\n\nThat completes the solution; every step above was checked twice against the given numbers."


def teacher(messages, index):
    """A scripted teacher: which template is asked decides the reply; `index` (the choice) varies the drafts."""
    p = messages[-1]["content"]
    question = p.rsplit("Problem:", 1)[-1].strip()
    if 'starting "Problem:"' in p:  # an Evol round
        return f"Problem: Evolved once more: {question}"
    if "Example problem:" in p:  # the teacher's new problem (the hard prompt says "clearly harder")
        kind = "Hard" if "clearly harder" in p else "New"
        return f"Problem: {kind} teacher question {len(p)}?\nSolution: Worked.\nThe answer is: 7"
    if "Check the solution" in p:  # self-check drafts: answers 7, 7, 9, 7, 9; drafts 0 and 3 the same text
        return [
            "Solution: Checked.\nThe answer is: 7",
            "Solution: Re-derived another way.\nThe answer is: 7",
            "Solution: A slip.\nThe answer is: 9",
            "Solution: Checked!\nThe answer is: 7",
            "Solution: Another slip.\nThe answer is: 9",
        ][index]
    if question in GOLD:  # answer augmentation: 3 correct (2 distinct: 0 and 2 differ in punctuation) + 1 wrong
        gold = GOLD[question]
        return [
            f"Add them up.\nThe answer is: {gold}",
            f"Count one by one.\nThe answer is: {gold}",
            f"Add them up!\nThe answer is: {gold}",
            "A guess.\nThe answer is: 999",
        ][index] + TRAILER
    return f"Route {index}.\nThe answer is: {9 if index == 2 else 7}" + TRAILER  # solving an evolved problem


def seeds_file(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return path


def sky_cfg(tmp_path: Path, url: str, out: str, **sets) -> config.SynthConfig:
    base = {
        "run.output": json.dumps(str(tmp_path / out)),
        "run.items": 12,
        "run.progress": "false",
        "pipeline.kind": '"skywork"',
        "backend.kind": '"openai"',
        "backend.base_urls": json.dumps([url]),
        "backend.concurrency": 4,
        "skywork.seeds": json.dumps([str(seeds_file(tmp_path))]),
        "skywork.seed_fields": '{question = "question", answer = "answer", level = "level"}',
        "skywork.methods": '["answer_aug", "evol", "teacher"]',
        "skywork.evol_rounds": 1,
        "skywork.mix": "{normal = 1, hard = 1}",
        "quality.exact_dedup": "false",  # one prompt, several solutions: kept apart from the dedup settings
        "quality.near_dedup": "false",
        "quality.decontaminate": "false",
        **sets,
    }
    return config.load(None, [f"{k}={v}" for k, v in base.items()])


def rows_by_item(out: Path) -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = defaultdict(list)
    for path in sorted((out / "data").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            items[re.sub(r"-s\d+$", "", row["meta"]["id"])].append(row)
    return items


def test_distinct_correct_solutions_and_self_consistency_over_all_drafts(tmp_path):
    with LoopbackServer(teacher) as srv:
        m = run.synthesize(sky_cfg(tmp_path, srv.url, "sky", **{"quality.self_consistency": 5}))
        prompts = srv.prompts
    items = rows_by_item(tmp_path / "sky")
    assert m["generation_rejections"] == {} and len(items) == 12
    by_method = Counter()
    for item_id, rows in items.items():
        meta = rows[0]["meta"]
        by_method[meta["method"]] += len(rows)
        assert [r["meta"]["id"] for r in rows] == [item_id] + [f"{item_id}-s{j}" for j in range(1, len(rows))]
        assert len({r["prompt"] for r in rows}) == 1 and len({r["response"] for r in rows}) == len(rows)
        assert [r["meta"]["solution"] for r in rows] == list(range(len(rows)))
        assert meta["usage"]["calls"] >= 1 and all(r["meta"]["usage"] == {} for r in rows[1:])  # counted once
        if meta["method"] == "answer_aug":  # 4 samples, 3 correct, 2 distinct: both kept, never the wrong one
            gold = GOLD[rows[0]["prompt"]]
            assert [r["response"] for r in rows] == [
                f"Add them up.\nThe answer is: {gold}",
                f"Count one by one.\nThe answer is: {gold}",
            ]
            assert meta["samples"] == 4 and meta["correct"] == 3
        elif meta["method"] == "evol":  # 5 drafts, 4 say 7: all 4 (distinct) kept, the 9 not
            assert [r["response"] for r in rows] == [f"Route {i}.\nThe answer is: 7" for i in (0, 1, 3, 4)]
            assert (meta["votes"], meta["samples"], meta["agreement"]) == (4, 5, 0.8)
        else:  # teacher + self-check: 5 checked drafts, 3 say 7, 2 of them distinct
            assert [r["response"] for r in rows] == [
                "Checked.\nThe answer is: 7",
                "Re-derived another way.\nThe answer is: 7",
            ]
            assert (meta["votes"], meta["samples"], meta["agreement"]) == (3, 5, 0.6)
            hard = meta["stage"] == "hard"
            assert meta["prompt_template"] == ("teacher_hard.txt" if hard else "teacher.txt")
            assert rows[0]["prompt"].startswith("Hard teacher" if hard else "New teacher")
    assert by_method == {"answer_aug": 4 * 2, "evol": 4 * 4, "teacher": 4 * 2} and m["rows"] == 32
    # the hard prompt went out for the 2 hard teacher items, the normal one for the 2 normal ones
    assert sum(n for p, n in prompts.items() if "clearly harder" in p) == 2
    assert sum(n for p, n in prompts.items() if "Example problem:" in p and "clearly harder" not in p) == 2


def test_replies_cut_at_max_tokens_are_never_kept_and_are_counted(tmp_path):
    # every reply's answer line sits in its first half, so a cut reply would pass every other check
    with LoopbackServer(teacher, faults={"length": 0.2}, seed=5) as srv:
        cfg = sky_cfg(
            tmp_path, srv.url, "cut", **{"run.items": 60, "skywork.solutions": 1, "skywork.methods": '["evol"]'}
        )
        m = run.synthesize(cfg)
        counts = srv.counts
    cut_replies, cut_choices = counts["length"], counts["cut"]
    assert 8 <= cut_replies <= 40 and cut_choices == cut_replies  # one choice per request here
    assert m["generation_rejections"] == {"evol: truncated": cut_replies}
    assert m["usage"]["truncated"] == cut_choices
    assert m["rows"] == 60 - cut_replies
    for rows in rows_by_item(tmp_path / "cut").values():
        assert rows[0]["response"] == "Route 0.\nThe answer is: 7" and rows[0]["prompt"].startswith("Evolved once more")
