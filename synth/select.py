"""Run a selection config: score a candidate pool against a target set with influence features, pick the top.

    from mathforge.synth import influence_config, select
    cfg = influence_config.load("synth/configs/select.toml")
    select.run_shard(cfg, (0, 1)); manifest = select.merge(cfg, 1)   # run_shard(..., resume=True) to finish one

Candidate k of the pool (its sources read in order) belongs to shard `k % n`. A shard streams its rows in
chunks of `run.chunk_rows`; each finished chunk is one file under `<output>/features/shard-i-of-n/` holding
the candidates' indices, unit features (float16), gradient norms and scores, so memory stays bounded and a
rerun with `resume=True` (`--resume`) skips every finished chunk (a finished shard is not even read again);
without it a shard that holds chunks is refused, as `mathforge synth` refuses a shard with a journal. The
warm-up and the target features are computed once and kept under `<output>/state/` for every shard to reuse.

Target sets follow the seed pools' test-split rule (`synth/seeds.py`, `check_source`): the built-in "math"
(MATH test minus MATH-500) and any data-file set most of whose problems are evaluation items are refused
naming the set and the split unless `target.allow_test_split`; the few target problems of a clean set that
match an evaluation item are dropped and counted. `merge(cfg, n)` reads the n shards' scores, selects the top
`select.top_k` or `select.top_fraction`, and writes:

    scores.jsonl      {"index", "key", "where", "score", "selected"} per scored candidate, in pool order
    selection.jsonl   the selected rows as read, plus {"influence": {"score", "rank"}}, in pool order
    select.json       provenance (model, target sets, seed, settings hash, `seeded_from_test` in the synth
                      manifests' shape: a synth run reading selection.jsonl copies it) and counts (skipped
                      rows by reason, target problems dropped as evaluation items)
    report.md, scores.png   the score distribution and the top and bottom picks
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mathforge.datasources import Row, read_rows
from mathforge.errors import ConfigError, DataError
from mathforge.synth.influence_config import SelectConfig
from mathforge.synth.seeds import SEED_SOURCES, TestSplitRule, add_check, check_source

SKIP_EXAMPLES = 5  # rows named per skip reason in select.json


# ---------------------------------------------------------------- files


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards running at once never share a temporary
    write(tmp)
    os.replace(tmp, path)


def _create_once(path: Path, write) -> None:
    """Writes `path` unless another process made it first (then that one stands): shards that compute the
    warm-up or the target features at the same time all end up using the same file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _write_json(path: Path, value: Any) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8"))


