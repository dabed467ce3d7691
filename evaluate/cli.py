"""`mathforge eval`: evaluate a checkpoint folder or an OpenAI-compatible server on GSM8K / MATH.

The settings are `mathforge.evaluate.config.EvalConfig`: an optional `--config eval.toml`, then `--set
key=value` overrides, then the flags below when given (each flag is one EvalConfig key; unset flags
leave the file's value or the default). Results always land in a run folder: --out, or a new
runs/eval/<model>-<UTC time>; everything that can be checked (the folder, the data, the model, the server) is
checked before any generation.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from mathforge.errors import ConfigError


def _fields(text: str | None) -> dict[str, str] | None:
    """The --fields JSON object, or None when the flag is not given."""
    if text is None:
        return None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--fields is not valid JSON ({error.msg}): {text}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--fields must be a JSON object, got {text}")
    return mapping


def default_out(settings: Any, root: Path = Path("runs/eval")) -> Path:
    """A new run folder for `mathforge eval` without --out: runs/eval/<model name>-<UTC time>, the model name
    being the checkpoint folder's (with its run's name for step-*/final folders) or the served model's."""
    if settings.model is not None:
        path = Path(settings.model).resolve()
        generic = path.name == "final" or path.name.startswith(("step-", "checkpoint-"))
        parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        name = f"{parent.name}-{path.name}" if generic and parent.name else path.name
    else:
        name = settings.served_model or "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%SZ")
    folder, k = root / f"{name}-{stamp}", 1
    while folder.exists():
        k += 1
        folder = root / f"{name}-{stamp}-{k}"
    return folder


def _print_results(results: dict[str, Any], out: str | None) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    from mathforge.evaluate.runner import markdown_table

    console = Console()
    if results["sandbox"] is not None:
        console.print(
            f"model code ran in the sandbox: {results['sandbox']['level']}"
            + ("" if results["sandbox"]["safe"] else " [red](NOT SAFE: --unsafe-sandbox)[/]")
        )
    console.print(Markdown(markdown_table(results)))
    for name, scores in results["benchmarks"].items():
        if scores.get("skipped"):
            console.print(f"[yellow]{name}: skipped {len(scores['skipped'])} rows, e.g. {scores['skipped'][0]}")
    if out is not None:
        console.print(f"results in {out}/ (results.json, results.md, samples-*.jsonl)")


def grade_command(
    pred: str = typer.Argument(..., help="The prediction: an answer or a whole response."),
    gold: str = typer.Argument(..., help="The gold answer (or a solution with \\boxed{} / ####)."),
    explain: bool = typer.Option(False, "--explain", help="Print what was extracted, parsed, and the rules."),
    mode: str = typer.Option("lenient", "--mode", help="lenient (values) or strict (the MATH string check)."),
    boxes: str = typer.Option("join", "--boxes", help="Several boxes: join (one answer set) or last."),
) -> None:
    """Grade one prediction against a gold answer. Exit code 0: equal, 1: not equal (2: bad usage)."""
    from mathforge.evaluate.extract import check_box_rule
    from mathforge.evaluate.grade import MODES
    from mathforge.evaluate.grade import explain as explain_grade

    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    check_box_rule(boxes)
    verdict, lines = explain_grade(pred, gold, mode, boxes)
    typer.echo("\n".join(lines) if explain else ("equal" if verdict else "not equal"))
    raise typer.Exit(0 if verdict else 1)


def register(app: typer.Typer) -> None:
    """Adds the `eval` and `grade` commands to the mathforge CLI (eval's help shows EvalConfig's defaults)."""
    from mathforge.evaluate.config import EvalConfig
    from mathforge.prompts import available

    app.command("grade")(grade_command)
    d = EvalConfig()

    @app.command("eval")
    def eval_command(
        config: Path = typer.Option(
            None, "--config", help="TOML file of EvalConfig keys (flat: n = 4, bench = [...])."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a key, e.g. --set temperature=0.7 --set fields.question=prompt."
        ),
        model: Path = typer.Option(None, "--model", help="Hugging Face checkpoint folder (local generation)."),
        api: str = typer.Option(None, "--api", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1."),
        served_model: str = typer.Option(None, "--served-model", help="Model name the server serves (with --api)."),
        bench: str = typer.Option(
            None,
            "--bench",
            help=f"gsm8k, math500, math, a JSONL path or hf:<name>; comma-separated (default {','.join(d.bench)}).",
        ),
        prompt: str = typer.Option(
            None, "--prompt", help=f"{', '.join(available())} or a .toml (default: the benchmark's)."
        ),
        chat: bool = typer.Option(
            None, "--chat/--raw", help="Chat messages or raw completion (default: the prompt's)."
        ),
        n: int = typer.Option(None, "--n", help=f"Samples per problem (default {d.n}; pass@k and maj@k when > 1)."),
        temperature: float = typer.Option(None, "--temperature", help=f"Default {d.temperature} (greedy)."),
        top_p: float = typer.Option(None, "--top-p", help=f"Default {d.top_p}."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help=f"Default {d.max_new_tokens}."),
        limit: int = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
        tool: bool = typer.Option(
            None, "--tool", help="Tool-integrated: run the model's Python, feed output back (4 rounds)."
        ),
        unsafe_sandbox: bool = typer.Option(
            None, "--unsafe-sandbox", help="With --tool: run the model's code even where the sandbox is not safe."
        ),
        fields: str = typer.Option(
            None, "--fields", help='Field mapping for files, e.g. \'{"question": "prompt", "answer": "response"}\'.'
        ),
        split: str = typer.Option(None, "--split", help=f"Default {d.split}."),
        out: Path = typer.Option(
            None,
            "--out",
            help="Folder for results.json, results.md and samples-*.jsonl (default: a new runs/eval/<model>-<UTC time>).",
        ),
        force: bool = typer.Option(None, "--force", help="Overwrite an earlier run's results.json in --out."),
        allow_contaminated: bool = typer.Option(
            None,
            "--allow-contaminated",
            help="Evaluate on a benchmark whose test split seeded the model's training data (refused otherwise).",
        ),
        concurrency: int = typer.Option(
            None, "--concurrency", help=f"Parallel requests (with --api; default {d.concurrency})."
        ),
        batch_size: int = typer.Option(
            None, "--batch-size", help=f"Prompts per batch (local generation; default {d.batch_size})."
        ),
        seed: int = typer.Option(None, "--seed", help=f"Default {d.seed}."),
    ) -> None:
        """Generate, extract, grade (lenient and strict) and report accuracy, pass@k, maj@k per benchmark."""
        from mathforge.evaluate.config import load_eval_config
        from mathforge.evaluate.runner import run_eval

        flags = {
            "model": model,
            "api": api,
            "served_model": served_model,
            "bench": bench,
            "prompt": prompt,
            "chat": chat,
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "limit": limit,
            "tool": tool,
            "unsafe_sandbox": unsafe_sandbox,
            "fields": _fields(fields),
            "split": split,
            "out": out,
            "force": force,
            "allow_contaminated": allow_contaminated,
            "concurrency": concurrency,
            "batch_size": batch_size,
            "seed": seed,
        }
        from rich.console import Console

        settings = load_eval_config(config, set_, flags)
        console = Console(stderr=True)
        if settings.out is None:
            settings.out = str(default_out(settings))
            console.print(
                f"saving results in {settings.out}/ (--out to choose the folder)", highlight=False, soft_wrap=True
            )
        _print_results(
            run_eval(config=settings, notify=lambda note: console.print(note, highlight=False, soft_wrap=True)),
            settings.out,
        )
