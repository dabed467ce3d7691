"""Evaluation settings: one dataclass, `EvalConfig`, behind `mathforge eval` and `run_eval`.

Sources, later ones winning: an optional TOML file of flat keys (`mathforge eval --config eval.toml`),
`--set key=value` overrides (the grammar of `mathforge.config.apply_overrides`), then the command's
flags given explicitly. Python callers pass the same keys as keyword arguments to `run_eval`.

    # eval.toml
    model = "runs/ckpt-1000"
    bench = ["gsm8k", "math500"]
    prompt = "qwen-boxed"
    n = 4
    temperature = 0.7
    [fields]
    question = "prompt"

Unknown keys are refused listing the allowed ones; bad values are refused naming the key (`check`).
Importing this module is cheap: it loads neither the runner nor any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathforge.config import apply_overrides, build, read_toml
from mathforge.errors import ConfigError
from mathforge.prompts import PROMPTS

__all__ = ["EvalConfig", "eval_config", "load_eval_config"]


@dataclass
class EvalConfig:
    """Every setting of one evaluation run (what results.json records under "config")."""

    model: str | None = None  # a Hugging Face checkpoint folder (local generation) ...
    api: str | None = None  # ... or an OpenAI-compatible base URL, e.g. http://localhost:8000/v1
    served_model: str | None = None  # the model name the server serves (with api)
    engine: Literal["auto", "mathforge", "transformers"] = "auto"  # local generation engine
    request_timeout: float = 600.0  # seconds per request (with api)
    bench: list[str] = field(default_factory=lambda: ["gsm8k"])  # gsm8k, math500, math, a JSONL path, hf:<name>
    split: str = "test"
    limit: int | None = None  # only the first N problems of each benchmark
    fields: dict[str, str] | None = None  # question/answer/id/subject/level → the data's keys (files)
    prompt: str | None = None  # a prompt of mathforge.prompts or a .toml path; None = the benchmark's default
    chat: bool | None = None  # chat messages or raw completion; None = the prompt's choice
    n: int = 1  # samples per problem (pass@k and maj@k when > 1)
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    tool: bool = False  # tool-integrated: run the model's Python in the sandbox, feed the output back
    unsafe_sandbox: bool = False  # with tool: run the model's code even where the sandbox is not safe
    batch_size: int = 32  # prompts per batch (local generation)
    concurrency: int = 16  # parallel requests (with api)
    max_retry_after_s: float = 60.0  # longest Retry-After (429/503) honoured (with api)
    bench_s: float = 1.0  # a base URL that cannot be connected to is set aside this long, doubling per failure ...
    max_bench_s: float = 60.0  # ... up to this (with api)
    boxes: Literal["join", "last"] = "join"  # several \\boxed{} in one answer: one answer set, or the last box
    out: str | None = None  # folder for results.json, results.md and samples-*.jsonl (`mathforge eval`: a new
    # runs/eval/<model>-<UTC time> when not given; run_eval: nothing is written)
    force: bool = False  # overwrite an earlier run's results.json in `out`
    allow_contaminated: bool = False  # evaluate on a split that seeded the model's training data (mathforge.json)

    def __post_init__(self) -> None:
        # "gsm8k,math500" and ["gsm8k", "math500"] mean the same
        self.bench = [name.strip() for item in self.bench for name in item.split(",") if name.strip()]


def check(config: EvalConfig, where: str) -> EvalConfig:
    """`config` itself when its values make sense together; else a ConfigError naming the key."""
    rules = [
        ("n", config.n >= 1, "must be >= 1"),
        ("temperature", config.temperature >= 0, "must be >= 0"),
        ("temperature", config.n == 1 or config.temperature > 0, "must be > 0 when n > 1 (greedy samples agree)"),
        ("top_p", 0 < config.top_p <= 1, "must be in (0, 1]"),
        ("limit", config.limit is None or config.limit >= 1, "must be >= 1 when given"),
        ("max_new_tokens", config.max_new_tokens >= 1, "must be >= 1"),
        ("batch_size", config.batch_size >= 1, "must be >= 1"),
        ("concurrency", config.concurrency >= 1, "must be >= 1"),
        ("request_timeout", config.request_timeout > 0, "must be > 0"),
        ("max_retry_after_s", config.max_retry_after_s >= 0, "must be >= 0"),
        ("bench_s", config.bench_s >= 0, "must be >= 0"),
        ("max_bench_s", config.max_bench_s >= config.bench_s, "must be >= bench_s"),
        ("bench", bool(config.bench), "is empty; give gsm8k, math500, math, a JSONL path or hf:<name>"),
    ]
    for key, ok, message in rules:
        if not ok:
            raise ConfigError(f"{where}.{key} {message}, got {getattr(config, key)!r}")
    if config.prompt is not None and not config.prompt.endswith(".toml"):
        PROMPTS.check(config.prompt, f"{where}.prompt")
    return config


def eval_config(raw: dict[str, Any], where: str = "eval") -> EvalConfig:
    """A checked EvalConfig from a dict of settings (TOML keys, `run_eval` keyword arguments; paths may be
    `Path`s and lists tuples)."""
    plain = {key: _plain(value) for key, value in raw.items()}
    return check(build(EvalConfig, plain, where), where)


def _plain(value: Any) -> Any:
    """Paths as strings, tuples as lists: the types TOML would give."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_eval_config(
    path: str | Path | None = None, overrides: list[str] | None = None, flags: dict[str, Any] | None = None
) -> EvalConfig:
    """The settings of `mathforge eval`: the TOML file (if any), then `--set` overrides, then the flags
    given (those that are not None)."""
    raw = read_toml(path) if path is not None else {}
    apply_overrides(raw, overrides or [])
    raw.update({key: value for key, value in (flags or {}).items() if value is not None})
    return eval_config(raw, f"{path}: eval" if path is not None else "eval")
