"""`run_eval`: generate, extract, grade and report one or more benchmarks — the Python API behind
`mathforge eval`.

    from mathforge.evaluate import run_eval
    run_eval(model="runs/ckpt-1000", bench="gsm8k,math500", out="runs/eval")
    run_eval(api="http://localhost:8000/v1", served_model="qwen", bench="math500", prompt="qwen-boxed")
    run_eval(model="runs/ckpt", bench="heldout.jsonl", fields={"question": "prompt", "answer": "response"})
    run_eval(config=load_eval_config("eval.toml"), limit=50)   # from mathforge.evaluate.config

The settings are the fields of `mathforge.evaluate.config.EvalConfig`, validated in one place there.

Writes to `out` (when given; `mathforge eval` always gives one): results.md, samples-<bench>.jsonl (question,
output, extracted answer, gold, verdict in both modes, per sample) and, last, results.json (scores, settings,
the prompt and where it came from, package versions, git revision, UTC date). Returns the results dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mathforge.backends import Backend
from mathforge.backends import make_backend as make_chat_backend
from mathforge.config import to_dict
from mathforge.errors import ConfigError
from mathforge.evaluate.answer import NONE, answer_of, grader_errors, parse_answer
from mathforge.evaluate.benchmarks import Benchmark, load_benchmark
from mathforge.evaluate.config import EvalConfig, eval_config
from mathforge.evaluate.extract import STYLES, extract_answer
from mathforge.evaluate.grade import grade_parsed
from mathforge.evaluate.metrics import breakdown, majority, summarize
from mathforge.evaluate.sandbox import Sandbox, require_safe
from mathforge.evaluate.tool import TOOL_INSTRUCTION, generate_with_tools
from mathforge.hardware import package_versions
from mathforge.prompts import Prompt, default_prompt, load_prompt, training_info, training_template

_PACKAGES = ("mathforge", "torch", "transformers", "tokenizers", "safetensors", "openai", "triton")


def make_backend(
    model: str | Path | None = None,
    api: str | None = None,
    served_model: str | None = None,
    *,
    api_key: str = "EMPTY",
    concurrency: int = 16,
    request_timeout: float = 600.0,
    batch_size: int = 32,
    engine: str = "auto",
    **client: float,
) -> Backend:
    """A LocalBackend for `model` (a folder) or an OpenAIBackend for `api` + `served_model`; `client`: its
    max_retry_after_s, bench_s and max_bench_s (`mathforge.openai_client.OpenAIClient`)."""
    if (model is None) == (api is None):
        raise ConfigError("give exactly one of --model DIR or --api URL")
    if api is not None:
        if not served_model:
            raise ConfigError("--api needs --served-model NAME (the model name the server serves)")
        return make_chat_backend(
            {
                "kind": "openai",
                "base_urls": [api],
                "model": served_model,
                "api_key": api_key,
                "concurrency": concurrency,
                "timeout_s": request_timeout,
                "backoff_s": 1.0,
                **client,
            }
        )
    return make_chat_backend({"kind": "local", "model": model, "engine": engine, "batch_size": batch_size})


def _chunks(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _extract(output: str, style: str, boxes: str = "join") -> str | None:
    """The prompt's preferred answer style first, then what `grade` reads from a response (`answer_of`)."""
    found = extract_answer(output, style, boxes) if style != "auto" else None
    return found if found is not None else answer_of(output, boxes)


def grade_item(gold: str, extracted: Sequence[str | None], boxes: str = "join") -> dict[str, Any]:
    """Verdicts of one problem's samples: the gold parsed once, each extracted answer parsed once; the majority
    vote groups answers with the lenient grader. Returns lenient, strict (lists) and voted (an index or None)."""
    gold_answer = parse_answer(gold, "gold", boxes)
    parsed = [parse_answer(e, "response", boxes) if e is not None else NONE for e in extracted]
    by_text = dict(zip(extracted, parsed))
    return {
        "lenient": [grade_parsed(p, gold_answer) for p in parsed],
        "strict": [grade_parsed(p, gold_answer, "strict") for p in parsed],
        "voted": majority(extracted, lambda a, b: grade_parsed(by_text[a], by_text[b])),
    }


