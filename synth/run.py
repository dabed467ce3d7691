"""Run a synthesis config: enumerate work items, keep this shard's, skip done ones, generate, filter, write.

    from mathforge.synth import config, run
    manifest = run.synthesize(config.load("synth/configs/symbolic-demo.toml"), shard=(0, 1), resume=False)

Item k of the config's deterministic item list belongs to shard `k % n`; each finished item goes to
the shard's journal at once (see store.py), so `resume=True` after a crash redoes only the missing
ones. When the shard's items are done, the dataset filters run over the shard's rows (exact and
near-duplicate removal, decontamination, lengths) and the data files, removed-rows log and manifest
are (re)written. `merge(cfg, n)` applies the same filters across all n shards' journals — the step
to run once all array jobs are done, so duplicates across shards go too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from mathforge.backends import BackendError
from mathforge.errors import ConfigError
from mathforge.synth import quality
from mathforge.synth.common import Context, Reject
from mathforge.synth.prompts import Prompts
from mathforge.synth.store import Journal, shard_name, write_json, write_rows
from mathforge.synth.symbolic import ArithmeticGenerator, Generator


class SymbolicPipeline:
    """Rows straight from the symbolic generator: item k is problem k of the run's seed."""

    name = "symbolic"
    sync = True

    def __init__(self, cfg: dict[str, Any]) -> None:
        sy, self.seed = cfg["symbolic"], cfg["run"]["seed"]
        total, mix = cfg["run"]["items"], sy["mix"]
        n_hard = round(total * mix.get("hard", 0) / sum(mix.values()))
        diff = sy["difficulty"] or None
        common = {"families": sy["families"] or None, "max_digits": sy["max_digits"],
                  "answer_template": sy["answer_template"], "seed": self.seed}
        if sy["arithmetic"]:  # one compact column-arithmetic tier; its problems carry the tier as their stage
            self.gens = {sy["arithmetic"]: ArithmeticGenerator(sy["arithmetic"], self.seed, sy["answer_template"])}
            self.counts = {sy["arithmetic"]: total}
        elif diff is not None:  # an explicit difficulty overrides the stage mix
            self.gens = {"normal": Generator(difficulty=diff, **common)}
            self.counts = {"normal": total}
        else:
            self.gens = {s: Generator(stage=s, **common) for s, c in (("normal", total - n_hard), ("hard", n_hard)) if c}
            self.counts = {"normal": total - n_hard, "hard": n_hard}
        self.info = {"items": self.counts}

    def items(self) -> list[dict[str, Any]]:
        return [{"id": f"sym-{self.seed}-{stage}-{k}", "stage": stage, "k": k}
                for stage, count in self.counts.items() if count for k in range(count)]

    def process_sync(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        problem = self.gens[item["stage"]].problem(item["k"] if item["stage"] == "normal" else 10**9 + item["k"])
        row = problem.row(self.seed)
        row["meta"]["id"] = item["id"]
        row["meta"]["check"] = json.dumps(row["meta"]["check"])
        return [row]


def make_pipeline(cfg: dict[str, Any]):
    kind = cfg["pipeline"]["kind"]
    if kind == "symbolic":
        return SymbolicPipeline(cfg)
    prompts = Prompts(cfg["prompts"]["dir"] or None, cfg["prompts"]["system"])
    if kind == "skywork":
        from mathforge.synth.skywork import SkyworkPipeline

        return SkyworkPipeline(cfg)
    from mathforge.synth.jiuzhang import JiuZhangPipeline

    return JiuZhangPipeline(cfg, prompts.stages())


def settings_hash(cfg: dict[str, Any]) -> str:
    """Hash of everything that decides the items' content (not output paths or run-time knobs)."""
    keep = {k: v for k, v in cfg.items() if k not in ("quality",)}
    keep["run"] = {k: v for k, v in cfg["run"].items() if k in ("seed", "items")}
    keep["backend"] = {k: v for k, v in cfg["backend"].items() if k in ("kind", "model")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def synthesize(cfg: dict[str, Any], *, shard: tuple[int, int] = (0, 1), resume: bool = False,
               backend: Any = None) -> dict[str, Any]:
    """Generates this shard's missing items, then filters and writes its data and manifest (returned)."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"--shard {index}/{count}: need 0 <= i < n")
    out = Path(cfg["run"]["output"])
    name = shard_name(index, count)
    journal_path = out / "work" / f"journal-{name}.jsonl"
    settings_path = out / "settings.json"
    digest = settings_hash(cfg)
    if journal_path.exists() and not resume:
        raise ConfigError(f"{journal_path} exists: pass --resume to finish that run, or set run.output elsewhere")
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old.get("settings_hash") != digest:
            raise ConfigError(f"{out} was made with other settings (hash {old.get('settings_hash')} != {digest}); "
                              "use a new run.output")
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, {"settings_hash": digest, "config": cfg})

    start = time.perf_counter()
    pipeline = make_pipeline(cfg)
    items = [it for k, it in enumerate(pipeline.items()) if k % count == index]
    journal = Journal(journal_path, fsync_every=cfg["run"]["fsync_every"])
    todo = [it for it in items if it["id"] not in journal.done]
    stats = {"items": len(items), "already_done": len(items) - len(todo), "torn_bytes": journal.torn_bytes,
             "rejected": 0, "failed": 0, "failed_ids": []}
    usage: dict[str, Any] = {}
    try:
        if pipeline.sync:
            _run_sync(pipeline, todo, journal, stats, cfg["run"]["progress"])
        else:
            usage = asyncio.run(_run_async(pipeline, todo, journal, stats, cfg, backend))
    finally:
        journal.close()
    stats["generate_seconds"] = round(time.perf_counter() - start, 3)
    manifest = finalize(cfg, [journal_path], name)
    manifest.update({"shard": {"index": index, "count": count}, "generation": stats, "usage": usage,
                     "pipeline_info": getattr(pipeline, "info", {})})
    write_json(out / f"manifest-{name}.json", manifest)
    return manifest


def _progress(enabled: bool, total: int):
    from rich.progress import Progress

    progress = Progress(disable=not enabled, transient=True)
    return progress, progress.add_task("synthesizing", total=total)


def _run_sync(pipeline, todo, journal: Journal, stats: dict, show: bool) -> None:
    progress, task = _progress(show, len(todo))
    with progress:
        for it in todo:
            journal.append({"id": it["id"], "status": "ok", "rows": pipeline.process_sync(it)})
            progress.advance(task)


async def _run_async(pipeline, todo, journal: Journal, stats: dict, cfg: dict, backend: Any) -> dict[str, Any]:
    from mathforge.backends import make_backend

    own = backend is None
    backend = backend if backend is not None else make_backend(cfg["backend"], seed=cfg["run"]["seed"])
    q = cfg["quality"]
    sandbox = _tool_sandbox(cfg)
    if sandbox is not None:
        stats["sandbox"] = sandbox.isolation.as_dict()
    ctx = Context(backend, Prompts(cfg["prompts"]["dir"] or None, cfg["prompts"]["system"]), cfg["sampling"],
                  marker=q["answer_marker"], require_answer=q["require_answer"], consistency=q["self_consistency"],
                  min_agree=q["min_agree"], sandbox=sandbox, tool_timeout=float(q["tool_timeout"]))
    queue: asyncio.Queue = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)
    progress, task = _progress(cfg["run"]["progress"], len(todo))

    async def worker() -> None:
        while True:
            try:
                it = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                rows = await pipeline.process(it, ctx)
                record = {"id": it["id"], "status": "ok", "rows": rows}
            except Reject as why:
                stats["rejected"] += 1
                record = {"id": it["id"], "status": "rejected", "reason": str(why), "kind": f"{it.get('method', '')}: {why.kind}",
                          "rows": []}
            except BackendError as error:  # not journaled: --resume retries it
                stats["failed"] += 1
                stats["failed_ids"].append({"id": it["id"], "error": str(error)[:300]})
                continue
            journal.append(record)
            progress.advance(task)

    try:
        with progress:
            await asyncio.gather(*(worker() for _ in range(min(cfg["backend"]["concurrency"], max(1, len(todo))))))
    finally:
        if own:
            await backend.aclose()
        if sandbox is not None:
            sandbox.close()
    return backend.usage.as_dict()


def _tool_sandbox(cfg: dict[str, Any]):
    """A Sandbox that executes tool-integrated solutions (JiuZhang "tool" variant, quality.execute_tool), checked
    safe before the first request; None when nothing is to be executed."""
    q = cfg["quality"]
    if not (cfg["pipeline"]["kind"] == "jiuzhang" and "tool" in cfg["jiuzhang"]["variants"] and q["execute_tool"]):
        return None
    from mathforge.evaluate.sandbox import Sandbox, require_safe

    sandbox = Sandbox()
    try:
        require_safe(sandbox, q["unsafe_sandbox"])
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def finalize(cfg: dict[str, Any], journals: list[Path], name: str, folder: str = "data") -> dict[str, Any]:
    """Filters the rows of `journals`, writes <folder>/<stage>/shard-<name>.* and removed-<name>.jsonl; returns counts."""
    out, q = Path(cfg["run"]["output"]), cfg["quality"]
    report = quality.Report()
    rows: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    records = 0
    all_records = []
    for path in journals:
        journal = Journal(path)
        journal.close()
        all_records.extend(journal.records())
    # journal order is completion order (it varies with concurrency); sort so "keep the first" is deterministic
    for record in sorted(all_records, key=lambda r: _natural(r["id"])):
        records += 1
        rows.extend(record["rows"])
        if record["status"] != "ok":
            reason = record.get("kind", record.get("reason", ""))
            reasons[reason] = reasons.get(reason, 0) + 1
            report.removed.append({"filter": "generation", "id": record["id"], "reason": record.get("reason")})
    report.counts["generation"] = {"in": records, "removed": sum(reasons.values()), "kept": len(rows)}
    steps: list[tuple[str, Any]] = [
        ("length", lambda r: quality.length_filter(r, min_prompt_chars=q["min_prompt_chars"],
                                                   max_prompt_chars=q["max_prompt_chars"],
                                                   min_response_chars=q["min_response_chars"],
                                                   max_response_chars=q["max_response_chars"]))]
    if q["exact_dedup"]:
        steps.append(("exact_dedup", quality.exact_dedup))
    if q["near_dedup"]:
        steps.append(("near_dedup", lambda r: quality.near_dedup(
            r, ngram=q["near_dedup_ngram"], num_perm=q["near_dedup_perm"], bands=q["near_dedup_bands"],
            threshold=q["near_dedup_threshold"])))
    deco = None
    if q["decontaminate"]:
        deco = quality.Decontaminator(q["decontamination_n"], q["decontamination_sets"])
        steps.append(("decontamination", lambda r: deco.filter(r, tuple(q["decontamination_fields"]))))
    for step, fn in steps:
        seen = len(rows)
        rows, removed = fn(rows)
        report.add(step, seen, removed)
    fmt = cfg["run"]["format"]
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_stage.setdefault(str(row["meta"].get("stage", "all")), []).append(row)
    files = {}
    for stage, stage_rows in sorted(by_stage.items()):
        path = out / folder / stage / f"shard-{name}.{fmt}"
        write_rows(path, stage_rows, fmt)
        files[stage] = {"path": str(path), "rows": len(stage_rows)}
    with open(out / f"removed-{name}.jsonl", "w", encoding="utf-8") as handle:
        for r in report.removed:
            handle.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"name": name, "rows": len(rows), "files": files, "filters": report.counts,
            "generation_rejections": reasons, "decontamination": deco.summary() if deco else None,
            "settings": cfg}


def _natural(text: str) -> list:
    """Sort key that orders embedded numbers numerically ("item-9" before "item-10")."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def merge(cfg: dict[str, Any], count: int) -> dict[str, Any]:
    """Filters all `count` shards' journals together (cross-shard dedup) into merged/<stage>/shard-merged.*."""
    out = Path(cfg["run"]["output"])
    journals = [out / "work" / f"journal-{shard_name(i, count)}.jsonl" for i in range(count)]
    missing = [str(p) for p in journals if not p.exists()]
    if missing:
        raise ConfigError(f"--merge {count}: missing shard journals {', '.join(missing[:3])}")
    manifest = finalize(cfg, journals, "merged", folder="merged")
    write_json(out / "manifest-merged.json", manifest)
    return manifest