def _shard_dir(cfg: SelectConfig, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(cfg.run.output) / "features" / f"shard-{i:05d}-of-{n:05d}"


def _check_output(cfg: SelectConfig) -> Path:
    """The output folder, made; ConfigError when it is unusable or holds features of other settings."""
    out = Path(cfg.run.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"run.output = {str(out)!r}: cannot write there ({error.strerror or error})") from None
    settings = out / "select-settings.json"
    digest = cfg.features_hash()
    if settings.is_file():
        old = json.loads(settings.read_text(encoding="utf-8")).get("features_hash")
        if old != digest:
            raise ConfigError(
                f"run.output = {str(out)!r} holds features of other settings (hash {old}, these: {digest}); "
                "choose another run.output or delete that folder"
            )
    else:
        text = json.dumps({"features_hash": digest, "settings": cfg.to_dict()}, indent=2) + "\n"
        _create_once(settings, lambda p: p.write_text(text, encoding="utf-8"))
    return out


# ---------------------------------------------------------------- rows


def candidate_rows(cfg: SelectConfig) -> Iterator[tuple[int, Row]]:
    """(global index, row) over every candidate source, in order."""
    rows = itertools.chain.from_iterable(read_rows(s, split=cfg.candidates.split) for s in cfg.candidates.sources)
    yield from enumerate(rows)


def candidate_text(cfg: SelectConfig, row: Row) -> tuple[str, str | None] | str:
    """(text, None) or (prompt, response) of a candidate row, or the reason it is skipped."""
    c, value = cfg.candidates, row.value
    if not isinstance(value, dict):
        return "not an object"
    if c.prompt_field:
        prompt, response = value.get(c.prompt_field), value.get(c.response_field)
        if not (isinstance(prompt, str) and prompt.strip() and isinstance(response, str) and response.strip()):
            return f"no text under {c.prompt_field!r} and {c.response_field!r}"
        return prompt, response
    text = value.get(c.text_field)
    if not isinstance(text, str) or not text.strip():
        return f"no text under {c.text_field!r}"
    return text, None


TARGET_RULE = TestSplitRule(
    "target.sets",
    "target.allow_test_split",
    "target problems",
    "a selection tuned to them leaks that benchmark into the synthesized corpus",
    'target.prompt_field = "problem" and target.response_field = "solution"',
    "select.json then records the split, the synth run whose jiuzhang.texts is this selection inherits it, and "
    "`mathforge eval` on it refuses a model trained on that run's data without --allow-contaminated",
)


@dataclasses.dataclass
class Targets:
    """Every (prompt, solution) pair of the target sets, checked against the evaluation sets (synth/seeds.py's
    `check_source`): pairs matching an evaluation item dropped and counted, test splits refused or recorded."""

    pairs: list[tuple[str, str]]
    dropped: dict[str, int]  # eval set -> target pairs dropped as its items
    seeded_from_test: dict[str, dict[str, Any]]  # eval set -> {"sources", "seeds"}: the synth manifests' shape

    def sample(self, count: int, seed: int) -> list[tuple[str, str]]:
        """A seeded sample of at most `count` pairs, in their order."""
        keep = sorted(np.random.default_rng(seed).permutation(len(self.pairs))[:count].tolist())
        return [self.pairs[i] for i in keep]


def load_targets(cfg: SelectConfig) -> Targets:
    """The target sets' pairs, source by source through the test-split rule (a ConfigError names the set and
    the split unless target.allow_test_split)."""
    from mathforge.synth.influence import TARGET_SETS

    t = cfg.target
    targets = Targets([], {}, {})
    for name in t.sets:
        builtin = SEED_SOURCES.get(TARGET_SETS.get(name).source) if name in TARGET_SETS else None
        group = _builtin_pairs(name) if name in TARGET_SETS else _file_pairs(cfg, name)
        check = check_source(
            name, [p for p, _ in group], builtin=builtin, allow_test_split=t.allow_test_split, rule=TARGET_RULE
        )
        add_check(targets.seeded_from_test, targets.dropped, check)
        targets.pairs += [group[i] for i in check.keep]
    return targets


def _builtin_pairs(name: str) -> list[tuple[str, str]]:
    from mathforge.evaluate import datasets
    from mathforge.synth.influence import TARGET_SETS

    target = TARGET_SETS.get(name)
    source = SEED_SOURCES.get(target.source)
    return [(r[target.prompt], r[target.response]) for r in datasets.load(source.dataset, source.split)]


def _file_pairs(cfg: SelectConfig, name: str) -> list[tuple[str, str]]:
    from mathforge.synth.influence import TARGET_SETS

    t = cfg.target
    if not Path(name).exists() and not name.startswith("hf:"):
        raise ConfigError(f"target.sets: {name!r} is neither a target set ({', '.join(TARGET_SETS)}) nor a file")
    pairs = []
    for row in read_rows(name):
        value = row.value if isinstance(row.value, dict) else {}
        prompt, response = value.get(t.prompt_field), value.get(t.response_field)
        if not (isinstance(prompt, str) and isinstance(response, str)):
            raise DataError(f"{row.where}: target rows need {t.prompt_field!r} and {t.response_field!r}")
        pairs.append((prompt, response))
    return pairs


# ---------------------------------------------------------------- the model side (torch imported here)


@dataclasses.dataclass
class Scorer:
    cfg: SelectConfig
    tokenizer: Any
    model: Any
    featurizer: Any
    adam: Any  # AdamState or None
    centers: Any  # [k, dim]
    targets: int
    device: Any

    def examples(self, texts: list[tuple[str, str | None]]) -> list[Any]:
        from mathforge.synth.influence import encode

        return [encode(self.tokenizer, a, b, self.cfg.model.max_tokens) for a, b in texts]

    def features(self, examples: list[Any], adam: Any = None) -> Any:
        """[len(examples), dim] fp32 features, computed in batches of run.batch_size."""
        import torch

        from mathforge.synth.influence import collate

        out = []
        for start in range(0, len(examples), self.cfg.run.batch_size):
            batch = collate(examples[start : start + self.cfg.run.batch_size], self.device)
            out.append(self.featurizer.features(batch, adam).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.cfg.gradients.dim)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device = {name!r}: not a device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device = {name!r}: no CUDA GPU here (use auto or cpu)")
    return device


def load_model(cfg: SelectConfig, device: Any) -> tuple[Any, Any]:
    """(model, tokenizer): a Hugging Face folder, or a preset with random weights (seeded) and `model.tokenizer`."""
    import torch

    from mathforge.backends import load_tokenizer
    from mathforge.model import PRESETS, from_config, from_pretrained

    dtype = getattr(torch, cfg.run.dtype)
    path = Path(cfg.model.path)
    if not path.is_dir() and cfg.model.path not in PRESETS:
        raise ConfigError(f"model.path = {cfg.model.path!r}: no such folder, and not a preset ({', '.join(PRESETS)})")
    if path.is_dir():
        model = from_pretrained(path, dtype=dtype, device=device)
    else:
        if not cfg.model.tokenizer:
            raise ConfigError(f"model.path = {cfg.model.path!r} is a preset: set model.tokenizer to a tokenizer folder")
        torch.manual_seed(cfg.run.seed)
        model = from_config(cfg.model.path, dtype=dtype, device=device)
    tokenizer = load_tokenizer(Path(cfg.model.tokenizer or path))
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary {model.config.vocab_size}"
        )
    model.eval()
    return model, tokenizer


