"""Training configuration: TOML recipes → dataclasses, with `--set key=value` overrides.

A recipe has tables `[run]`, `[model]`, `[data]`, `[optim]`, `[loss]`, `[train]` and an array `[[stages]]`;
each stage may override data, epochs/steps, learning rate and schedule (a name in `optim.SCHEDULES`). Unknown
keys and bad values raise `ConfigError` naming the key (with its file) and the allowed keys or values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathforge.config import apply_overrides, build, read_toml
from mathforge.errors import ConfigError
from mathforge.trainer.optim import SCHEDULES
from mathforge.trainer.templates import check_template

__all__ = [
    "Config",
    "LossConfig",
    "StageConfig",
    "apply_overrides",
    "config_from_dict",
    "config_warnings",
    "load_config",
    "result_differences",
]


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end of each stage
    keep_last: int = 2
    tensorboard: bool = True


@dataclass
class ModelSettings:
    init: str = "tiny"  # a preset name of mathforge.model, or a Hugging Face checkpoint folder
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields changed on top of a preset
    attention_backend: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False


@dataclass
class DataConfig:
    tokenizer: str = ""  # a tokenizer folder; empty = the model's folder
    template: str = "alpaca-cot"  # "chat" or a prompt of mathforge.prompts
    max_seq_len: int = 2048
    overflow: Literal["truncate", "drop"] = "truncate"
    num_proc: int = 1
    cache_dir: str = ""  # tokenized-data cache; empty = <out_dir>/cache
    skip_bad_rows: bool = False  # count and skip rows missing fields instead of failing


@dataclass
class OptimConfig:
    lr: float = 2e-5
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = field(default="cosine", metadata={"registry": SCHEDULES})
    warmup_ratio: float = 0.03
    decay_ratio: float = 0.1  # WSD: the final fraction of steps that decays


@dataclass
class LossConfig:
    """Options of the token cross-entropy (`mathforge.kernels.fused_linear_cross_entropy`), per target token:
    (1 − ε)·nll + ε·(lse − mean logit) + z_loss·lse², on logits soft-capped as softcap·tanh(z/softcap)."""

    z_loss: float = 0.0  # weight of lse² (PaLM's z-loss keeps the softmax normaliser near 1); 1e-4 is usual
    label_smoothing: float = 0.0  # ε in [0, 1)
    softcap: float | None = None  # > 0 (Gemma 2 uses 30); None = no capping
    ignore_index: int = -100  # the label of positions that carry no loss (prompts, document ends); < 0


@dataclass
class TrainConfig:
    micro_batch_tokens: int = 4096  # tokens per packed micro-batch (the packer's bin size)
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    # auto: bf16-autocast on CUDA, fp32 on CPU. bf16-autocast keeps fp32 master weights and optimizer states
    # (under FSDP2 as a MixedPrecisionPolicy with bf16 parameters and fp32 gradient reduction); bf16 keeps
    # the weights in bf16 and only the optimizer states in fp32 (stochastically rounded updates).
    precision: Literal["auto", "fp32", "bf16-autocast", "bf16"] = "auto"
    device: str = "auto"  # auto = cuda when available, else cpu
    max_steps: int = 0  # stop the whole run after this many optimizer steps (0 = no limit)
    time_limit_s: float = 0.0  # stop cleanly (with a checkpoint) after this many seconds (0 = no limit)
    peak_tflops: float = 0.0  # override the GPU peak used for MFU


@dataclass
class StageConfig:
    name: str = "stage"
    data: list[str] = field(default_factory=list)  # JSONL/Parquet files or Hugging Face dataset names
    epochs: float = 1.0
    steps: int = 0  # if > 0, overrides epochs
    reset_optimizer: bool = False
    # Per-stage overrides of [optim] and [data]; None = inherit.
    lr: float | None = None
    schedule: str | None = field(default=None, metadata={"registry": SCHEDULES})
    warmup_ratio: float | None = None
    template: str | None = None
    max_seq_len: int | None = None
    # which tokens carry the loss: "response" (the prompt is masked: SFT) or "all" (every token after the
    # first: JiuZhang3.0's pre-training on synthetic data); see trainer.data.with_loss_on
    loss_on: Literal["all", "response"] = "response"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)
    source: str = "<dict>"  # where the config came from, for messages

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def stage_optim(self, stage: StageConfig) -> OptimConfig:
        """[optim] with the stage's overrides applied."""
        changes = {k: getattr(stage, k) for k in ("lr", "schedule", "warmup_ratio") if getattr(stage, k) is not None}
        return dataclasses.replace(self.optim, **changes)

    def stage_data(self, stage: StageConfig) -> DataConfig:
        """[data] with the stage's overrides applied."""
        changes = {k: getattr(stage, k) for k in ("template", "max_seq_len") if getattr(stage, k) is not None}
        return dataclasses.replace(self.data, **changes)


_build = build


