"""Influence-based selection (`mathforge.synth.influence`, `synth/select.py`, `mathforge synth select`):
per-example gradients against one backward per example (float64), the sparse projection against the
Johnson–Lindenstrauss bound, features identical across runs and shardings, math precision of the top 10%
of a mixed pool, the command end to end (outputs, --resume, a bad key), and the test-split rule for target
sets (refused unless allowed; then recorded in select.json and passed on to the synth run reading the selection)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _influence_utils import english_text, tiny_model_folder, train_briefly

from mathforge.cli import main
from mathforge.errors import ConfigError
from mathforge.evaluate import datasets
from mathforge.model import from_config
from mathforge.synth import influence as inf
from mathforge.synth import influence_config, select


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as `configure_threads` picks on this busy 2-core machine (two threads run 5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool_and_model(tmp_path_factory):
    """A pool of 40 math texts (GSM8K / MATH train rows outside the target sample) and 160 English ones,
    shuffled with a fixed seed, and a `tiny` model folder (tokenizer trained on both) briefly trained on math
    (30 steps on other GSM8K / MATH train rows)."""
    root = tmp_path_factory.mktemp("influence")
    rng = random.Random(0)
    gsm, mth = datasets.load("gsm8k", "train"), datasets.load("math", "train")
    maths = [r["question"] + "\n" + r["answer"] for r in gsm[2000:2020]]
    maths += [r["problem"] + "\n" + r["solution"] for r in mth[2000:2020]]
    pool = [{"text": t, "math": True} for t in maths] + [{"text": english_text(rng), "math": False} for _ in range(160)]
    rng.shuffle(pool)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    texts = [r["text"] for r in pool] + [r["question"] + "\n" + r["answer"] for r in gsm[:300]]
    model = tiny_model_folder(root / "model", texts)
    train_briefly(
        model,
        [r["question"] + "\n" + r["answer"] for r in gsm[3000:3200]]
        + [r["problem"] + "\n" + r["solution"] for r in mth[3000:3200]],
        steps=30,
    )
    return root, model


def config(root: Path, model: Path, output: str, **sections) -> influence_config.SelectConfig:
    data = {
        "run": {"output": str(root / output), "batch_size": 16, "chunk_rows": 64, "progress": False},
        "model": {"path": str(model), "max_tokens": 128},
        "candidates": {"sources": [str(root / "pool.jsonl")]},
        "target": {"max_examples": 48},
        "gradients": {"dim": 2048},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return influence_config.load(data=data)


# ---------------------------------------------------------------- per-example gradients


def random_examples(count: int, vocab: int, seed: int) -> list[inf.Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        length = int(torch.randint(4, 20, (1,), generator=g))
        out.append(inf.Example(torch.randint(vocab, (length,), generator=g).tolist(), prompt=i % 3))
    return out


@pytest.mark.parametrize("params", ["lora", "last_blocks"])
def test_per_example_gradients_match_one_backward_per_example_float64(params):
    torch.manual_seed(0)
    model = from_config("tiny", dtype=torch.float64)
    settings = influence_config.Gradients(params=params, last_blocks=1)
    subset = inf.PARAM_SUBSETS.get(params)(model, settings, 0)
    with torch.no_grad():  # LoRA's B starts at zero (A's gradient would be zero): give it values
        for name, layer in subset:
            if name.endswith("lora_B"):
                layer.weight.normal_(0.0, 0.05)
    examples = random_examples(6, model.config.vocab_size, seed=1)
    batched = list(inf.per_example_grads(model, subset, inf.collate(examples)))
    params_list = [p for _, p in inf.parameters(subset)]
    assert len(batched) == len(params_list)
    for n, example in enumerate(examples):
        loss = inf.batch_loss(model, inf.collate([example]))
        single = torch.autograd.grad(loss, params_list)
        for got, want in zip(batched, single):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got[n], want.flatten(), rtol=1e-9, atol=1e-12)
    assert max(float(g.abs().max()) for g in batched) > 1e-3  # not all zero


# ---------------------------------------------------------------- the projection


def test_projection_preserves_inner_products_within_the_jl_tolerance():
    dim, count, size = 2048, 40, 5000
    x = torch.randn(count, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    x = inf.unit(x)
    proj = inf.SparseProjection(dim, 4, seed=3)
    y = proj.project(iter([x]), count, "cpu")
    exact, approx = x @ x.T, y @ y.T
    error = (approx - exact)[~torch.eye(count, dtype=torch.bool)]
    tolerance = math.sqrt(8 * math.log(count) / dim)  # JL: all pairs of `count` points within this, w.h.p.
    assert float(error.abs().max()) < tolerance
    assert float((approx.diagonal() - 1).abs().max()) < tolerance
    # and the error is what a JL projection of this size gives (variance ≈ (1 + cos²) / dim), not zero
    assert 0.5 / dim < float((error**2).mean()) < 2.0 / dim


def test_projection_is_a_function_of_the_seed_and_the_coordinate_only():
    x = torch.randn(3, 700, generator=torch.Generator().manual_seed(1))
    a = inf.SparseProjection(256, 4, seed=5)
    whole = a.project(iter([x]), 3, "cpu")
    assert torch.equal(whole, inf.SparseProjection(256, 4, seed=5).project(iter([x]), 3, "cpu"))
    pieces = a.project(iter([x[:, :123], x[:, 123:500], x[:, 500:]]), 3, "cpu")  # the same vector in pieces
    torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(whole, inf.SparseProjection(256, 4, seed=6).project(iter([x]), 3, "cpu"))
    codes = a.codes(10**10, 5, "cpu")  # coordinates past 2^31 hash without overflow
    assert all(0 <= int(b.min()) and int(b.max()) < 256 and set(s.tolist()) <= {-1.0, 1.0} for b, s in codes)


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("seed", [0, 1])
def test_top_tenth_of_a_mixed_pool_is_math_with_a_tiny_model_briefly_trained_on_math(pool_and_model, seed):
    """LESS's recipe: a LoRA warm-up on a sample of the pool, candidates' features normalised by its Adam
    moments. Measured on this pool (seeds 0-3): without the warm-up (LoRA B = 0) the top tenth is 40-75% math;
    with the warm-up alone 95-100%; with the Adam normalisation too, 95-100% (seeds 0-7). The targets are GSM8K
    train and the built-in "math" (the only MATH rows vendored are test rows: allowed here explicitly, and then
    recorded as the synth manifests record it); with GSM8K alone seed 1 gets 85%."""
    root, model = pool_and_model
    warmup = {"steps": 20, "source": "candidates", "samples": 128}
    target = {"sets": ["gsm8k", "math"], "allow_test_split": True}
    sections = {"run": {"seed": seed}, "warmup": warmup, "gradients": {"normalize": "adam"}, "target": target}
    cfg = config(root, model, f"precision-{seed}", **sections)
    select.run_shard(cfg)
    manifest = select.merge(cfg, 1)
    assert manifest["seeded_from_test"] == {"math_test": {"sources": ["math"], "seeds": 4500}}
    assert manifest["targets_dropped_as_eval_items"] == {"gsm8k_test": 3}  # GSM8K train's 3 test twins
    assert "**Contaminated for math_test**" in (Path(cfg.run.output) / "report.md").read_text()
    pool = [json.loads(line) for line in (root / "pool.jsonl").read_text().splitlines()]
    chosen = [json.loads(line) for line in (Path(cfg.run.output) / "selection.jsonl").read_text().splitlines()]
    assert manifest["scored"] == 200 and manifest["selected"] == len(chosen) == 20
    assert sum(r["math"] for r in pool) / len(pool) == 0.2  # what a random pick would get
    precision = sum(r["math"] for r in chosen) / len(chosen)
    assert precision >= 0.9, precision


def test_features_are_identical_across_runs_and_shardings(pool_and_model):
    root, model = pool_and_model
    small = {  # on the CPU (CUDA's index_add_ sums in no fixed order)
        "run": {"device": "cpu"},
        "candidates": {"sources": [str(root / "pool40.jsonl")]},
        "target": {"max_examples": 16},
        "warmup": {"steps": 2, "samples": 16},
    }
    (root / "pool40.jsonl").write_text("".join((root / "pool.jsonl").read_text().splitlines(True)[:40]))
    runs = {}
    for output, shards in (("once", 1), ("again", 1), ("sharded", 3)):
        cfg = config(root, model, output, **small)
        for i in range(shards):
            select.run_shard(cfg, (i, shards))
        parts = [select.load_features(cfg, (i, shards)) for i in range(shards)]
        index = np.concatenate([p[0] for p in parts])
        runs[output] = np.concatenate([p[1] for p in parts])[np.argsort(index)]
        assert sorted(index.tolist()) == list(range(40))
    assert np.array_equal(runs["once"], runs["again"])
    assert np.array_equal(runs["sharded"], runs["once"])  # other batches, the same bits
    assert runs["once"].dtype == np.float16
    merged = {}
    for output, shards in (("once", 1), ("sharded", 3)):
        cfg = config(root, model, output, **small)
        assert select.merge(cfg, shards)["scored"] == 40
        merged[output] = [
            json.loads(line)["score"] for line in (root / output / "scores.jsonl").read_text().splitlines()
        ]
    assert merged["sharded"] == merged["once"]
    with pytest.raises(ConfigError, match="shard 0/4 has not finished"):
        select.merge(config(root, model, "sharded", **small), 4)


# ---------------------------------------------------------------- the command


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_synth_select_command_writes_outputs_resumes_and_names_a_bad_key(pool_and_model, tmp_path, capsys):
    root, model = pool_and_model
    pool = tmp_path / "pool.jsonl"
    lines = (root / "pool.jsonl").read_text().splitlines(True)[:30]
    pool.write_text("".join(lines) + json.dumps({"title": "no text here"}) + "\n")
    toml = tmp_path / "select.toml"
    toml.write_text(
        f'[run]\noutput = "{tmp_path / "out"}"\nprogress = false\nchunk_rows = 8\n'
        f'[model]\npath = "{model}"\nmax_tokens = 64\n'
        f'[candidates]\nsources = ["{pool}"]\n'
        "[target]\nmax_examples = 8\n[gradients]\ndim = 256\n[warmup]\nsteps = 2\nsamples = 8\n"
        "[select]\ntop_k = 5\nreport_examples = 3\n"
    )
    code, out, err = run_cli(["synth", "select", str(toml)], capsys)
    assert code in (0, None), err
    assert "31 rows, 31 computed, 30 scored" in out
    folder = tmp_path / "out"
    scores = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    chosen = [json.loads(line) for line in (folder / "selection.jsonl").read_text().splitlines()]
    assert len(scores) == 30 and sum(s["selected"] for s in scores) == 5 == len(chosen)
    best = sorted(s["score"] for s in scores)[-5:]
    assert sorted(r["influence"]["score"] for r in chosen) == best
    assert sorted(r["influence"]["rank"] for r in chosen) == [0, 1, 2, 3, 4]
    manifest = json.loads((folder / "select.json").read_text())
    assert manifest["skipped"]["no text under 'text'"]["count"] == 1
    assert manifest["model"] == str(model) and manifest["seed"] == 0 and manifest["target_sets"] == ["gsm8k"]
    assert manifest["seeded_from_test"] == {}
    report = (folder / "report.md").read_text()
    assert "## Top picks" in report and "## Bottom picks" in report and "scores.png" in report
    assert (folder / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, err = run_cli(["synth", "select", str(toml)], capsys)  # as `synth`: not over a run without --resume
    assert code == 2 and f"{folder / 'features' / 'shard-00000-of-00001'} holds features of an earlier run" in err
    assert "pass --resume" in err
    code, out, err = run_cli(["synth", "select", str(toml), "--resume"], capsys)  # resuming a finished run: no work
    assert code in (0, None), err
    assert "31 rows, 0 computed, 30 scored" in out
    assert [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()] == scores

    code, _, err = run_cli(["synth", "select", str(toml), "--set", "gradients.rank=4"], capsys)
    assert code == 2 and "gradients.rank" not in err.split("allowed")[1] and "'rank'" in err
    assert "allowed: params, lora_rank" in err


def test_the_shipped_recipe_loads_and_feeds_the_distillation_step():
    from mathforge.synth import config as synth_config

    configs = Path(__file__).resolve().parents[1] / "synth" / "configs"
    cfg = influence_config.load(configs / "select.toml")
    assert (cfg.gradients.params, cfg.gradients.dim, cfg.gradients.normalize) == ("lora", 8192, "adam")
    # train splits only: GSM8K train and the seven MATH train subjects (problem -> solution)
    assert not cfg.target.allow_test_split and "math" not in cfg.target.sets and cfg.target.sets[0] == "gsm8k"
    assert [s.split(":")[-1] for s in cfg.target.sets[1:]] == [
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    ]
    assert all(s.startswith("hf:EleutherAI/hendrycks_math:") for s in cfg.target.sets[1:])
    assert (cfg.target.prompt_field, cfg.target.response_field) == ("problem", "solution")
    distill = synth_config.load(configs / "jiuzhang-distill.toml")
    assert distill.jiuzhang.texts == [f"{cfg.run.output}/selection.jsonl"]


def test_a_model_path_that_is_neither_a_folder_nor_a_preset_is_named(tmp_path):
    cfg = influence_config.load(data={"model": {"path": str(tmp_path / "nope")}, "candidates": {"sources": ["x"]}})
    with pytest.raises(ConfigError, match="model.path = .*nope.*no such folder, and not a preset"):
        select.load_model(cfg, "cpu")


def test_pairs_take_the_loss_on_the_response_and_rows_without_text_are_reasons(pool_and_model):
    from transformers import AutoTokenizer

    _, model = pool_and_model
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    pair = inf.encode(tokenizer, "What is 2 + 3?", "2 + 3 = 5.", 64)
    prompt = tokenizer("What is 2 + 3?\n", add_special_tokens=False)["input_ids"]
    assert pair.prompt == len(prompt) and pair.ids[: pair.prompt] == prompt
    assert pair.ids[-1] == tokenizer.eos_token_id
    batch = inf.collate([pair])
    assert int((batch.labels != -100).sum()) == len(pair.ids) - len(prompt)  # the response and the end token
    assert float(batch.weights.sum()) == pytest.approx(1.0)
    cfg = influence_config.load(
        data={"candidates": {"sources": ["x"], "prompt_field": "problem", "response_field": "solution"}}
    )
    row = select.Row("f.jsonl:3", "f-3", {"problem": "P", "solution": "S"})
    assert select.candidate_text(cfg, row) == ("P", "S")
    assert select.candidate_text(cfg, row._replace(value={"problem": "P"})) == "no text under 'problem' and 'solution'"
    assert select.candidate_text(cfg, row._replace(value=[1])) == "not an object"


# ---------------------------------------------------------------- test splits as targets


def test_a_builtin_test_split_target_is_refused_naming_the_set_and_split_before_anything_is_written(tmp_path):
    cfg = influence_config.load(
        data={
            "run": {"output": str(tmp_path / "out"), "progress": False},
            "candidates": {"sources": ["x"]},
            "target": {"sets": ["gsm8k", "math"]},
        }
    )
    with pytest.raises(ConfigError) as error:
        select.run_shard(cfg)
    message = str(error.value)
    assert message.startswith("target.sets: 'math' is MATH test minus MATH-500")
    assert "math/test (decontamination set math_test)" in message and "target.allow_test_split = true" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="target.sets: 'math'"):
        select.merge(cfg, 1)
    # allowed: the pairs are the set's, and the split is recorded in the synth manifests' shape
    allowed = select.load_targets(
        influence_config.load(data={**cfg.to_dict(), "target": {"sets": ["math"], "allow_test_split": True}})
    )
    assert len(allowed.pairs) == 4500 and allowed.pairs[0] == (
        datasets.load("math", "train")[0]["problem"],
        datasets.load("math", "train")[0]["solution"],
    )
    assert allowed.seeded_from_test == {"math_test": {"sources": ["math"], "seeds": 4500}} and allowed.dropped == {}
    assert (
        influence_config.load(data=cfg.to_dict()).features_hash()
        == influence_config.load(
            data={**cfg.to_dict(), "target": {**cfg.to_dict()["target"], "allow_test_split": True}}
        ).features_hash()
    )  # allowing changes no feature: a run resumes with either


def test_a_target_file_of_test_problems_is_refused_and_a_clean_one_loses_its_test_twins(tmp_path):
    test_rows = [{"question": r["question"], "answer": r["answer"]} for r in datasets.load("gsm8k", "test")[:10]]
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    data = {"candidates": {"sources": ["x"]}, "target": {"sets": [str(mine)]}}
    with pytest.raises(ConfigError) as error:
        select.load_targets(influence_config.load(data=data))
    message = str(error.value)
    assert f"target.sets: '{mine}' holds evaluation items (10 of its 10 target problems match one)" in message
    assert "gsm8k/test (decontamination set gsm8k_test)" in message
    clean = [
        {"question": f"A box holds {i} red and {i + 4} blue marbles. How many marbles?", "answer": "x"}
        for i in range(6)
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in clean + test_rows[:2]))
    targets = select.load_targets(influence_config.load(data={**data, "target": {"sets": [str(mixed)]}}))
    assert targets.pairs == [(r["question"], r["answer"]) for r in clean]
    assert targets.dropped == {"gsm8k_test": 2} and targets.seeded_from_test == {}
    allowed = {"sets": [str(mine)], "allow_test_split": True}
    targets = select.load_targets(influence_config.load(data={**data, "target": allowed}))
    assert len(targets.pairs) == 10 and targets.seeded_from_test == {
        "gsm8k_test": {"sources": [str(mine)], "seeds": 10}
    }


def test_the_synth_run_reading_a_selection_inherits_its_test_split(tmp_path):
    from mathforge.synth import config as synth_config
    from mathforge.synth.run import make_pipeline

    folder = tmp_path / "select"
    folder.mkdir()
    texts = folder / "selection.jsonl"
    texts.write_text(json.dumps({"text": "Prove that 2 + 2 = 4."}) + "\n")
    overrides = ['pipeline.kind="jiuzhang"', f'jiuzhang.texts=["{texts}"]', 'backend.kind="openai"']
    clean = make_pipeline(synth_config.load(None, overrides))
    assert clean.info["seeded_from_test"] == {}  # no select.json beside it: nothing is claimed
    record = {"math_test": {"sources": ["math"], "seeds": 4500}}  # as select.merge writes it (see above)
    (folder / "select.json").write_text(json.dumps({"seeded_from_test": record}))
    inherited = make_pipeline(synth_config.load(None, overrides)).info["seeded_from_test"]
    assert inherited == {"math_test": {"sources": [f"math (via {folder / 'select.json'})"], "seeds": 4500}}