def build_scorer(cfg: SelectConfig, out: Path, stream: Any, targets: Targets) -> Scorer:
    """The model with its parameter subset, warmed up and target features made (or both loaded from state/)."""
    import torch

    from mathforge.synth import influence as inf

    device = _device(cfg.run.device)
    model, tokenizer = load_model(cfg, device)
    subset = inf.PARAM_SUBSETS.get(cfg.gradients.params)(model, cfg.gradients, cfg.run.seed)
    featurizer = inf.Featurizer(
        model, subset, inf.SparseProjection(cfg.gradients.dim, cfg.gradients.nonzeros, cfg.run.seed)
    )
    scorer = Scorer(cfg, tokenizer, model, featurizer, None, None, 0, device)
    state = out / "state"
    state.mkdir(exist_ok=True)
    params = inf.parameters(subset)
    if cfg.warmup.steps > 0:
        warm = state / "warmup.pt"
        if not warm.is_file():
            _say(stream, f"select: warm-up, {cfg.warmup.steps} steps on {cfg.warmup.source}")
            batches = _warmup_batches(cfg, scorer, targets)
            adam = inf.warmup(model, subset, batches, cfg.warmup.steps, cfg.warmup.lr)
            saved = {
                "params": {n: p.detach().cpu() for n, p in params},
                "exp_avg": adam.exp_avg,
                "exp_avg_sq": adam.exp_avg_sq,
            }
            _create_once(warm, lambda p: torch.save(saved, p))
        saved = torch.load(warm, map_location=device)
        with torch.no_grad():
            for name, p in params:
                p.copy_(saved["params"][name])
        scorer.adam = inf.AdamState(saved["exp_avg"], saved["exp_avg_sq"])
    target = state / "target.pt"
    if not target.is_file():
        pairs = targets.sample(cfg.target.max_examples, cfg.run.seed)
        examples = [e for e in scorer.examples(pairs) if inf.trainable(e)]
        _say(stream, f"select: target features of {len(examples)} examples from {', '.join(cfg.target.sets)}")
        feats = scorer.features(examples)
        centers = inf.centroids(feats, cfg.target.clusters, cfg.run.seed)
        _create_once(
            target, lambda p: torch.save({"features": feats.half(), "centers": centers, "count": len(examples)}, p)
        )
        too_long = len(pairs) - len(examples)  # the prompt alone fills model.max_tokens: no solution token left
        _write_json(state / "target.json", {"sampled": len(pairs), "examples": len(examples), "too_long": too_long})
    saved = torch.load(target, map_location="cpu")
    scorer.centers, scorer.targets = saved["centers"], saved["count"]
    if cfg.gradients.normalize == "none":
        scorer.adam = None
    return scorer


