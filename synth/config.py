"""Synthesis configs: TOML recipes → typed dataclasses, with `--set a.b.c=value` overrides of any depth.

One dataclass per TOML table ([run], [pipeline], [symbolic], [backend], [sampling], [prompts], [skywork],
[jiuzhang], [quality]), loaded with `mathforge.config.build`: an unknown section or key, or a value of the
wrong type or outside its allowed values, raises ConfigError naming the file, the key and what is allowed.
Names a user writes (pipeline kinds, Skywork methods, Evol operations, education stages, JiuZhang variants,
decontamination sets) are checked against their registries at load:

    PIPELINES         synth/common.py    (each pipeline module registers its factory)
    SKYWORK_METHODS   synth/skywork.py   (one handler per augmentation method)
    EVOL_OPS          synth/skywork.py   (one prompt template per Evol-Instruct operation)
    EDUCATION_STAGES  synth/jiuzhang.py  (read from prompts/jiuzhang/stages.toml)
    VARIANTS          synth/jiuzhang.py  (cot, tool)
    EVAL_SETS         synth/quality.py   (decontamination sets)
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathforge.config import apply_overrides, build, read_toml
from mathforge.errors import ConfigError
from mathforge.prompts import check_layout
from mathforge.synth import jiuzhang, quality, skywork, symbolic  # noqa: F401  (they register their pipelines)
from mathforge.synth.common import PIPELINES
from mathforge.synth.jiuzhang import EDUCATION_STAGES, VARIANTS
from mathforge.synth.quality import EVAL_SETS
from mathforge.synth.skywork import EVOL_OPS, SKYWORK_METHODS


@dataclass
class RunSettings:
    output: str = "runs/synth"
    format: Literal["jsonl", "parquet"] = "jsonl"
    seed: int = 0
    items: int = 1000
    fsync_every: int = 256
    progress: bool = True


@dataclass
class PipelineSettings:
    kind: str = field(default="symbolic", metadata={"registry": PIPELINES})


@dataclass
class SymbolicSettings:
    difficulty: Any = field(default_factory=list)  # 1..5, "easy", or a list of levels; [] = the stage mix below
    families: list[str] = field(default_factory=list)  # names of symbolic.FAMILIES; [] = all
    max_digits: int = 3
    answer_template: str = "The answer is: {answer}"
    mix: dict[str, float] = field(default_factory=lambda: {"normal": 1.0, "hard": 0.0})
    # a compact fixed-width column-arithmetic tier (see symbolic.generate_arithmetic) instead of the
    # families above: what the CPU demo trains a model from scratch on
    arithmetic: Literal["", "normal", "hard"] = ""


@dataclass
class BackendSettings:
    kind: Literal["symbolic", "openai", "local"] = "symbolic"
    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    model: str = "teacher"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64
    max_retries: int = 6
    timeout_s: float = 120.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0  # longest Retry-After (429/503) honoured
    bench_s: float = 1.0  # an unreachable URL is set aside this long, doubling per failure ...
    max_bench_s: float = 60.0  # ... up to this
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 8
    # the served model's folder (kind "openai"), whose mathforge.json says which test splits seeded its
    # training data: the manifest inherits them (a "local" model's own folder is read without it)
    provenance: str = ""


@dataclass
class SamplingSettings:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = -1  # >= 0: request seed = seed + a per-item offset; -1 = unseeded


@dataclass
class PromptSettings:
    dir: str = ""  # a folder whose templates override the built-in ones of the same relative name
    system: str = ""
    # how the instruction is sent: "chat", or a raw layout of mathforge.prompts ("jiuzhang", …) sent as a raw
    # completion exactly as the trainer renders it; "" = the local model's training layout (mathforge.json),
    # else "chat". See synth/prompts.py resolve_layout.
    layout: str = ""


@dataclass
class SkyworkSettings:
    seeds: list[str] = field(default_factory=lambda: ["gsm8k"])  # built-in names, files, folders, hf:<name>
    allow_test_split: bool = False  # seeds from an evaluation split (e.g. "math"): refused unless true
    seed_fields: dict[str, str] = field(default_factory=lambda: {"question": "question", "answer": "answer"})
    select: int = 0  # core-set size per stage pool (0 = all seeds); see synth/seeds.py
    # source (gsm8k, math, a seed file's name without suffix) -> weight in the core-set ({} = as in the seeds)
    select_mix: dict[str, float] = field(default_factory=dict)
    select_by_level: bool = True  # stratify by MATH level within a source too
    solutions: int = 4  # distinct solutions kept per item: answer_aug's samples; cap of self-consistent drafts
    methods: list[str] = field(default_factory=SKYWORK_METHODS.names, metadata={"registry": SKYWORK_METHODS})
    evol_rounds: int = 2
    evol_ops: list[str] = field(default_factory=EVOL_OPS.names, metadata={"registry": EVOL_OPS})
    self_check: bool = True
    hard_levels: list[int] = field(default_factory=lambda: [4, 5])
    hard_by_prompt: bool = False  # no seeds of hard_levels: the hard stage draws any seed (the hard prompt does it)
    mix: dict[str, float] = field(default_factory=lambda: {"normal": 0.85, "hard": 0.15})


@dataclass
class JiuZhangSettings:
    texts: list[str] = field(default_factory=list)
    text_field: str = "text"
    stages: list[str] = field(default_factory=lambda: ["uniform"])  # names of EDUCATION_STAGES, or "uniform"
    variants: list[str] = field(default_factory=VARIANTS.names, metadata={"registry": VARIANTS})
    step: Literal["distill", "synthesize"] = "synthesize"


# [quality] dedup_on / near_dedup_on when a recipe leaves them empty: pipeline kind ("jiuzhang-distill" for
# the JiuZhang distillation step) -> (exact-dedup keys, near-dedup keys). The distillation set keys on the
# seed text's id + education stage + variant, so one text under 8 stages x {cot, tool} stays 16 rows; Skywork
# keeps several distinct solutions per question (answer augmentation) by keying on prompt + response.
DEDUP_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "symbolic": (["prompt"], ["prompt"]),
    "skywork": (["prompt", "response"], ["response"]),
    "jiuzhang": (["prompt"], ["prompt"]),
    "jiuzhang-distill": (["seed_id", "stage", "method"], ["response"]),
}
# what a dedup key may name: a row field, or a meta key every pipeline's rows carry
DEDUP_KEYS = ("prompt", "response", "id", "pipeline", "method", "stage", "seed_id", "difficulty", "answer", "model")


@dataclass
class QualitySettings:
    exact_dedup: bool = True
    near_dedup: bool = True
    dedup_on: list[str] = field(default_factory=list)  # row fields / meta keys of exact dedup; [] = DEDUP_DEFAULTS
    near_dedup_on: list[str] = field(default_factory=list)  # the texts MinHash compares (joined); [] = the default
    near_dedup_ngram: int = 5
    near_dedup_threshold: float = 0.8
    near_dedup_perm: int = 128
    near_dedup_bands: int = 16
    decontaminate: bool = True
    decontamination_n: int = quality.DEFAULT_N  # n-gram size; defaults measured by bench/decontamination.py
    decontamination_threshold: float = quality.DEFAULT_THRESHOLD  # shared grams / grams of the shorter text
    decontamination_min_words: int = quality.DEFAULT_MIN_WORDS  # eval items shorter than n are indexed whole
    decontamination_sets: list[str] = field(
        default_factory=lambda: list(quality.DEFAULT_SETS), metadata={"registry": EVAL_SETS}
    )
    decontamination_fields: list[str] = field(default_factory=lambda: ["prompt"])
    require_answer: bool = True
    answer_marker: str = "The answer is:"
    self_consistency: int = 0
    min_agree: float = 0.5
    min_prompt_chars: int = 10
    max_prompt_chars: int = 4000
    min_response_chars: int = 10
    max_response_chars: int = 16000
    execute_tool: bool = True
    tool_timeout: float = 10.0
    unsafe_sandbox: bool = False


@dataclass
class SynthConfig:
    """A whole synthesis recipe; `to_dict()` is its plain form (settings.json, manifests, the settings hash)."""

    run: RunSettings = field(default_factory=RunSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    symbolic: SymbolicSettings = field(default_factory=SymbolicSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    skywork: SkyworkSettings = field(default_factory=SkyworkSettings)
    jiuzhang: JiuZhangSettings = field(default_factory=JiuZhangSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(SynthConfig)]


def load(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict[str, Any] | None = None
) -> SynthConfig:
    """The checked config: defaults, then the TOML file (or `data`), then `a.b.c=value` overrides."""
    where = str(path) if path else "<config>"
    raw: dict[str, Any] = read_toml(path) if path is not None else copy.deepcopy(data or {})
    return from_dict(apply_overrides(raw, list(overrides or [])), where)


def from_dict(raw: dict[str, Any], where: str = "<config>") -> SynthConfig:
    """A SynthConfig from a raw dict of TOML tables; ConfigError (naming `where`) on anything unknown or bad."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section [{unknown[0]}]; allowed: {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(SynthConfig)
    sections = {name: build(hints[name], raw.get(name, {}), f"{where}: {name}") for name in SECTIONS}
    cfg = SynthConfig(**sections)
    _check(cfg, where)
    _dedup_keys(cfg, where)
    return cfg


