"""Run a synthesis config: enumerate work items, keep this shard's, skip done ones, generate, filter, write.

    from mathforge.synth import config, run
    manifest = run.synthesize(config.load("synth/configs/symbolic-demo.toml"), shard=(0, 1), resume=False)
    manifest["files"]                                         # stage -> {"path", "rows"}

Item k of the config's deterministic item list belongs to shard `k % n`; each finished item goes to
the shard's journal at once (see store.py), so `resume=True` after a crash redoes only the missing
ones. When the shard's items are done, the dataset filters run over the shard's rows (exact and
near-duplicate removal, decontamination, lengths; streamed in two passes over the journals, see stream.py)
and the data files, removed-rows log and manifest are (re)written. `merge(cfg, n)` applies the same filters across all n shards' journals — the step
to run once all array jobs are done, so duplicates across shards go too.

Before the first request of an OpenAI-compatible run, every `backend.base_urls` entry gets one GET of
<url>/models (3 s): no server at any of them is a ConfigError in seconds, not minutes of retries; when only
some answer, the run starts on those, prints one line naming the others and records them in the manifest
(`usage.unreachable_at_start`; the client benches them until they answer). Progress is a live
bar on a terminal and, in a log file (Slurm, a pipe), a plain line every tenth of the items or 10 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from mathforge.backends import BackendError
from mathforge.errors import ConfigError
from mathforge.synth import quality, stream
from mathforge.synth.common import PIPELINES, Context, Pipeline, Reject
from mathforge.synth.config import QualitySettings, SynthConfig, from_dict
from mathforge.synth.prompts import Prompts, resolve_layout
from mathforge.synth.seeds import SEED_SOURCES
from mathforge.synth.store import Journal, cut_torn_tail, shard_name, writable_folder, write_json


def make_pipeline(cfg: SynthConfig) -> Pipeline:
    """The pipeline `[pipeline] kind` names (see PIPELINES in common.py)."""
    return PIPELINES.get(cfg.pipeline.kind, "pipeline.kind")(cfg)


def settings_hash(cfg: SynthConfig) -> str:
    """Hash of everything that decides the items' content (not output paths or run-time knobs)."""
    settings = cfg.to_dict()
    keep = {k: v for k, v in settings.items() if k not in ("quality",)}
    keep["run"] = {k: v for k, v in settings["run"].items() if k in ("seed", "items")}
    keep["backend"] = {k: v for k, v in settings["backend"].items() if k in ("kind", "model")}
    if not keep["prompts"].get("layout"):  # the default layout hashes as before [prompts] layout existed
        keep["prompts"].pop("layout", None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def synthesize(
    cfg: SynthConfig, *, shard: tuple[int, int] = (0, 1), resume: bool = False, backend: Any = None
) -> dict[str, Any]:
    """Generates this shard's missing items, then filters and writes its data and manifest (returned)."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"--shard {index}/{count}: need 0 <= i < n")
    resolve_layout(cfg.prompts.layout, _trained_layout(cfg, backend), cfg.backend.model)  # before anything is written
    out = writable_folder(cfg.run.output, "run.output")
    down = None
    if backend is None and cfg.backend.kind == "openai":
        down = check_reachable(cfg.backend.base_urls)  # seconds, not the retries' minutes, before anything is written
    name = shard_name(index, count)
    journal_path = out / "work" / f"journal-{name}.jsonl"
    start = time.perf_counter()
    pipeline = make_pipeline(cfg)  # its checks (seeds, test splits) before anything is written
    inherited = synthesizer_provenance(cfg)
    if inherited:  # the synthesizer was trained on test-seeded data: so is what it writes
        info = getattr(pipeline, "info", {})
        pipeline.info = {**info, "seeded_from_test": _merge_seeded(info.get("seeded_from_test") or {}, inherited)}
    _claim_output(cfg, journal_path, resume)

    items = [it for k, it in enumerate(pipeline.items()) if k % count == index]
    journal = Journal(journal_path, fsync_every=cfg.run.fsync_every)
    todo = [it for it in items if it["id"] not in journal.done]
    stats = {
        "items": len(items),
        "already_done": len(items) - len(todo),
        "torn_bytes": journal.torn_bytes,
        "rejected": 0,
        "failed": 0,
        "failed_ids": [],
    }
    usage: dict[str, Any] = {}
    try:
        with Progress(cfg.run.progress, len(todo), stats) as progress:
            if pipeline.sync:
                _run_sync(pipeline, todo, journal, progress)
            else:
                usage = asyncio.run(_run_async(pipeline, todo, journal, stats, cfg, backend, progress))
    finally:
        journal.close()
    stats["generate_seconds"] = round(time.perf_counter() - start, 3)
    if down is not None:
        usage["unreachable_at_start"] = down  # {url: why}; {} when every base URL answered
    manifest = finalize(cfg, [journal_path], name)
    manifest.update(
        {
            "shard": {"index": index, "count": count},
            "generation": stats,
            "usage": usage,
            "pipeline_info": getattr(pipeline, "info", {}),
            # evaluation sets whose problems seeded this run (skywork.allow_test_split); read by the trainer
            "seeded_from_test": getattr(pipeline, "info", {}).get("seeded_from_test", {}),
        }
    )
    write_json(out / f"manifest-{name}.json", manifest)
    return manifest


def synthesizer_provenance(cfg: SynthConfig) -> dict[str, dict[str, Any]]:
    """The evaluation sets whose test problems seeded the synthesizing model's training data: the
    `seeded_from_test` of the mathforge.json in `backend.provenance` (a served model's folder) or, without it,
    in a `backend.kind = "local"` model folder; in the manifests' shape, each source (a synth manifest behind
    that model) named with the mathforge.json it came through. {} when unknown (no such record)."""
    folder = cfg.backend.provenance or (cfg.backend.model if cfg.backend.kind == "local" else "")
    if cfg.backend.provenance and not Path(folder).is_dir():
        raise ConfigError(
            f"backend.provenance = {folder!r}: no such folder (give the served model's folder, whose "
            "mathforge.json records what it was trained on)"
        )
    from mathforge.prompts import training_info

    found = training_info(folder) if folder else None
    recorded = found[0].get("seeded_from_test") if found is not None else None
    if not isinstance(recorded, dict):
        return {}
    return {
        eval_set: {
            "sources": [
                f"{m} (via {found[1]})" for m in (through if isinstance(through, list) and through else [eval_set])
            ],
            "seeds": 0,  # the model's record names manifests, not seed counts
        }
        for eval_set, through in recorded.items()
    }


def _merge_seeded(ours: dict[str, Any], inherited: dict[str, Any]) -> dict[str, Any]:
    """Two `seeded_from_test` records (the manifests' shape) as one: sources listed once, seeds added."""
    merged = {eval_set: {"sources": list(e["sources"]), "seeds": e["seeds"]} for eval_set, e in ours.items()}
    for eval_set, entry in inherited.items():
        into = merged.setdefault(eval_set, {"sources": [], "seeds": 0})
        into["sources"] += [s for s in entry["sources"] if s not in into["sources"]]
        into["seeds"] += entry["seeds"]
    return merged


def _trained_layout(cfg: SynthConfig, backend: Any) -> str | None:
    """The layout the synthesizing model was trained with, when known: a given backend's `template`, or the
    mathforge.json of a `backend.kind = "local"` model folder."""
    if backend is not None:
        return getattr(backend, "template", None)
    if cfg.backend.kind != "local" or not Path(cfg.backend.model).is_dir():
        return None
    from mathforge.prompts import training_template

    trained = training_template(cfg.backend.model)
    return trained[0] if trained else None


def _claim_output(cfg: SynthConfig, journal_path: Path, resume: bool) -> None:
    """Refuses to start over an earlier run (unless resuming) or to resume one made with other settings;
    records this run's settings and their hash in <output>/settings.json."""
    out = Path(cfg.run.output)
    settings_path = out / "settings.json"
    digest = settings_hash(cfg)
    if journal_path.exists() and not resume:
        raise ConfigError(f"{journal_path} exists: pass --resume to finish that run, or set run.output elsewhere")
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old.get("settings_hash") != digest and not _same_settings(old.get("config"), digest):
            raise ConfigError(
                f"{out} was made with other settings (hash {old.get('settings_hash')} != {digest}); use a new run.output"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, {"settings_hash": digest, "config": cfg.to_dict()})


def _same_settings(stored: Any, digest: str) -> bool:
    """Whether a settings.json config (perhaps written by an older version, whose hash read some values in
    another form, e.g. jiuzhang.stages = "uniform" before it became ["uniform"]) has the hash `digest` today."""
    try:
        return isinstance(stored, dict) and settings_hash(from_dict(stored)) == digest
    except ConfigError:
        return False


_SERVER_HINT = "is the server running (or still loading its model)?"


def check_reachable(urls: list[str], timeout_s: float = 3.0, stream: Any = None) -> dict[str, str]:
    """{url: why} of the `urls` no server answers at (connection refused, unknown host, no connection within
    `timeout_s`: `mathforge.openai_client.unreachable`, one GET of <url>/models each, side by side; any HTTP
    answer, even an error status, counts). When some answer, one line on `stream` (stderr) names the others
    (the client benches them until they answer); a ConfigError when none answers, naming each URL's problem,
    or when a URL is not http(s)."""
    from mathforge.openai_client import unreachable

    for url in urls:
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(
                f"cannot reach {url}: not an http(s) URL; write it like http://host:8000/v1 (backend.base_urls)"
            )
    down = unreachable(urls, timeout_s=timeout_s)
    if len(down) == len(urls) == 1:
        raise ConfigError(f"{down[urls[0]]} (backend.base_urls); {_SERVER_HINT}")
    if len(down) == len(urls):
        raise ConfigError(
            f"no server answers at any of the {len(urls)} backend.base_urls: {'; '.join(down.values())}; "
            "are the servers running (or still loading their model)?"
        )
    if down:
        print(
            f"warning: {len(down)} of {len(urls)} backend.base_urls unreachable at start, starting on the others "
            f"(benched until they answer): " + "; ".join(down.values()),
            file=stream if stream is not None else sys.stderr,
            flush=True,
        )
    return down


class Progress:
    """Progress of a shard's items. On a terminal a live bar; elsewhere (Slurm logs, pipes) a plain line every
    tenth of the items or every `every_s` seconds, whichever comes first, and one at the end:

        synth: 120/500 items (24%), 3 rejected, 1 failed, 12.3 items/s, ~31 s left
    """

    def __init__(self, enabled: bool, total: int, stats: dict[str, Any], *, every_s: float = 10.0, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.enabled, self.total, self.stats, self.every_s = enabled and total > 0, total, stats, every_s
        self.done = self.printed = 0
        self.every = max(1, total // 10)
        self.start = self.last = time.perf_counter()
        self.bar = None
        if self.enabled and self.stream.isatty():
            from rich.progress import Progress as Bar

            self.bar = Bar(transient=True)
            self.task = self.bar.add_task("synthesizing", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.enabled and self.printed != self.done:
            self.line()

    def advance(self) -> None:
        """One more item handled (kept, rejected or failed)."""
        self.done += 1
        if self.bar is not None:
            failed, rejected = self.stats.get("failed", 0), self.stats.get("rejected", 0)
            self.bar.update(self.task, advance=1, description=f"synthesizing ({rejected} rejected, {failed} failed)")
        elif self.enabled and (
            self.done - self.printed >= self.every
            or time.perf_counter() - self.last >= self.every_s
            or self.done == self.total
        ):
            self.line()

    def line(self) -> None:
        now = time.perf_counter()
        rate = self.done / max(now - self.start, 1e-9)
        left = f", ~{(self.total - self.done) / rate:.0f} s left" if 0 < self.done < self.total else ""
        print(
            f"synth: {self.done}/{self.total} items ({self.done / self.total:.0%}), {self.stats.get('rejected', 0)} "
            f"rejected, {self.stats.get('failed', 0)} failed, {rate:.1f} items/s{left}",
            file=self.stream,
            flush=True,
        )
        self.printed, self.last = self.done, now


def _run_sync(pipeline, todo, journal: Journal, progress: Progress) -> None:
    for it in todo:
        journal.append({"id": it["id"], "status": "ok", "rows": pipeline.process_sync(it)})
        progress.advance()


def _context(cfg: SynthConfig, backend: Any, sandbox: Any) -> Context:
    q = cfg.quality
    prompts = Prompts(cfg.prompts.dir or None, cfg.prompts.system)
    layout = resolve_layout(cfg.prompts.layout, getattr(backend, "template", None), cfg.backend.model)
    return Context(
        backend,
        prompts,
        cfg.sampling,
        marker=q.answer_marker,
        require_answer=q.require_answer,
        consistency=q.self_consistency,
        min_agree=q.min_agree,
        sandbox=sandbox,
        tool_timeout=q.tool_timeout,
        layout=layout,
    )


async def _process(pipeline, it: dict[str, Any], ctx: Context, stats: dict) -> dict[str, Any] | None:
    """The journal record of one item (rows, or why it was rejected); None on a backend error (not journaled:
    --resume retries it)."""
    try:
        return {"id": it["id"], "status": "ok", "rows": await pipeline.process(it, ctx)}
    except Reject as why:
        stats["rejected"] += 1
        return {
            "id": it["id"],
            "status": "rejected",
            "reason": str(why),
            "kind": f"{it.get('method', '')}: {why.kind}",
            "rows": [],
        }
    except BackendError as error:
        stats["failed"] += 1
        stats["failed_ids"].append({"id": it["id"], "error": str(error)[:300]})
        return None


async def _run_async(
    pipeline, todo, journal: Journal, stats: dict, cfg: SynthConfig, backend: Any, progress: Progress
) -> dict[str, Any]:
    from mathforge.backends import make_backend

    own = backend is None
    backend = backend if backend is not None else make_backend(cfg.to_dict()["backend"], seed=cfg.run.seed)
    sandbox = _tool_sandbox(cfg)
    if sandbox is not None:
        stats["sandbox"] = sandbox.isolation.as_dict()
    ctx = _context(cfg, backend, sandbox)
    queue: asyncio.Queue = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)

    async def worker() -> None:
        while not queue.empty():
            it = queue.get_nowait()
            record = await _process(pipeline, it, ctx, stats)
            if record is not None:
                journal.append(record)
            progress.advance()

    try:
        await asyncio.gather(*(worker() for _ in range(min(cfg.backend.concurrency, max(1, len(todo))))))
    finally:
        if own:
            await backend.aclose()
        if sandbox is not None:
            sandbox.close()
    return backend.usage.as_dict()


def _tool_sandbox(cfg: SynthConfig):
    """A Sandbox that executes tool-integrated solutions (JiuZhang "tool" variant, quality.execute_tool), checked
    safe before the first request; None when nothing is to be executed."""
    from mathforge.synth.jiuzhang import VARIANTS

    uses_tools = any(VARIANTS.get(v).tool for v in cfg.jiuzhang.variants)
    if not (cfg.pipeline.kind == "jiuzhang" and uses_tools and cfg.quality.execute_tool):
        return None
    from mathforge.evaluate.sandbox import Sandbox, require_safe

    sandbox = Sandbox()
    try:
        require_safe(sandbox, cfg.quality.unsafe_sandbox)
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def _filters(q: QualitySettings) -> stream.Plan:
    """The dataset filters `[quality]` turns on, in order of application: lengths, exact dedup, near dedup (on the
    pipeline's keys `dedup_on` / `near_dedup_on`, filled per pipeline by config.load), decontamination."""
    near = None
    if q.near_dedup:
        if q.near_dedup_perm % q.near_dedup_bands:
            raise ConfigError(
                f"near_dedup: num_perm = {q.near_dedup_perm} must be a multiple of bands = {q.near_dedup_bands}"
            )
        near = stream.NearDedup(
            tuple(q.near_dedup_on or ["prompt"]),
            q.near_dedup_ngram,
            q.near_dedup_perm,
            q.near_dedup_bands,
            q.near_dedup_threshold,
        )
    deco = None
    if q.decontaminate:
        deco = quality.Decontaminator(
            q.decontamination_n,
            q.decontamination_sets,
            threshold=q.decontamination_threshold,
            min_words=q.decontamination_min_words,
        )
    return stream.Plan(
        lengths=quality.LengthBounds(
            q.min_prompt_chars, q.max_prompt_chars, q.min_response_chars, q.max_response_chars
        ),
        exact_fields=tuple(q.dedup_on or ["prompt"]) if q.exact_dedup else None,
        near=near,
        decontaminator=deco,
        decontamination_fields=tuple(q.decontamination_fields),
    )


def finalize(cfg: SynthConfig, journals: list[Path], name: str, folder: str = "data") -> dict[str, Any]:
    """Filters the rows of `journals`, writes <folder>/<stage>/shard-<name>.* and removed-<name>.jsonl; returns counts.
    Streams: memory holds per-row keys and signatures, not the rows (see stream.py)."""
    for path in journals:
        cut_torn_tail(path)
    plan = _filters(cfg.quality)
    result = stream.finalize(plan, journals, Path(cfg.run.output), name, folder, cfg.run.format)
    return {
        "name": name,
        **result,
        "decontamination": plan.decontaminator.summary() if plan.decontaminator else None,
        "dedup": {"exact_on": cfg.quality.dedup_on, "near_on": cfg.quality.near_dedup_on},
        "settings": cfg.to_dict(),
    }


def merge(cfg: SynthConfig, count: int) -> dict[str, Any]:
    """Filters all `count` shards' journals together (cross-shard dedup) into merged/<stage>/shard-merged.*."""
    if count < 1:
        raise ConfigError(f"--merge {count}: give the number of shards the run was split into (>= 1), e.g. --merge 4")
    out = Path(cfg.run.output)
    journals = [out / "work" / f"journal-{shard_name(i, count)}.jsonl" for i in range(count)]
    missing = [str(p) for p in journals if not p.exists()]
    if missing:
        raise ConfigError(f"--merge {count}: missing shard journals {', '.join(missing[:3])}")
    manifest = finalize(cfg, journals, "merged", folder="merged")
    shards = [out / f"manifest-{shard_name(i, count)}.json" for i in range(count)]
    manifest["seeded_from_test"] = _seeded_from_test(cfg, shards)
    write_json(out / "manifest-merged.json", manifest)
    return manifest


def _seeded_from_test(cfg: SynthConfig, manifests: list[Path]) -> dict[str, Any]:
    """The shards' `seeded_from_test` together (sources listed once; every shard has the same seed pool), and
    the built-in test-split seed sources the config names (known without a shard's manifest)."""
    merged: dict[str, Any] = {}
    if cfg.pipeline.kind == "skywork" and cfg.skywork.allow_test_split:
        for source in cfg.skywork.seeds:
            for eval_set in SEED_SOURCES.get(source).eval_sets if source in SEED_SOURCES else ():
                merged.setdefault(eval_set, {"sources": [], "seeds": 0})["sources"].append(source)
    for path in manifests:
        recorded = json.loads(path.read_text()).get("seeded_from_test", {}) if path.exists() else {}
        for eval_set, entry in recorded.items():
            into = merged.setdefault(eval_set, {"sources": [], "seeds": 0})
            into["sources"] += [s for s in entry.get("sources", []) if s not in into["sources"]]
            into["seeds"] = max(into["seeds"], entry.get("seeds", 0))
    return merged