def _warmup_batches(cfg: SelectConfig, scorer: Scorer, targets: Targets) -> Iterator[Any]:
    from mathforge.synth.influence import collate, trainable

    w = cfg.warmup
    if w.source == "target":
        texts = targets.sample(cfg.target.max_examples, cfg.run.seed + 1)[: w.samples]
    else:
        found = (candidate_text(cfg, row) for _, row in candidate_rows(cfg))
        texts = list(itertools.islice((t for t in found if not isinstance(t, str)), w.samples))
    examples = [e for e in scorer.examples(texts) if trainable(e)]
    if not examples:
        raise DataError(f"warm-up: no usable examples in warmup.source = {w.source!r}")
    rng = np.random.default_rng(cfg.run.seed)
    while True:
        order = rng.permutation(len(examples))
        for start in range(0, len(order), w.batch_size):
            yield collate([examples[i] for i in order[start : start + w.batch_size]], scorer.device)


# ---------------------------------------------------------------- one shard


class Rate:
    """Progress in examples/s. On a terminal a live line (rich); elsewhere (Slurm logs, pipes) a plain line
    every `every_s` seconds and one at the end, as `mathforge synth` does:

        select: 1200 examples, 85.3 examples/s
    """

    def __init__(self, enabled: bool, stream: Any, every_s: float = 10.0) -> None:
        self.enabled, self.stream, self.every_s = enabled and stream is not None, stream, every_s
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start
        self.bar = None
        if self.enabled and getattr(stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn

            columns = (SpinnerColumn(), TextColumn("select: {task.completed} examples, {task.fields[rate]} examples/s"))
            self.bar = Progress(*columns, console=Console(file=stream), transient=True)
            self.task = self.bar.add_task("select", total=None, rate="-")

    def __enter__(self) -> Rate:
        return self

    def begin(self) -> None:
        """The set-up is done: count examples/s from now, and show the live line."""
        self.start = self.last = time.perf_counter()
        if self.bar is not None:
            self.bar.start()

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        self.line()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{self.rate():.1f}")
        elif now - self.last >= self.every_s:
            self.last = now
            self.line()

    def line(self) -> None:
        if self.enabled and self.done:
            print(f"select: {self.done} examples, {self.rate():.1f} examples/s", file=self.stream, flush=True)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)


