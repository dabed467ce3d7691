"""Synthesis configs: TOML files checked against a schema, with `--set section.key=value` overrides.

Every key has a type and a default; an unknown section or key, or a value of the wrong type or
outside its allowed values, raises ConfigError naming the file, the key and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# section -> key -> (types, default, allowed values or None)
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any, tuple | None]]] = {
    "run": {
        "output": ((str,), "runs/synth", None),
        "format": ((str,), "jsonl", ("jsonl", "parquet")),
        "seed": ((int,), 0, None),
        "items": ((int,), 1000, None),
        "fsync_every": ((int,), 256, None),
        "progress": ((bool,), True, None),
    },
    "pipeline": {"kind": ((str,), "symbolic", ("symbolic", "skywork", "jiuzhang"))},
    "symbolic": {
        "difficulty": ((int, str, list), [], None),
        "families": ((list,), [], None),
        "max_digits": ((int,), 3, None),
        "answer_template": ((str,), "The answer is: {answer}", None),
        "mix": ((dict,), {"normal": 1.0, "hard": 0.0}, None),
        # a compact fixed-width column-arithmetic tier (see symbolic.generate_arithmetic) instead of the
        # families above: what the CPU demo trains a model from scratch on
        "arithmetic": ((str,), "", ("", "normal", "hard")),
    },
    "backend": {
        "kind": ((str,), "symbolic", ("symbolic", "openai", "local")),
        "base_urls": ((list,), ["http://127.0.0.1:8000/v1"], None),
        "model": ((str,), "teacher", None),
        "api_key_env": ((str,), "OPENAI_API_KEY", None),
        "concurrency": ((int,), 64, None),
        "max_retries": ((int,), 6, None),
        "timeout_s": ((float, int), 120.0, None),
        "backoff_s": ((float, int), 0.5, None),
        "max_backoff_s": ((float, int), 30.0, None),
        "device": ((str,), "auto", None),
        "dtype": ((str,), "auto", ("auto", "float32", "bfloat16", "float16")),
        "batch_size": ((int,), 8, None),
    },
    "sampling": {
        "temperature": ((float, int), 0.7, None),
        "top_p": ((float, int), 0.95, None),
        "max_tokens": ((int,), 1024, None),
        "seed": ((int,), -1, None),
    },
    "prompts": {"dir": ((str,), "", None), "system": ((str,), "", None)},
    "skywork": {
        "seeds": ((list,), ["gsm8k", "math"], None),
        "seed_fields": ((dict,), {"question": "question", "answer": "answer"}, None),
        "select": ((int,), 0, None),
        "select_ngram": ((int,), 3, None),
        "methods": ((list,), ["answer_aug", "rephrase", "fobar", "self_verify", "evol", "teacher"], None),
        "evol_rounds": ((int,), 2, None),
        "evol_ops": ((list,), ["rewrite", "constraints", "deepen", "concretize", "steps"], None),
        "self_check": ((bool,), True, None),
        "hard_levels": ((list,), [4, 5], None),
        "hard_by_prompt": ((bool,), False, None),
        "mix": ((dict,), {"normal": 0.85, "hard": 0.15}, None),
    },
    "jiuzhang": {
        "texts": ((list,), [], None),
        "text_field": ((str,), "text", None),
        "stages": ((str, list), "uniform", None),
        "variants": ((list,), ["cot", "tool"], None),
        "step": ((str,), "synthesize", ("distill", "synthesize")),
    },
    "quality": {
        "exact_dedup": ((bool,), True, None),
        "near_dedup": ((bool,), True, None),
        "near_dedup_ngram": ((int,), 5, None),
        "near_dedup_threshold": ((float, int), 0.8, None),
        "near_dedup_perm": ((int,), 128, None),
        "near_dedup_bands": ((int,), 16, None),
        "decontaminate": ((bool,), True, None),
        "decontamination_n": ((int,), 30, None),
        "decontamination_sets": ((list,), ["gsm8k_test", "math500_test"], None),
        "decontamination_fields": ((list,), ["prompt"], None),
        "require_answer": ((bool,), True, None),
        "answer_marker": ((str,), "The answer is:", None),
        "self_consistency": ((int,), 0, None),
        "min_agree": ((float, int), 0.5, None),
        "min_prompt_chars": ((int,), 10, None),
        "max_prompt_chars": ((int,), 4000, None),
        "min_response_chars": ((int,), 10, None),
        "max_response_chars": ((int,), 16000, None),
        "execute_tool": ((bool,), True, None),
        "tool_timeout": ((float, int), 10.0, None),
        "unsafe_sandbox": ((bool,), False, None),
    },
}
JIUZHANG_STAGES = ("grade_school", "middle_school", "high_school", "college", "amc8", "amc10", "amc12", "aime")
SKYWORK_METHODS = ("answer_aug", "rephrase", "fobar", "self_verify", "evol", "teacher")
EVOL_OPS = ("rewrite", "constraints", "deepen", "concretize", "steps")


def defaults() -> dict[str, dict[str, Any]]:
    return {s: {k: copy.deepcopy(v[1]) for k, v in keys.items()} for s, keys in SCHEMA.items()}


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         data: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The checked config: defaults, then the TOML file (or `data`), then `section.key=value` overrides."""
    where = str(path) if path else "<config>"
    raw: dict[str, Any] = copy.deepcopy(data) if data else {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. run.items=100)")
        key, value = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        raw.setdefault(section, {})[name] = _parse_value(value.strip())
    cfg = defaults()
    for section, values in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: unknown section [{section}]; allowed: {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{where}: unknown key {section}.{key}; allowed: {', '.join(SCHEMA[section])}")
            types, _, allowed = SCHEMA[section][key]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                names = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{where}: {section}.{key} = {value!r} must be {names}")
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{where}: {section}.{key} = {value!r}; allowed values: {', '.join(allowed)}")
            cfg[section][key] = value
    _check(cfg, where)
    return cfg


def _check(cfg: dict[str, dict[str, Any]], where: str) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {key} {what}")

    need(cfg["run"]["items"] >= 0, "run.items", "must be >= 0")
    need(cfg["backend"]["concurrency"] >= 1, "backend.concurrency", "must be >= 1")
    need(len(cfg["backend"]["base_urls"]) >= 1, "backend.base_urls", "needs at least one URL")
    need(cfg["quality"]["self_consistency"] >= 0, "quality.self_consistency", "must be >= 0 (0 = off)")
    need(0 < cfg["quality"]["near_dedup_threshold"] <= 1, "quality.near_dedup_threshold", "must be in (0, 1]")
    for section in ("symbolic", "skywork"):
        mix = cfg[section]["mix"]
        need(set(mix) <= {"normal", "hard"} and all(isinstance(v, (int, float)) and v >= 0 for v in mix.values())
             and sum(mix.values()) > 0, f"{section}.mix", "must map normal/hard to non-negative weights")
    bad = sorted(set(cfg["skywork"]["methods"]) - set(SKYWORK_METHODS))
    need(not bad, "skywork.methods", f"has unknown {bad}; allowed values: {', '.join(SKYWORK_METHODS)}")
    bad = sorted(set(cfg["skywork"]["evol_ops"]) - set(EVOL_OPS))
    need(not bad, "skywork.evol_ops", f"has unknown {bad}; allowed values: {', '.join(EVOL_OPS)}")
    stages = cfg["jiuzhang"]["stages"]
    stages = [stages] if isinstance(stages, str) else stages
    bad = sorted(set(stages) - set(JIUZHANG_STAGES) - {"uniform"})
    need(not bad, "jiuzhang.stages", f"has unknown {bad}; allowed values: uniform, {', '.join(JIUZHANG_STAGES)}")
    bad = sorted(set(cfg["jiuzhang"]["variants"]) - {"cot", "tool"})
    need(not bad and cfg["jiuzhang"]["variants"], "jiuzhang.variants", "must be a non-empty subset of cot, tool")
    kind, backend = cfg["pipeline"]["kind"], cfg["backend"]["kind"]
    need((kind == "symbolic") == (backend == "symbolic"), "backend.kind",
         f"= {backend!r} does not fit pipeline.kind = {kind!r} (symbolic needs symbolic; skywork/jiuzhang need openai or local)")
