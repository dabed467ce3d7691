"""Shared set-up for the trainer tests: a small arithmetic data set, a tokenizer trained on it, a recipe."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mathforge.trainer.tokenizer import train_bpe_tokenizer


def write_addition_data(path: Path, n: int = 240, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            row = {"prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = {a + b}. The answer is: {a + b}"}
            handle.write(json.dumps(row) + "\n")
    return path


def make_workspace(root: Path) -> dict[str, Path]:
    data = write_addition_data(root / "data.jsonl")
    texts = [row["prompt"] + " " + row["response"] for row in map(json.loads, data.read_text().splitlines())]
    train_bpe_tokenizer(texts, 300, root / "tokenizer")
    return {"data": data, "tokenizer": root / "tokenizer"}


def recipe(root: Path, workspace: dict[str, Path], *, out: str = "run", extra: str = "", stages: str = "") -> Path:
    text = f"""
[run]
out_dir = "{root / out}"
tensorboard = false
[model]
init = "tiny"
[data]
tokenizer = "{workspace["tokenizer"]}"
template = "plain"
max_seq_len = 64
[optim]
lr = 3e-3
warmup_ratio = 0.1
[train]
micro_batch_tokens = 256
grad_accum = 2
{extra}
"""
    text += (
        stages
        or f"""
[[stages]]
name = "normal"
data = ["{workspace["data"]}"]
epochs = 2
"""
    )
    path = root / f"{out}.toml"
    path.write_text(text)
    return path