def evaluate_benchmark(
    backend: Backend,
    bench: Benchmark,
    prompt: Prompt,
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    chat: bool | None = None,
    tool: bool = False,
    seed: int = 0,
    chunk: int = 64,
    progress: Any = None,
    sandbox: Sandbox | None = None,
    boxes: str = "join",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores for one benchmark and its per-sample records (`sandbox` runs the model's code when `tool`;
    `boxes`: how several boxes in one answer are read, see `mathforge.evaluate.extract`). The scores count
    `grader_errors`: unexpected failures inside the grader (graded "not equal"; 0 unless there is a bug)."""
    questions = [f"{item.question}\n\n{TOOL_INSTRUCTION}" if tool else item.question for item in bench.items]
    rendered = [prompt.render(q, chat=chat) for q in questions]
    task = progress.add_task(bench.name, total=len(rendered)) if progress is not None else None
    outputs: list[list[str]] = []
    for start, part in zip(range(0, len(rendered), chunk), _chunks(rendered, chunk)):
        if tool:
            flat = [p for p in part for _ in range(n)]
            texts = generate_with_tools(
                backend,
                flat,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                stop=prompt.stop,
                seed=seed + start,
                sandbox=sandbox,
            )
            outputs += [texts[i * n : (i + 1) * n] for i in range(len(part))]
        else:
            outputs += backend.generate(
                part,
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                stop=prompt.stop,
                seed=seed + start,
            )
        if progress is not None:
            progress.advance(task, len(part))
    records, samples = [], []
    errors_before = grader_errors()
    for item, outs in zip(bench.items, outputs):
        extracted = [_extract(o, prompt.style, boxes) for o in outs]
        verdicts = grade_item(item.gold, extracted, boxes)
        lenient, strict, voted = verdicts["lenient"], verdicts["strict"], verdicts["voted"]
        maj_correct = voted is not None and lenient[voted]
        records.append(
            {"correct": {"lenient": lenient, "strict": strict}, "maj_correct": maj_correct, "meta": item.meta}
        )
        for k, (out, ext) in enumerate(zip(outs, extracted)):
            samples.append(
                {
                    "id": item.id,
                    "sample": k,
                    "question": item.question,
                    "output": out,
                    "extracted": ext,
                    "gold": item.gold,
                    "lenient": lenient[k],
                    "strict": strict[k],
                    **item.meta,
                }
            )
    scores = summarize(records, n)
    if any("subject" in r["meta"] for r in records):
        scores["by_subject"] = breakdown(records, "subject", n)
    if any("level" in r["meta"] for r in records):
        scores["by_level"] = breakdown(records, "level", n)
    scores["skipped"] = bench.skipped
    scores["grader_errors"] = grader_errors() - errors_before
    return scores, samples


def markdown_table(results: dict[str, Any]) -> str:
    """One row per benchmark: problems, accuracy in both modes, and pass@k / maj@k when sampled."""
    benches = results["benchmarks"]
    extra = sorted(
        {k for s in benches.values() for k in s if k.startswith(("pass@", "maj@"))},
        key=lambda k: (k[:4], int(k.split("@")[1])),
    )
    head = ["benchmark", "prompt", "problems", "accuracy (lenient)", "accuracy (strict)", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if results.get("sandbox"):
        box = results["sandbox"]
        note = "" if box["safe"] else " — NOT SAFE (run with --unsafe-sandbox)"
        lines = [f"Model code ran in the sandbox: {box['level']}{note} ({', '.join(box['mechanisms'])}).", "", *lines]
    for name, manifests in (results.get("contaminated") or {}).items():
        lines = [f"CONTAMINATED: {name}'s test split seeded the training data ({', '.join(manifests)}).", "", *lines]
    for name, s in benches.items():
        row = [
            name,
            s.get("prompt", ""),
            str(s.get("count", 0)),
            f"{100 * s.get('accuracy_lenient', 0):.1f}",
            f"{100 * s.get('accuracy_strict', 0):.1f}",
            *(f"{100 * s[k]:.1f}" if k in s else "" for k in extra),
        ]
        lines.append("| " + " | ".join(row) + " |")
    for name, s in benches.items():
        for key, title in (("by_subject", "subject"), ("by_level", "level")):
            if key in s:
                lines += [
                    "",
                    f"**{name} by {title}**",
                    "",
                    f"| {title} | problems | accuracy (lenient) | accuracy (strict) |",
                    "|---|---|---|---|",
                ]
                lines += [
                    f"| {v} | {g['count']} | {100 * g['accuracy_lenient']:.1f} | {100 * g['accuracy_strict']:.1f} |"
                    for v, g in s[key].items()
                ]
    errors = sum(s.get("grader_errors", 0) for s in benches.values())
    lines += ["", f"grader errors: {errors}" + (" (graded not equal; please report them)" if errors else "")]
    return "\n".join(lines) + "\n"


def run_eval(
    model: str | Path | None = None,
    *,
    config: EvalConfig | None = None,
    backend: Backend | None = None,
    show_progress: bool = True,
    notify: Callable[[str], Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluates a checkpoint folder (`model`), a server (`api` + `served_model`) or a ready `backend`.

    The settings are the keys of `EvalConfig` (bench, prompt, n, temperature, limit, tool, out, …), given
    as `config`, as keyword arguments, or both (keyword arguments win); an unknown one is a ConfigError
    listing the allowed keys. `bench`: names (gsm8k, math500, math), JSONL/JSON paths or
    `hf:<dataset>[:<config>]`, as a list or comma-separated; `fields` maps question/answer/id/subject/level
    to the data's keys for files. With `tool`, the model's code runs in a `Sandbox`; when this machine's
    sandbox is not safe, a SandboxError stops the run before any generation unless `unsafe_sandbox`. The
    report records the isolation in force.

    What can be checked is checked before any generation: the `out` folder (writable, not a file, no
    earlier results.json unless `force`), the benchmarks (an empty one, or one whose rows are all skipped,
    is a DataError), the prompts, the model folder, the server (one quick request). Without `prompt`, a
    model folder holding mathforge.json (written by `mathforge train`) is evaluated with the template it was
    trained with. `notify` receives one-line notes for the user (which prompt, and why)."""
    raw = to_dict(config) if config is not None else {}
    raw.update(settings)
    if model is not None:
        raw["model"] = model
    config = eval_config(raw, "run_eval")
    contamination(config)  # before anything is written
    created = prepare_out(Path(config.out), config.force) if config.out is not None else None
    sandbox = Sandbox() if config.tool else None
    try:
        if sandbox is not None:
            require_safe(sandbox, config.unsafe_sandbox)
        return _run_eval(config, backend=backend, show_progress=show_progress, sandbox=sandbox, notify=notify)
    except BaseException:
        if created is not None and created.is_dir() and not any(created.iterdir()):
            created.rmdir()  # a run that failed leaves no empty folder behind
        raise
    finally:
        if sandbox is not None:
            sandbox.close()


def prepare_out(folder: Path, force: bool = False) -> Path | None:
    """Makes sure results can be saved in `folder` before any work: not a file, writable, and without an
    earlier run's results.json (unless `force`). Creates it; returns it when this call created it."""
    where = f"cannot save results in {folder}"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{where}: it is a file, not a folder (--out)")
    if (folder / "results.json").exists() and not force:
        raise ConfigError(
            f"{where}: it holds an earlier run's results.json; --force overwrites, or choose another --out"
        )
    created = None if folder.exists() else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        if created is not None and created.is_dir() and not any(created.iterdir()):
            created.rmdir()
        raise ConfigError(f"{where}: {error.strerror or error} ({error.filename or folder})") from None
    return created


def contamination(config: EvalConfig) -> dict[str, list[str]]:
    """The benchmarks of `config` whose split seeded the model's training data -> the synth manifests that
    say so (mathforge.json beside a model of `mathforge train` records "seeded_from_test": {"<bench>_<split>":
    [manifests]}). A ConfigError naming the split and the manifest unless `allow_contaminated`. A model
    without that record (from elsewhere, or trained on data of unknown origin) is not refused."""
    found = training_info(config.model)
    seeded = found[0].get("seeded_from_test") if found is not None else None
    if not isinstance(seeded, dict):
        return {}
    hits = {b: list(seeded[f"{b}_{config.split}"]) for b in config.bench if f"{b}_{config.split}" in seeded}
    if hits and not config.allow_contaminated:
        bench, manifests = next(iter(hits.items()))
        raise ConfigError(
            f"--bench {bench}: {config.model} was trained on data seeded from the {bench} {config.split} split "
            f"(synth manifest {manifests[0]}, recorded in {found[1]}), so its {bench} score is contaminated; "
            "pass --allow-contaminated to evaluate it anyway (results.json records it)"
        )
    return hits


def run_facts() -> dict[str, Any]:
    """What results.json records about the software: package versions, the git revision of the mathforge
    checkout (None when not run from one) and the UTC date."""
    return {
        "versions": package_versions(*_PACKAGES),
        "git_revision": git_revision(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def git_revision() -> str | None:
    """`git rev-parse --short HEAD` of the checkout mathforge runs from; None outside a checkout."""
    root = Path(__file__).resolve().parent.parent  # a checkout's root holds evaluate/ (and mathforge/, .git)
    if not (root / ".git").exists():  # installed from a wheel: whatever repository encloses it is not ours
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _load_prompts(config: EvalConfig, notify: Callable[[str], Any] | None) -> tuple[dict[str, Prompt], str]:
    """The prompt of each benchmark, checked before any generation (its extraction style included), and
    where it came from: "prompt" (given), the model's mathforge.json, or "benchmark default"."""
    trained = training_template(config.model) if config.prompt is None else None
    if config.prompt is not None:
        prompts, source = {name: load_prompt(config.prompt) for name in config.bench}, "prompt"
    elif trained is not None:
        template, meta = trained
        try:
            chosen = load_prompt(template)
        except ConfigError as error:
            raise ConfigError(f"{meta}: template: {error}") from None
        prompts, source = dict.fromkeys(config.bench, chosen), str(meta)
        if notify is not None:
            notify(f"prompt: {chosen.name}, the template the model was trained with ({meta}); --prompt overrides")
    else:
        prompts, source = {name: load_prompt(default_prompt(name)) for name in config.bench}, "benchmark default"
    for prompt in prompts.values():
        if prompt.style not in STYLES:
            raise ConfigError(
                f"prompt {prompt.name}: style {prompt.style!r} is not allowed; allowed: {', '.join(STYLES)}"
            )
    return prompts, source


def _prepare(config: EvalConfig, backend: Backend | None) -> tuple[dict[str, Benchmark], Backend]:
    """Every benchmark loaded (and refused when unusable) and the backend ready, before any generation; a
    server is asked once, briefly, so that a wrong URL fails in seconds rather than after minutes of retries."""
    benches = {
        name: load_benchmark(name, config.split, fields=config.fields, limit=config.limit) for name in config.bench
    }
    if backend is None:
        backend = make_backend(
            config.model,
            config.api,
            config.served_model,
            concurrency=config.concurrency,
            request_timeout=config.request_timeout,
            batch_size=config.batch_size,
            engine=config.engine,
            max_retry_after_s=config.max_retry_after_s,
            bench_s=config.bench_s,
            max_bench_s=config.max_bench_s,
        )
    check = getattr(backend, "check", None)
    if callable(check):
        check(timeout_s=min(5.0, config.request_timeout))
    return benches, backend


def _run_eval(
    config: EvalConfig,
    *,
    backend: Backend | None,
    show_progress: bool,
    sandbox: Sandbox | None,
    notify: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    prompts, prompt_source = _load_prompts(config, notify)
    benches, backend = _prepare(config, backend)
    results: dict[str, Any] = {
        "model": config.model if config.model is not None else config.served_model,
        "api": config.api,
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "tool": config.tool,
        "seed": config.seed,
        "prompt_source": prompt_source,
        "contaminated": contamination(config),  # bench -> synth manifests (allowed with allow_contaminated)
        "sandbox": sandbox.isolation.as_dict() if sandbox is not None else None,
        **run_facts(),
        "config": to_dict(config),
        "benchmarks": {},
    }
    all_samples: dict[str, list[dict[str, Any]]] = {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        for name, chosen in prompts.items():
            start = time.perf_counter()
            scores, samples = evaluate_benchmark(
                backend,
                benches[name],
                chosen,
                n=config.n,
                temperature=config.temperature,
                top_p=config.top_p,
                max_new_tokens=config.max_new_tokens,
                chat=config.chat,
                tool=config.tool,
                seed=config.seed,
                progress=progress,
                sandbox=sandbox,
                boxes=config.boxes,
            )
            scores["prompt"] = chosen.name
            scores["seconds"] = round(time.perf_counter() - start, 3)
            key = Path(name).stem if Path(name).suffix else name
            results["benchmarks"][key] = scores
            all_samples[key] = samples
    results["client"] = client_report(backend)
    if config.out is not None:
        write_results(Path(config.out), results, all_samples)
    return results


def client_report(backend: Backend) -> dict[str, Any] | None:
    """What the backend's client counted over the run (requests, retries by cause, failures, replies cut at
    max_tokens, benched URLs, Retry-After waits, replies per URL); None for a backend that counts nothing."""
    usage = getattr(backend, "usage", None)
    if usage is None:
        return None
    return {**usage.as_dict(), "per_url": dict(getattr(backend, "per_url", None) or {})}


def write_results(folder: Path, results: dict[str, Any], all_samples: dict[str, list[dict[str, Any]]]) -> None:
    """results.json, results.md and one samples-<bench>.jsonl per benchmark in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(markdown_table(results))
    for key, samples in all_samples.items():
        with open(folder / f"samples-{key.replace('/', '_')}.jsonl", "w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    # results.json last, and whole (written aside, then renamed): its presence means a finished run
    partial = folder / ".results.json.partial"
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, folder / "results.json")
