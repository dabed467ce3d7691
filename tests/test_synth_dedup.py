"""Dedup keys per pipeline: [quality] dedup_on / near_dedup_on, their defaults, and the JiuZhang distillation set
that keeps one seed text under several education stages and variants."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from fake_openai import LoopbackServer

from mathforge.errors import ConfigError
from mathforge.synth import config, run
from mathforge.synth.quality import exact_dedup, near_dedup

WORDS = "alpha brave cedar delta ember frost grove harbor island jasper kettle lumen maple nickel orbit prism".split()


def keys(*sets: str) -> tuple[list[str], list[str]]:
    q = config.load(None, list(sets)).quality
    return q.dedup_on, q.near_dedup_on


def test_defaults_per_pipeline_and_overrides():
    assert keys() == (["prompt"], ["prompt"])  # symbolic
    assert keys('pipeline.kind="skywork"', 'backend.kind="openai"') == (["prompt", "response"], ["response"])
    jz = ['pipeline.kind="jiuzhang"', 'backend.kind="openai"']
    assert keys(*jz) == (["prompt"], ["prompt"])  # synthesized rows: problem -> solution
    assert keys(*jz, 'jiuzhang.step="distill"') == (["seed_id", "stage", "method"], ["response"])
    assert keys(*jz, 'quality.dedup_on=["prompt", "stage"]', 'quality.near_dedup_on=["response"]') == (
        ["prompt", "stage"],
        ["response"],
    )
    with pytest.raises(ConfigError, match=r"quality.dedup_on\[1\]: unknown field 'stgae'; allowed: prompt, response"):
        keys('quality.dedup_on=["prompt", "stgae"]')
    with pytest.raises(ConfigError, match=r"quality.near_dedup_on\[0\]: unknown field 'text'"):
        keys('quality.near_dedup_on=["text"]')


def test_keys_read_row_fields_and_meta():
    rows = [
        {"prompt": "Same text.", "response": "One way.", "meta": {"id": "a", "stage": "aime"}},
        {"prompt": "same text", "response": "Another way.", "meta": {"id": "b", "stage": "aime"}},
        {"prompt": "Same text.", "response": "One way.", "meta": {"id": "c", "stage": "amc8"}},
    ]
    assert [r["meta"]["id"] for r in exact_dedup(rows)[0]] == ["a"]
    assert [r["meta"]["id"] for r in exact_dedup(rows, ("prompt", "response"))[0]] == ["a", "b"]
    kept, removed = exact_dedup(rows, ("prompt", "stage"))
    assert [r["meta"]["id"] for r in kept] == ["a", "c"] and removed[0] == {
        "id": "b",
        "reason": "exact duplicate",
        "duplicate_of": "a",
    }
    long = [{**r, "response": r["response"] + " " + " ".join(WORDS)} for r in rows]
    assert [r["meta"]["id"] for r in near_dedup(long, fields=("response",), ngram=2, threshold=0.5)[0]] == ["a"]


def wordy_teacher(messages, index):
    """Replies whose words depend on the whole prompt (so two prompts never give near-duplicate replies)."""
    prompt = messages[-1]["content"]
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    problem = " ".join(rng.choice(WORDS) for _ in range(30))
    code = "\n```python\nprint(7)\n```\nOutput: 7" if "```python" in prompt else ""
    return f"Problem: {problem}?\nSolution: {' '.join(rng.choice(WORDS) for _ in range(30))}.{code}\nThe answer is: 7"


def test_distillation_set_keeps_one_text_under_every_stage_and_variant(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Lesson {k}: a fact worth a problem."}) + "\n" for k in range(2)))

    def cfg(out: str, *sets: str) -> config.SynthConfig:
        common = [
            f'run.output="{tmp_path / out}"',
            "run.items=48",
            "run.progress=false",
            'pipeline.kind="jiuzhang"',
            'jiuzhang.step="distill"',
            f'jiuzhang.texts=["{texts}"]',
            'backend.kind="openai"',
            f'backend.base_urls=["{srv.url}"]',
            "quality.execute_tool=false",
            "quality.decontaminate=false",
        ]
        return config.load(None, common + list(sets))

    with LoopbackServer(wordy_teacher) as srv:
        default = run.synthesize(cfg("default"))
        on_prompt = run.synthesize(cfg("prompt", 'quality.dedup_on=["prompt"]', 'quality.near_dedup_on=["prompt"]'))
    items = run.make_pipeline(cfg("x")).items()
    combos = {re.sub(r"^jz-\d+-", "", it["id"]) for it in items}  # (text, stage, variant) of each item
    assert len(combos) < 48 and {it["variant"] for it in items} == {"cot", "tool"}
    # default keys: one row per distinct (seed text, stage, variant); only true repeats of a combination go
    assert default["rows"] == len(combos) and default["filters"]["exact_dedup"]["removed"] == 48 - len(combos)
    assert default["filters"]["near_dedup"]["removed"] == 0
    assert default["dedup"] == {"exact_on": ["seed_id", "stage", "method"], "near_on": ["response"]}
    # keyed on the instruction, the same text under other stages collapses (the 160 items -> 71 rows)
    assert on_prompt["rows"] < len(combos) and on_prompt["filters"]["near_dedup"]["removed"] > 0
    assert on_prompt["dedup"] == {"exact_on": ["prompt"], "near_on": ["prompt"]}
