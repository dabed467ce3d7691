"""JiuZhang3.0's loop closed on one CPU: a teacher writes the distillation set, a tiny synthesizer is trained on it
(the `tiny` preset, a BPE tokenizer trained here), and the synthesizer — asked through `mathforge synth` with
`backend.kind = "local"` in the layout it was trained with — writes rows that pass the pipeline's own checks.

The teacher is the loopback server of tests/fake_openai.py; the synthesizer memorises its rows, so what is
tested is the plumbing between the steps (one layout from training to asking), not a model's skill.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fake_openai import LoopbackServer

from mathforge.cli import main
from mathforge.errors import ConfigError
from mathforge.model import from_config
from mathforge.prompts import layout_text
from mathforge.synth import config, run
from mathforge.trainer.config import config_from_dict
from mathforge.trainer.data import render_row
from mathforge.trainer.tokenizer import train_bpe_tokenizer
from mathforge.trainer.train import train

NAMES = ["Ada", "Ben", "Cai", "Dee", "Eli", "Fay"]
TOPICS = ["apples", "pencils", "marbles", "stamps", "shells", "coins"]


def teacher(messages, index):
    """One fixed problem per lesson: what a synthesizer that memorised its distillation rows says back."""
    k = int(re.search(r"Lesson (\d+)", messages[-1]["content"]).group(1))
    a, b = 3 + 4 * k, 5 + 7 * k
    return (
        f"Problem: {NAMES[k]} has {a} {TOPICS[k]} and gets {b} more. How many {TOPICS[k]} now?\n"
        f"Solution: {a} + {b} = {a + b}.\nThe answer is: {a + b}"
    )


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a tiny model's ops are too small to split, and on a busy 2-core machine two threads
    wait on each other (eight times slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synth_sets(tmp_path: Path, out: str) -> list[str]:
    """--set overrides: six lessons, one education stage, the CoT variant, six items (one per lesson)."""
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Lesson {k}: counting {TOPICS[k]}."}) + "\n" for k in range(6)))
    return [
        f'run.output="{tmp_path / out}"',
        "run.items=6",
        'run.format="jsonl"',
        "run.progress=false",
        'pipeline.kind="jiuzhang"',
        f'jiuzhang.texts=["{texts}"]',
        'jiuzhang.stages=["grade_school"]',
        'jiuzhang.variants=["cot"]',
        "quality.decontamination_n=13",
    ]


def synth_cfg(tmp_path: Path, out: str, *sets: str) -> config.SynthConfig:
    return config.load(None, synth_sets(tmp_path, out) + list(sets))


def distill(tmp_path: Path) -> list[dict]:
    with LoopbackServer(teacher) as srv:
        cfg = synth_cfg(
            tmp_path, "distill", 'jiuzhang.step="distill"', 'backend.kind="openai"', f'backend.base_urls=["{srv.url}"]'
        )
        manifest = run.synthesize(cfg)
    assert manifest["rows"] == 6 and manifest["dedup"]["exact_on"] == ["seed_id", "stage", "method"]
    return [json.loads(line) for line in Path(manifest["files"]["grade_school"]["path"]).read_text().splitlines()]


def train_synthesizer(tmp_path: Path, rows: list[dict], steps: int) -> Path:
    """A tiny model trained on the distillation rows with the "jiuzhang" template; returns its final folder."""
    data = tmp_path / "distill.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [layout_text("jiuzhang", r["prompt"]) + r["response"] for r in rows]
    tokenizer = train_bpe_tokenizer(texts, 600, tmp_path / "tokenizer")
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(tmp_path / "init")
    tokenizer.save_pretrained(tmp_path / "init")
    recipe = config_from_dict(
        {
            "run": {"out_dir": str(tmp_path / "synthesizer"), "tensorboard": False, "log_every": 50},
            "model": {"init": str(tmp_path / "init")},
            "data": {"template": "jiuzhang", "max_seq_len": 512},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.05, "schedule": "cosine", "min_lr_ratio": 0.1},
            "train": {"micro_batch_tokens": 2048, "device": "cpu"},
            "stages": [{"name": "distill", "data": [str(data)], "steps": steps}],
        }
    )
    summary = train(recipe, progress=False)
    return Path(summary["final_model"])


def test_trained_synthesizer_writes_rows_that_pass_the_checks(tmp_path):
    rows = distill(tmp_path)
    final = train_synthesizer(tmp_path, rows, steps=200)
    assert json.loads((final / "mathforge.json").read_text())["template"] == "jiuzhang"

    # `mathforge synth synth/configs/jiuzhang.toml --set backend.kind=local …`: the shipped recipe's layout
    # ("jiuzhang") is the one the model was trained with (its mathforge.json); greedy decoding
    local = ['backend.kind="local"', f'backend.model="{final}"', 'backend.device="cpu"', 'backend.dtype="float32"']
    greedy = ["sampling.temperature=0", "sampling.max_tokens=64"]
    sets = [x for s in synth_sets(tmp_path, "synth") + local + greedy for x in ("--set", s)]
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(Path(__file__).parents[1] / "synth" / "configs" / "jiuzhang.toml"), *sets])
    assert exit_info.value.code == 0
    [manifest_path] = (tmp_path / "synth").glob("manifest-*.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["settings"]["prompts"]["layout"] == "jiuzhang" and manifest["generation"]["failed"] == 0
    assert manifest["rows"] >= 3, manifest["generation_rejections"]  # >= 50% of the 6 items accepted
    kept = [json.loads(line) for line in Path(manifest["files"]["grade_school"]["path"]).read_text().splitlines()]
    for row in kept:  # a problem, a solution ending in its marked answer
        assert row["response"].endswith(f"The answer is: {row['meta']['answer']}") and row["prompt"].endswith("now?")

    # naming another layout than the model's is refused before anything is written, naming both
    with pytest.raises(ConfigError, match=r"prompts.layout = 'chat'.*trained with template 'jiuzhang'"):
        run.synthesize(synth_cfg(tmp_path, "chat", *local, *greedy, 'prompts.layout="chat"'))
    assert not (tmp_path / "chat").exists()


def test_a_served_synthesizer_gets_the_trainers_prompt_text_on_the_completions_endpoint(tmp_path):
    rows = distill(tmp_path)
    seen = []

    def synthesizer(prompt, index):
        assert isinstance(prompt, str)  # a raw completion, not chat messages
        seen.append(prompt)
        return teacher([{"content": prompt}], index)

    with LoopbackServer(synthesizer) as srv:
        served = ['backend.kind="openai"', f'backend.base_urls=["{srv.url}"]', 'prompts.layout="jiuzhang"']
        manifest = run.synthesize(synth_cfg(tmp_path, "served", *served))
        paths = {path for path, _ in srv.requests}
        stops = {tuple(body.get("stop") or ()) for _, body in srv.requests}
    assert paths == {"/v1/completions"} and stops == {("## Question", "\n\n\n\n")}
    # exactly the text the trainer renders (and masks) for the distillation rows of the same items
    assert sorted(seen) == sorted(render_row(r, "distill", "jiuzhang", None)[0] for r in rows)
    assert manifest["rows"] == 6 and all(p.startswith("## Question\nRead the math text") for p in seen)


def test_layout_resolution_and_checks():
    from mathforge.synth.prompts import resolve_layout

    assert resolve_layout("", None) == "chat"  # a teacher server: chat unless the recipe names a layout
    assert resolve_layout("", "jiuzhang") == "jiuzhang"  # a local model: the layout it was trained with
    assert resolve_layout("jiuzhang", None) == "jiuzhang" and resolve_layout("chat", "chat") == "chat"
    with pytest.raises(
        ConfigError, match=r"prompts.layout = 'jiuzhang', but the model 'm' was trained with template 'plain'"
    ):
        resolve_layout("jiuzhang", "plain", "m")
    with pytest.raises(ConfigError, match="prompts.layout: template 'minerva' is a few-shot or chat prompt"):
        config.load(None, ['prompts.layout="minerva"'])
    with pytest.raises(ConfigError, match="prompts.layout: unknown prompt 'jiuzang'"):
        config.load(None, ['prompts.layout="jiuzang"'])
    assert config.load(Path(__file__).parents[1] / "synth/configs/jiuzhang.toml").prompts.layout == "jiuzhang"
