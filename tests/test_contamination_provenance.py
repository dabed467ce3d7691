"""Seed pools and test splits: refused unless allowed; when allowed, the split flows synth manifest →
training record (mathforge.json) → `mathforge eval`, which refuses that benchmark without allow_contaminated."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mathforge.datasources import data_provenance, gsm8k_gold
from mathforge.errors import ConfigError
from mathforge.evaluate import datasets
from mathforge.synth import config, run, skywork
from mathforge.synth.seeds import load_checked_seeds


def write_seeds(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_test_rows(count: int) -> list[dict]:
    return [
        {"question": r["question"], "answer": gsm8k_gold(r["answer"])} for r in datasets.load("gsm8k", "test")[:count]
    ]


def test_builtin_test_split_is_refused_unless_allowed():
    with pytest.raises(ConfigError) as error:
        load_checked_seeds(["gsm8k", "math"])
    message = str(error.value)
    assert "'math' is MATH test minus MATH-500" in message and "math/test (decontamination set math_test)" in message
    assert "skywork.allow_test_split = true" in message
    allowed = load_checked_seeds(["math"], allow_test_split=True)
    assert len(allowed.seeds) == 4500
    assert allowed.seeded_from_test == {"math_test": {"sources": ["math"], "seeds": 4500}}


def test_gsm8k_train_seeds_lose_only_their_test_twins():
    checked = load_checked_seeds(["gsm8k"])
    # GSM8K train holds 3 problems that are test problems with other names and numbers (found by the check,
    # read by eye: bench/results/cpu/decontamination.json lists them); they are dropped, not refused
    assert len(checked.seeds) == 7473 - 3 and checked.dropped == {"gsm8k_test": 3}
    assert checked.seeded_from_test == {}


def test_a_seed_file_of_test_problems_is_refused_naming_the_file_and_split(tmp_path):
    path = write_seeds(tmp_path / "mine.jsonl", gsm8k_test_rows(12))
    with pytest.raises(ConfigError) as error:
        load_checked_seeds([str(path)])
    message = str(error.value)
    assert f"'{path}' holds evaluation items (12 of its 12 seeds match one)" in message
    assert "gsm8k/test (decontamination set gsm8k_test)" in message
    # mostly clean: the two test problems are dropped and counted
    clean = [
        {"question": f"Tom has {i} apples and buys {i + 3} more. How many apples now?", "answer": "1"} for i in range(5)
    ]
    mixed = write_seeds(tmp_path / "mixed.jsonl", clean + gsm8k_test_rows(2))
    checked = load_checked_seeds([str(mixed)])
    assert len(checked.seeds) == 5 and checked.dropped == {"gsm8k_test": 2}


def test_an_allowed_test_file_records_every_eval_set_its_seeds_match(tmp_path):
    held_out = {r["problem"] for r in datasets.load("math500", "test")}
    rows = datasets.load("math", "test")
    chosen = [r for r in rows if r["problem"] in held_out][:10] + [r for r in rows if r["problem"] not in held_out][:30]
    path = write_seeds(tmp_path / "math_test_part.jsonl", chosen)
    with pytest.raises(ConfigError, match=r"math/test \(decontamination set math_test\)"):
        load_checked_seeds([str(path)], {"convention": "math"})
    checked = load_checked_seeds([str(path)], {"convention": "math"}, allow_test_split=True)
    assert len(checked.seeds) == 40 and checked.dropped == {}
    assert checked.seeded_from_test == {
        "math_test": {"sources": [str(path)], "seeds": 40},
        "math500_test": {"sources": [str(path)], "seeds": 10},  # a minority, still recorded
    }


def test_math_convention_seed_files(tmp_path):
    row = {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "level": "Level 4", "type": "Algebra"}
    path = write_seeds(tmp_path / "algebra.jsonl", [row])
    [seed] = load_checked_seeds([str(path)], {"convention": "math"}).seeds
    assert (seed.question, seed.answer, seed.level) == ("What is $1+1$?", "2", 4)


@pytest.fixture
def echo(monkeypatch):
    async def method(job, ctx):
        return skywork.Draft(f"{job.seed.question}", f"Same.\nThe answer is: {job.seed.answer}", job.seed.answer, "x")

    monkeypatch.setitem(skywork.SKYWORK_METHODS._items, "echo", method)


def test_allowed_test_split_flows_from_synth_manifest_to_training_record_to_eval(tmp_path, echo):
    seeds = write_seeds(tmp_path / "gsm_test_seeds.jsonl", gsm8k_test_rows(12))
    overrides = [
        f'run.output="{tmp_path / "synth"}"',
        "run.items=12",
        "run.progress=false",
        'pipeline.kind="skywork"',
        'backend.kind="openai"',
        'skywork.methods=["echo"]',
        f'skywork.seeds=["{seeds}"]',
        "quality.decontaminate=false",  # on, it would remove every row (each one is a GSM8K test problem)
    ]
    with pytest.raises(ConfigError, match="gsm8k/test"):
        run.synthesize(config.load(None, overrides), backend=SimpleNamespace())
    cfg = config.load(None, [*overrides, "skywork.allow_test_split=true"])
    backend = SimpleNamespace(usage=SimpleNamespace(as_dict=dict), aclose=None)
    for i in range(2):
        shard = run.synthesize(cfg, shard=(i, 2), backend=backend)
        assert shard["seeded_from_test"] == {"gsm8k_test": {"sources": [str(seeds)], "seeds": 12}}
    merged = run.merge(cfg, 2)
    assert merged["seeded_from_test"] == {"gsm8k_test": {"sources": [str(seeds)], "seeds": 12}}
    assert merged["rows"] == 12

    out = tmp_path / "synth"
    provenance = data_provenance([str(out / "merged" / "normal")])
    manifests = [str(p) for p in sorted(out.glob("manifest-*.json"))]
    assert provenance == {"synth_manifests": manifests, "seeded_from_test": {"gsm8k_test": manifests}}
    assert data_provenance([str(seeds)]) == {}  # not written by mathforge synth: nothing is claimed

    torch = pytest.importorskip("torch")
    from mathforge.evaluate.config import EvalConfig
    from mathforge.evaluate.runner import contamination
    from mathforge.model import from_config
    from mathforge.trainer.checkpoint import save_model_folder

    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": 64, "eos_token_id": 0, "bos_token_id": 0})
    final = tmp_path / "train" / "final"
    save_model_folder(model, final, None, template="alpaca-cot", provenance=provenance)
    record = json.loads((final / "mathforge.json").read_text())
    assert record == {"template": "alpaca-cot", **provenance}

    with pytest.raises(ConfigError) as error:
        contamination(EvalConfig(model=str(final), bench=["math500", "gsm8k"]))
    assert str(error.value).startswith(f"--bench gsm8k: {final} was trained on data seeded from the gsm8k test split")
    assert f"synth manifest {manifests[0]}" in str(error.value) and "--allow-contaminated" in str(error.value)
    assert contamination(EvalConfig(model=str(final), bench=["math500", "math"])) == {}
    allowed = EvalConfig(model=str(final), bench=["gsm8k"], allow_contaminated=True)
    assert contamination(allowed) == {"gsm8k": manifests}


def test_manifests_from_before_the_record_count_builtin_math_seeds(tmp_path):
    out = tmp_path / "old"
    (out / "merged" / "hard").mkdir(parents=True)
    (out / "settings.json").write_text("{}")
    settings = {"pipeline": {"kind": "skywork"}, "skywork": {"seeds": ["gsm8k", "math"]}}
    (out / "manifest-merged.json").write_text(json.dumps({"settings": settings}))
    manifest = str(out / "manifest-merged.json")
    assert data_provenance([str(out / "merged" / "hard")]) == {
        "synth_manifests": [manifest],
        "seeded_from_test": {"math_test": [manifest]},
    }


def jiuzhang_sets(tmp_path: Path, out: str, *more: str) -> list[str]:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Lesson {k}: counting."}) + "\n" for k in range(3)))
    return [
        f'run.output="{tmp_path / out}"',
        "run.items=3",
        "run.progress=false",
        'pipeline.kind="jiuzhang"',
        f'jiuzhang.texts=["{texts}"]',
        'jiuzhang.stages=["grade_school"]',
        'jiuzhang.variants=["cot"]',
        "quality.decontaminate=false",
        *more,
    ]


def test_a_synthesizer_trained_on_test_seeded_data_passes_the_split_on(tmp_path):
    torch = pytest.importorskip("torch")
    from fake_openai import LoopbackServer

    from mathforge.evaluate.config import EvalConfig
    from mathforge.evaluate.runner import contamination
    from mathforge.model import from_config
    from mathforge.trainer.checkpoint import save_model_folder
    from mathforge.trainer.tokenizer import train_bpe_tokenizer

    upstream = str(tmp_path / "first" / "manifest-merged.json")  # the run that seeded the synthesizer's data
    synthesizer = tmp_path / "synthesizer"
    tokenizer = train_bpe_tokenizer(
        [f"User: What is {a} + 1?\n\nAssistant: {a + 1}" for a in range(50)], 300, synthesizer
    )
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(synthesizer)
    (synthesizer / "mathforge.json").write_text(json.dumps({"seeded_from_test": {"gsm8k_test": [upstream]}}))
    inherited = {"gsm8k_test": {"sources": [f"{upstream} (via {synthesizer / 'mathforge.json'})"], "seeds": 0}}

    # in-process (backend.kind = "local"): the model folder's own record
    local = ['backend.kind="local"', f'backend.model="{synthesizer}"', 'backend.device="cpu"', "sampling.max_tokens=4"]
    manifest = run.synthesize(config.load(None, jiuzhang_sets(tmp_path, "local", *local)))
    assert manifest["seeded_from_test"] == inherited and manifest["pipeline_info"]["seeded_from_test"] == inherited

    # served (backend.kind = "openai"): backend.provenance names the served model's folder
    def answer(messages, index):
        return "Problem: What is 2 + 3?\nSolution: 2 + 3 = 5.\nThe answer is: 5"

    with LoopbackServer(answer) as srv:
        served = ['backend.kind="openai"', f'backend.base_urls=["{srv.url}"]']
        with pytest.raises(ConfigError, match=r"backend.provenance = '.*nowhere': no such folder"):
            run.synthesize(
                config.load(None, jiuzhang_sets(tmp_path, "x", *served, f'backend.provenance="{tmp_path}/nowhere"'))
            )
        manifest = run.synthesize(
            config.load(None, jiuzhang_sets(tmp_path, "served", *served, f'backend.provenance="{synthesizer}"'))
        )
        assert run.synthesize(config.load(None, jiuzhang_sets(tmp_path, "plain", *served)))["seeded_from_test"] == {}
    assert manifest["seeded_from_test"] == inherited and manifest["rows"] >= 1

    # a model trained on what the served synthesizer wrote is refused on gsm8k
    provenance = data_provenance([manifest["files"]["grade_school"]["path"]])
    [shard] = [str(p) for p in (tmp_path / "served").glob("manifest-*.json")]
    assert provenance == {"synth_manifests": [shard], "seeded_from_test": {"gsm8k_test": [shard]}}
    final = tmp_path / "student"
    save_model_folder(model, final, None, template="alpaca-cot", provenance=provenance)
    with pytest.raises(ConfigError, match="trained on data seeded from the gsm8k test split"):
        contamination(EvalConfig(model=str(final), bench=["gsm8k"]))