def _say(stream: Any, text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def run_shard(
    cfg: SelectConfig, shard: tuple[int, int] = (0, 1), stream: Any = None, *, resume: bool = False
) -> dict[str, Any]:
    """Features and scores of this shard's candidates, chunk by chunk. A shard that already computed chunks (or
    finished) is refused unless `resume`; then its finished chunks are not redone."""
    stream = stream if stream is not None else (sys.stdout if cfg.run.progress else None)
    folder = _shard_dir(cfg, shard)
    done = folder / "done.json"
    if not resume and (done.is_file() or any(folder.glob("chunk-*.json"))):
        raise ConfigError(
            f"{folder} holds features of an earlier run: pass --resume to finish it (finished chunks are reused), "
            "or set run.output elsewhere"
        )
    targets = load_targets(cfg)  # the test-split rule before anything is written
    out = _check_output(cfg)
    if done.is_file():
        return {**json.loads(done.read_text(encoding="utf-8")), "computed": 0}
    folder.mkdir(parents=True, exist_ok=True)
    i, n = shard
    scorer = None
    rate = Rate(cfg.run.progress, stream)

    def ready() -> Scorer:  # the model is loaded (and warmed up) only when a chunk needs computing
        nonlocal scorer
        if scorer is None:
            scorer = build_scorer(cfg, out, stream, targets)
            rate.begin()  # examples/s of the features, not of the set-up
        return scorer

    stats = {"rows": 0, "scored": 0, "skipped": {}, "computed": 0, "reused": 0}
    buffer: list[tuple[int, Row]] = []
    chunk = -1
    with rate:
        for k, row in candidate_rows(cfg):
            if k % n != i:
                continue
            chunk, stats["rows"] = stats["rows"] // cfg.run.chunk_rows, stats["rows"] + 1
            if (folder / f"chunk-{chunk:06d}.json").is_file():
                stats["reused"] += 1
                continue
            buffer.append((k, row))
            if len(buffer) == cfg.run.chunk_rows:
                _compute_chunk(ready(), folder / f"chunk-{chunk:06d}", buffer, rate)
                stats["computed"], buffer = stats["computed"] + len(buffer), []
        if buffer:
            _compute_chunk(ready(), folder / f"chunk-{chunk:06d}", buffer, rate)
            stats["computed"] += len(buffer)
    for meta in sorted(folder.glob("chunk-*.json")):
        info = json.loads(meta.read_text(encoding="utf-8"))
        stats["scored"] += info["scored"]
        _add_skips(stats["skipped"], info["skipped"])
    stats["examples_per_s"] = round(rate.rate(), 2) if stats["computed"] else None
    _write_json(done, {k: v for k, v in stats.items() if k != "computed"})
    return stats


def _add_skips(total: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> None:
    """Adds skip counts by reason (keeping the first SKIP_EXAMPLES rows named of each) into `total`."""
    for reason, entry in more.items():
        into = total.setdefault(reason, {"count": 0, "rows": []})
        into["count"] += entry["count"]
        into["rows"] = (into["rows"] + entry["rows"])[:SKIP_EXAMPLES]


def _compute_chunk(scorer: Scorer, base: Path, rows: list[tuple[int, Row]], rate: Rate) -> None:
    """One chunk's file pair: `<base>.npz` (index, unit features fp16, norms, scores), then `<base>.json`."""
    from mathforge.synth.influence import scores as score_of
    from mathforge.synth.influence import trainable

    skipped: dict[str, dict[str, Any]] = {}
    kept: list[tuple[int, Any]] = []
    for k, row in rows:
        text = candidate_text(scorer.cfg, row)
        example = None if isinstance(text, str) else scorer.examples([text])[0]
        reason = text if isinstance(text, str) else (None if trainable(example) else "fewer than 2 tokens")
        if reason is not None:
            entry = skipped.setdefault(reason, {"count": 0, "rows": []})
            entry["count"] += 1
            entry["rows"] = (entry["rows"] + [row.where])[:SKIP_EXAMPLES]
            continue
        kept.append((k, example))
    kept.sort(key=lambda item: len(item[1].ids))  # similar lengths batch together: less padding
    dim = scorer.cfg.gradients.dim
    index = np.array([k for k, _ in kept], dtype=np.int64)
    feats, norms, values = np.zeros((0, dim), np.float16), np.zeros(0, np.float32), np.zeros(0, np.float32)
    if kept:
        parts = []
        for start in range(0, len(kept), scorer.cfg.run.batch_size):
            part = scorer.features([e for _, e in kept[start : start + scorer.cfg.run.batch_size]], scorer.adam)
            parts.append(part)
            rate.advance(part.shape[0])
        import torch

        full = torch.cat(parts)
        norm = full.norm(dim=1)
        values = score_of(full, scorer.centers).numpy().astype(np.float32)
        feats = (full / norm.clamp_min(1e-30)[:, None]).half().numpy()
        norms = norm.numpy().astype(np.float32)

    def save(path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, index=index, features=feats, norms=norms, scores=values)

    _atomic_write(base.with_suffix(".npz"), save)
    _write_json(base.with_suffix(".json"), {"rows": len(rows), "scored": len(kept), "skipped": skipped})


def load_features(cfg: SelectConfig, shard: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(index [m], unit features [m, dim] float16) of a finished shard, in chunk order."""
    files = sorted(_shard_dir(cfg, shard).glob("chunk-*.npz"))
    parts = [np.load(f) for f in files]
    dim = cfg.gradients.dim
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float16)
    return np.concatenate([p["index"] for p in parts]), np.concatenate([p["features"] for p in parts])


# ---------------------------------------------------------------- merge, select, report


def merge(cfg: SelectConfig, n: int, stream: Any = None) -> dict[str, Any]:
    """Select over all n finished shards; write scores.jsonl, selection.jsonl, select.json, report.md, scores.png."""
    targets = load_targets(cfg)  # what the selection was tuned to: its test splits are recorded
    out = _check_output(cfg)
    index, values, shards = [], [], []
    for i in range(n):
        folder = _shard_dir(cfg, (i, n))
        done = folder / "done.json"
        if not done.is_file():
            raise ConfigError(f"shard {i}/{n} has not finished ({done} is missing): run `--shard {i}/{n}` first")
        shards.append(json.loads(done.read_text(encoding="utf-8")))
        for f in sorted(folder.glob("chunk-*.npz")):
            with np.load(f) as data:
                index.append(data["index"])
                values.append(data["scores"])
    index_all = np.concatenate(index) if index else np.zeros(0, np.int64)
    score_all = np.concatenate(values) if values else np.zeros(0, np.float32)
    count = len(score_all)
    k = min(cfg.select.top_k, count) if cfg.select.top_k else math.ceil(cfg.select.top_fraction * count)
    order = np.lexsort((index_all, -score_all.astype(np.float64)))  # best first; ties: pool order
    rank = np.full(sum(s["rows"] for s in shards), -1, dtype=np.int64)  # by pool index; -1: not scored
    rank[index_all[order]] = np.arange(count)
    score_of = np.zeros(len(rank), dtype=np.float32)
    score_of[index_all] = score_all
    picks = _write_outputs(cfg, out, score_of, rank, k)
    manifest = _manifest(cfg, n, shards, count, k, score_all, order, targets)
    _write_json(out / "select.json", manifest)
    _report(out, manifest, score_all, index_all, order, picks, cfg.select.report_examples)
    _say(stream, f"select: {k} of {count} candidates → {out / 'selection.jsonl'}")
    return manifest


def _write_outputs(cfg: SelectConfig, out: Path, score_of: np.ndarray, rank: np.ndarray, k: int) -> dict[int, str]:
    """scores.jsonl and selection.jsonl in one pass over the pool (`rank` and `score_of` indexed by pool index,
    rank < k selected); returns the texts of the report's top and bottom picks."""
    shown, scored = cfg.select.report_examples, int((rank >= 0).sum())
    picks: dict[int, str] = {}

    def write(paths: tuple[Path, Path]) -> None:
        with paths[0].open("w", encoding="utf-8") as scores, paths[1].open("w", encoding="utf-8") as selection:
            for i, row in candidate_rows(cfg):
                r = int(rank[i]) if i < len(rank) else -1
                if r < 0:
                    continue
                score = round(float(score_of[i]), 6)
                record = {"index": i, "key": row.key, "where": row.where, "score": score, "selected": r < k}
                scores.write(json.dumps(record) + "\n")
                if r < k:
                    value = {**row.value, "influence": {"score": score, "rank": r}}
                    selection.write(json.dumps(value, ensure_ascii=False) + "\n")
                if r < shown or r >= scored - shown:
                    text = candidate_text(cfg, row)
                    picks[i] = text[0] if text[1] is None else f"{text[0]}\n{text[1]}"

    tmp = (out / "scores.jsonl.tmp", out / "selection.jsonl.tmp")
    write(tmp)
    os.replace(tmp[0], out / "scores.jsonl")
    os.replace(tmp[1], out / "selection.jsonl")
    return picks


def _target_counts(cfg: SelectConfig) -> dict[str, int] | None:
    path = Path(cfg.run.output) / "state" / "target.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _manifest(cfg, n, shards, count, k, score_all, order, targets: Targets) -> dict[str, Any]:
    import mathforge

    skipped: dict[str, dict[str, Any]] = {}
    for s in shards:
        _add_skips(skipped, s["skipped"])
    rates = [s["examples_per_s"] for s in shards if s.get("examples_per_s")]
    return {
        "mathforge": mathforge.__version__,
        "model": cfg.model.path,
        "tokenizer": cfg.model.tokenizer or cfg.model.path,
        "target_sets": cfg.target.sets,
        "target_examples": _target_counts(cfg),
        "targets_dropped_as_eval_items": targets.dropped,
        # evaluation sets the target sets were drawn from (target.allow_test_split), as synth manifests record
        # them; a synth run whose jiuzhang.texts is this selection copies it into its manifest
        "seeded_from_test": targets.seeded_from_test,
        "seed": cfg.run.seed,
        "features_hash": cfg.features_hash(),
        "gradients": dataclasses.asdict(cfg.gradients),
        "warmup": dataclasses.asdict(cfg.warmup),
        "shards": n,
        "rows": sum(s["rows"] for s in shards),
        "scored": count,
        "skipped": skipped,
        "selected": k,
        "threshold": float(score_all[order[k - 1]]) if k else None,
        "score_mean": float(score_all.mean()) if count else None,
        "examples_per_s": rates,
        "files": {name: name for name in ("scores.jsonl", "selection.jsonl", "report.md", "scores.png")},
    }


def _report(
    out: Path, manifest: dict[str, Any], score_all, index_all, order, picks: dict[int, str], shown: int
) -> None:
    """scores.png (the histogram, the threshold marked) and report.md (counts, provenance, top and bottom picks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(score_all, bins=min(60, max(10, len(score_all) // 20)), color="#4c72b0")
    if manifest["threshold"] is not None:
        ax.axvline(manifest["threshold"], color="#c44e52", label=f"selected ≥ {manifest['threshold']:.3f}")
        ax.legend()
    ax.set_xlabel("influence score (cosine to the target features)")
    ax.set_ylabel("candidates")
    ax.set_title(f"{manifest['scored']} candidates, {manifest['selected']} selected")
    fig.tight_layout()
    _atomic_write(out / "scores.png", lambda p: fig.savefig(str(p), format="png", dpi=100))
    plt.close(fig)
    skipped = ", ".join(f"{r}: {e['count']}" for r, e in manifest["skipped"].items()) or "none"
    t = manifest["target_examples"]
    lines = [
        "# Influence selection",
        "",
        f"Model `{manifest['model']}`, target {', '.join(manifest['target_sets'])}, seed {manifest['seed']}, "
        f"settings hash `{manifest['features_hash']}`, parameters `{manifest['gradients']['params']}`, "
        f"{manifest['gradients']['dim']} dimensions.",
        "",
        f"{manifest['rows']} rows, {manifest['scored']} scored, {manifest['selected']} selected "
        f"(score ≥ {manifest['threshold'] or 0:.4f}); skipped: {skipped}.",
        "",
        f"Target examples: {t['examples']} of {t['sampled']} sampled ({t['too_long']} had no solution token within "
        "model.max_tokens)."
        if t
        else "Target examples: (no state/target.json)",
        "",
        "![score distribution](scores.png)",
        "",
    ]
    for eval_set, entry in manifest["seeded_from_test"].items():
        lines[-2:-2] = [
            f"**Contaminated for {eval_set}**: the target sets {', '.join(entry['sources'])} are drawn from its "
            "test split (target.allow_test_split); data synthesized from this selection inherits it.",
            "",
        ]
    bottom = max(len(order) - shown, shown)
    for title, ranks in (("Top picks", range(min(shown, len(order)))), ("Bottom picks", range(bottom, len(order)))):
        lines += [f"## {title}", "", "| rank | index | score | text |", "| ---: | ---: | ---: | --- |"]
        for r in ranks:
            i = int(index_all[order[r]])
            text = " ".join(picks.get(i, "").split())[:160].replace("|", "\\|")
            lines.append(f"| {r} | {i} | {score_all[order[r]]:.4f} | {text} |")
        lines.append("")
    _atomic_write(out / "report.md", lambda p: p.write_text("\n".join(lines), encoding="utf-8"))