_SECTIONS = {
    "run": RunConfig,
    "model": ModelSettings,
    "data": DataConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    unknown = sorted(set(raw) - set(_SECTIONS) - {"stages"})
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}; allowed: {', '.join([*_SECTIONS, 'stages'])}")
    sections = {name: _build(cls, raw.get(name, {}), f"{source}: [{name}]") for name, cls in _SECTIONS.items()}
    stages_raw = raw.get("stages", [])
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: [[stages]] must list at least one stage")
    stages = [_build(StageConfig, s, f"{source}: stages[{i}]") for i, s in enumerate(stages_raw)]
    config = Config(**sections, stages=stages, source=source)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    src = config.source
    if not str(config.run.out_dir).strip():
        raise ConfigError(f'{src}: [run] out_dir is empty; name the run folder, e.g. out_dir = "runs/my-run"')
    checks = [
        (config.run.log_every >= 1, f"[run] log_every = {config.run.log_every} must be >= 1"),
        (config.run.checkpoint_every >= 0, f"[run] checkpoint_every = {config.run.checkpoint_every} must be >= 0"),
        (config.train.max_steps >= 0, f"[train] max_steps = {config.train.max_steps} must be >= 0 (0 = no limit)"),
        (config.train.time_limit_s >= 0, f"[train] time_limit_s = {config.train.time_limit_s} must be >= 0"),
        (config.train.micro_batch_tokens > 0, "[train] micro_batch_tokens must be > 0"),
        (config.train.grad_accum > 0, "[train] grad_accum must be > 0"),
        (config.data.max_seq_len > 1, "[data] max_seq_len must be > 1"),
        (config.optim.lr >= 0, "[optim] lr must be >= 0"),
        (0 <= config.optim.warmup_ratio < 1, "[optim] warmup_ratio must be in [0, 1)"),
        (0 < config.optim.decay_ratio <= 1, "[optim] decay_ratio must be in (0, 1]"),
        (config.run.keep_last >= 1, "[run] keep_last must be >= 1"),
        (config.loss.z_loss >= 0, "[loss] z_loss must be >= 0"),
        (0 <= config.loss.label_smoothing < 1, "[loss] label_smoothing must be in [0, 1)"),
        (config.loss.softcap is None or config.loss.softcap > 0, "[loss] softcap must be > 0 (or absent)"),
        (config.loss.ignore_index < 0, "[loss] ignore_index must be < 0 (token ids are >= 0)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{src}: {message}")
    for where, name in [("[data] template", config.data.template)] + [
        (f"stages[{i}] template", s.template) for i, s in enumerate(config.stages) if s.template
    ]:
        try:
            check_template(name)
        except ConfigError as error:
            raise ConfigError(f"{src}: {where}: {error}") from None
    for i, stage in enumerate(config.stages):
        if not stage.data:
            raise ConfigError(f"{src}: stages[{i}] ({stage.name}) has no data")
        for key in ("steps", "epochs"):
            value = getattr(stage, key)
            if value < 0:
                raise ConfigError(f"{src}: stages.{i}.{key} = {value} ({stage.name}) must be >= 0")
        if stage.lr is not None and stage.lr < 0:
            raise ConfigError(f"{src}: stages.{i}.lr = {stage.lr} ({stage.name}) must be >= 0")
        if stage.epochs <= 0 and stage.steps <= 0:
            raise ConfigError(f"{src}: stages[{i}] ({stage.name}) needs epochs > 0 or steps > 0")
        max_len = stage.max_seq_len or config.data.max_seq_len
        if max_len > config.train.micro_batch_tokens:
            raise ConfigError(
                f"{src}: stages[{i}] max_seq_len={max_len} exceeds [train] micro_batch_tokens="
                f"{config.train.micro_batch_tokens}; a sequence must fit one micro-batch"
            )


# Keys that may differ between a run and its resumption: they change how the run is logged, saved, stopped or
# computed, not what it computes (the same steps on the same data with the same settings).
RESUME_NEUTRAL_KEYS = (
    "run.out_dir",
    "run.log_every",
    "run.checkpoint_every",
    "run.keep_last",
    "run.tensorboard",
    "data.num_proc",
    "data.cache_dir",
    "train.max_steps",
    "train.time_limit_s",
    "train.peak_tflops",
    "train.device",
    "model.attention_backend",
    "model.compile",
    "model.activation_checkpointing",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and prefix == "stages":
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def result_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every setting that changes what a run computes and differs
    between a run's stored config (`Config.to_dict()`, as JSON) and `current`; keys in RESUME_NEUTRAL_KEYS
    may differ. A key missing on one side shows as "<absent>"."""
    old, new = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current)))
    diffs = []
    for key in sorted(set(old) | set(new), key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")]):
        if key in RESUME_NEUTRAL_KEYS:
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            diffs.append((key, a, b))
    return diffs


def config_warnings(config: Config) -> list[str]:
    """One line for each setting that is legal but probably not meant: a stage that trains with lr = 0."""
    warnings = []
    for i, stage in enumerate(config.stages):
        lr = config.stage_optim(stage).lr
        if lr == 0:
            where = f"stages.{i}.lr" if stage.lr is not None else "[optim] lr"
            warnings.append(
                f"warning: {config.source}: stage {stage.name} trains with learning rate 0 ({where} = 0): "
                "its steps will not change the weights"
            )
    return warnings


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a TOML recipe, applies `--set` overrides and validates it."""
    raw = read_toml(path)
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))
