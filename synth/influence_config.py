"""Settings of `mathforge synth select CONFIG.toml` (gradient-based data selection, `synth/influence.py`).

One dataclass per TOML table ([run], [model], [candidates], [target], [gradients], [warmup], [select]),
loaded with `mathforge.config.build`: unknown sections and keys are refused naming the file and key.
Names a user writes are checked against their registries at load:

    PARAM_SUBSETS   synth/influence.py   (lora, last_blocks: which parameters the gradients are taken for)
    TARGET_SETS     synth/influence.py   (gsm8k, math: vendored target sets; anything else is a data file;
                                          a test split is refused unless target.allow_test_split)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathforge.config import apply_overrides, build, read_toml
from mathforge.errors import ConfigError
from mathforge.synth.influence import LORA_MODULES, PARAM_SUBSETS, TARGET_SETS


@dataclass
class SelectRun:
    output: str = "runs/select"
    seed: int = 0  # LoRA init, random presets, warm-up sample, target sample, clusters and the projection
    batch_size: int = 16
    chunk_rows: int = 4096  # candidates per feature file: the unit of resume
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:1
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    progress: bool = True


@dataclass
class SelectModel:
    path: str = "tiny"  # a Hugging Face folder, or a preset name (random weights; then give `tokenizer`)
    tokenizer: str = ""  # a tokenizer folder; "" = the model folder
    max_tokens: int = 512  # longer examples are truncated


@dataclass
class Candidates:
    sources: list[str] = field(default_factory=list)  # JSONL/JSON/Parquet files, folders, hf:name[:config]
    split: str = "train"  # for hf: sources
    text_field: str = "text"  # the loss is over the whole text ...
    prompt_field: str = ""  # ... unless both of these are set: then over the response given the prompt
    response_field: str = ""


@dataclass
class Target:
    sets: list[str] = field(default_factory=lambda: ["gsm8k"])  # TARGET_SETS names or data files (hf:name[:config])
    prompt_field: str = "question"  # for data files (MATH: "problem" and "solution")
    response_field: str = "answer"
    allow_test_split: bool = False  # a test-split target set (e.g. "math"): refused unless true (synth/seeds.py)
    max_examples: int = 512  # a seeded sample of the union
    clusters: int = 1  # 1: mean cosine to the targets; k > 1: max over k-means clusters of the targets


@dataclass
class Gradients:
    params: str = field(default="lora", metadata={"registry": PARAM_SUBSETS})
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_modules: list[str] = field(default_factory=lambda: list(LORA_MODULES))
    last_blocks: int = 2  # for params = "last_blocks": every linear layer of the last k blocks
    dim: int = 8192  # projected dimension
    nonzeros: int = 4  # per input coordinate in the sparse random projection
    normalize: Literal["none", "adam"] = "adam"  # adam: candidates' features are Adam's update (needs a warm-up)


@dataclass
class Warmup:
    steps: int = 100  # 0 = no warm-up: the model's weights (and zero-initialised LoRA B) as they are
    lr: float = 1e-3
    batch_size: int = 16
    source: Literal["candidates", "target"] = "candidates"
    samples: int = 1024  # the first N candidates (shard-independent), or a seeded sample of the target set


@dataclass
class Select:
    top_fraction: float = 0.1
    top_k: int = 0  # > 0: select exactly this many (overrides top_fraction)
    report_examples: int = 5  # top and bottom picks shown in report.md


@dataclass
class SelectConfig:
    run: SelectRun = field(default_factory=SelectRun)
    model: SelectModel = field(default_factory=SelectModel)
    candidates: Candidates = field(default_factory=Candidates)
    target: Target = field(default_factory=Target)
    gradients: Gradients = field(default_factory=Gradients)
    warmup: Warmup = field(default_factory=Warmup)
    select: Select = field(default_factory=Select)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def features_hash(self) -> str:
        """Hash of every setting the stored features depend on (not the output folder, progress, batch size,
        device, whether test splits are allowed, or what is selected from the scores): a resumed or merged run must
        match it."""
        raw = self.to_dict()
        for key in ("output", "progress", "batch_size", "device"):
            raw["run"].pop(key)
        raw["target"].pop("allow_test_split")
        raw.pop("select")
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = [f.name for f in dataclasses.fields(SelectConfig)]


def load(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict[str, Any] | None = None
) -> SelectConfig:
    """The checked config: defaults, then the TOML file (or `data`), then `a.b.c=value` overrides."""
    where = str(path) if path else "<config>"
    raw: dict[str, Any] = read_toml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, list(overrides or []))
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section [{unknown[0]}]; allowed: {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(SelectConfig)
    cfg = SelectConfig(**{name: build(hints[name], raw.get(name, {}), f"{where}: {name}") for name in SECTIONS})
    _check(cfg, where)
    return cfg


def _check(cfg: SelectConfig, where: str) -> None:
    g, c, s = cfg.gradients, cfg.candidates, cfg.select
    checks = [
        (bool(cfg.run.output.strip()), "run.output", "is empty: name a folder, e.g. runs/select"),
        (cfg.run.batch_size >= 1, "run.batch_size", "must be >= 1"),
        (cfg.run.chunk_rows >= 1, "run.chunk_rows", "must be >= 1"),
        (cfg.model.max_tokens >= 2, "model.max_tokens", "must be >= 2"),
        (bool(c.sources), "candidates.sources", "is empty: name the pool (files, folders or hf:name)"),
        (bool(c.prompt_field) == bool(c.response_field), "candidates.prompt_field", "and response_field go together"),
        (bool(cfg.target.sets), "target.sets", f"is empty: name {', '.join(TARGET_SETS)} or data files"),
        (cfg.target.max_examples >= 1, "target.max_examples", "must be >= 1"),
        (cfg.target.clusters >= 1, "target.clusters", "must be >= 1"),
        (g.lora_rank >= 1, "gradients.lora_rank", "must be >= 1"),
        (g.last_blocks >= 1, "gradients.last_blocks", "must be >= 1"),
        (g.dim >= 1, "gradients.dim", "must be >= 1"),
        (1 <= g.nonzeros <= g.dim, "gradients.nonzeros", "must be in 1..gradients.dim"),
        (g.normalize != "adam" or cfg.warmup.steps > 0, "gradients.normalize", "= 'adam' needs warmup.steps > 0"),
        (cfg.warmup.steps >= 0 and cfg.warmup.samples >= 1, "warmup.steps", "must be >= 0 (with samples >= 1)"),
        (0 < s.top_fraction <= 1, "select.top_fraction", "must be in (0, 1]"),
        (s.top_k >= 0, "select.top_k", "must be >= 0 (0 = use top_fraction)"),
    ]
    for ok, key, what in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} {what}")
    unknown = sorted(set(g.lora_modules) - set(LORA_MODULES))
    if unknown or not g.lora_modules:
        raise ConfigError(
            f"{where}: gradients.lora_modules: unknown {unknown or 'empty list'}; allowed: {', '.join(LORA_MODULES)}"
        )