def _dedup_keys(cfg: SynthConfig, where: str) -> None:
    """Fills empty [quality] dedup_on / near_dedup_on with the pipeline's default; ConfigError on an unknown key."""
    q, kind = cfg.quality, cfg.pipeline.kind
    exact, near = DEDUP_DEFAULTS.get(f"{kind}-{cfg.jiuzhang.step}", DEDUP_DEFAULTS.get(kind, (["prompt"], ["prompt"])))
    q.dedup_on, q.near_dedup_on = list(q.dedup_on or exact), list(q.near_dedup_on or near)
    for key in ("dedup_on", "near_dedup_on"):
        for i, name in enumerate(getattr(q, key)):
            if name not in DEDUP_KEYS:
                raise ConfigError(
                    f"{where}: quality.{key}[{i}]: unknown field {name!r}; allowed: {', '.join(DEDUP_KEYS)} "
                    "(prompt and response are row fields, the others keys of the row's meta)"
                )


def _check(cfg: SynthConfig, where: str) -> None:
    """Checks that span keys or need more than a type: ranges, mixes, stage names, pipeline/backend fit."""
    q, sy, sk, jz = cfg.quality, cfg.symbolic, cfg.skywork, cfg.jiuzhang
    checks = [
        (bool(cfg.run.output.strip()), "run.output", "is empty: name a folder for the output, e.g. runs/my-run"),
        (cfg.run.items >= 0, "run.items", "must be >= 0"),
        (cfg.backend.concurrency >= 1, "backend.concurrency", "must be >= 1"),
        (len(cfg.backend.base_urls) >= 1, "backend.base_urls", "needs at least one URL"),
        (q.self_consistency >= 0, "quality.self_consistency", "must be >= 0 (0 = off)"),
        (sk.solutions >= 1, "skywork.solutions", "must be >= 1"),
        (_good_weights(sk.select_mix), "skywork.select_mix", "must map seed sources to numbers >= 0"),
        (0 < q.near_dedup_threshold <= 1, "quality.near_dedup_threshold", "must be in (0, 1]"),
        (0 < q.decontamination_threshold <= 1, "quality.decontamination_threshold", "must be in (0, 1]"),
        (q.decontamination_n >= 1, "quality.decontamination_n", "must be >= 1"),
        (_good_mix(sy.mix), "symbolic.mix", "must map normal/hard to non-negative weights"),
        (_good_mix(sk.mix), "skywork.mix", "must map normal/hard to non-negative weights"),
        (_good_difficulty(sy.difficulty), "symbolic.difficulty", "must be 1..5, 'easy', or a list of them"),
        (bool(jz.variants), "jiuzhang.variants", f"must be a non-empty subset of {', '.join(VARIANTS)}"),
    ]
    for ok, key, what in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} {what}")
    unknown = sorted(set(sy.families) - set(symbolic.FAMILIES))
    if unknown:
        raise ConfigError(f"{where}: symbolic.families has unknown {unknown}; allowed: {', '.join(symbolic.FAMILIES)}")
    for i, stage in enumerate(jz.stages):
        if stage != "uniform" and stage not in EDUCATION_STAGES:
            raise ConfigError(
                f"{where}: jiuzhang.stages[{i}]: unknown {EDUCATION_STAGES.what} {stage!r}; "
                f"known: uniform (all of them), {', '.join(EDUCATION_STAGES)}"
            )
    if cfg.prompts.layout:
        try:
            check_layout(cfg.prompts.layout)
        except ConfigError as error:
            raise ConfigError(f"{where}: prompts.layout: {error}") from None
    kind, backend = cfg.pipeline.kind, cfg.backend.kind
    if (kind == "symbolic") != (backend == "symbolic"):
        raise ConfigError(
            f"{where}: backend.kind = {backend!r} does not fit pipeline.kind = {kind!r} "
            "(symbolic needs symbolic; skywork/jiuzhang need openai or local)"
        )


def _good_weights(weights: dict[str, Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in weights.values())


def _good_mix(mix: dict[str, Any]) -> bool:
    weights = mix.values()
    return (
        set(mix) <= {"normal", "hard"}
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in weights)
        and sum(weights) > 0
    )


def _good_difficulty(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in items)
