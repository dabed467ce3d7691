"""`mathforge eval`: evaluate a checkpoint folder or an OpenAI-compatible server on GSM8K / MATH."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Adds the `eval` command to the mathforge CLI."""

    @app.command("eval")
    def eval_command(
        model: Path = typer.Option(None, "--model", help="Hugging Face checkpoint folder (local generation)."),
        api: str = typer.Option(None, "--api", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1."),
        served_model: str = typer.Option(None, "--served-model", help="Model name the server serves (with --api)."),
        bench: str = typer.Option(
            "gsm8k", "--bench", help="gsm8k, math500, math, a JSONL path or hf:<name>; comma-separated."
        ),
        prompt: str = typer.Option(
            None, "--prompt", help="qwen-boxed, alpaca-cot, jiuzhang, minerva, gsm8k-8shot or a .toml."
        ),
        chat: bool = typer.Option(
            None, "--chat/--raw", help="Chat messages or raw completion (default: the prompt's)."
        ),
        n: int = typer.Option(1, "--n", help="Samples per problem (pass@k and maj@k when > 1)."),
        temperature: float = typer.Option(0.0, "--temperature"),
        top_p: float = typer.Option(1.0, "--top-p"),
        max_new_tokens: int = typer.Option(1024, "--max-new-tokens"),
        limit: int = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
        tool: bool = typer.Option(
            False, "--tool", help="Tool-integrated: run the model's Python, feed output back (4 rounds)."
        ),
        unsafe_sandbox: bool = typer.Option(
            False, "--unsafe-sandbox", help="With --tool: run the model's code even where the sandbox is not safe."
        ),
        fields: str = typer.Option(
            None, "--fields", help='Field mapping for files, e.g. \'{"question": "prompt", "answer": "response"}\'.'
        ),
        split: str = typer.Option("test", "--split"),
        out: Path = typer.Option(None, "--out", help="Folder for results.json, results.md and samples-*.jsonl."),
        concurrency: int = typer.Option(16, "--concurrency", help="Parallel requests (with --api)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Prompts per batch (local generation)."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Generate, extract, grade (lenient and strict) and report accuracy, pass@k, maj@k per benchmark."""
        from rich.console import Console
        from rich.markdown import Markdown

        from mathforge.errors import ConfigError
        from mathforge.evaluate.runner import markdown_table, run_eval

        mapping = None
        if fields:
            try:
                mapping = json.loads(fields)
            except json.JSONDecodeError as error:
                raise ConfigError(f"--fields is not valid JSON ({error.msg}): {fields}") from None
            if not isinstance(mapping, dict):
                raise ConfigError(f"--fields must be a JSON object, got {fields}")
        results = run_eval(
            model, api=api, served_model=served_model, bench=bench, prompt=prompt, n=n, temperature=temperature,
            top_p=top_p, max_new_tokens=max_new_tokens, limit=limit, tool=tool, out=out, chat=chat, fields=mapping,
            split=split, seed=seed, batch_size=batch_size, concurrency=concurrency, unsafe_sandbox=unsafe_sandbox,
        )  # fmt: skip
        console = Console()
        if results["sandbox"] is not None:
            console.print(f"model code ran in the sandbox: {results['sandbox']['level']}"
                          + ("" if results["sandbox"]["safe"] else " [red](NOT SAFE: --unsafe-sandbox)[/]"))  # fmt: skip
        console.print(Markdown(markdown_table(results)))
        for name, scores in results["benchmarks"].items():
            if scores.get("skipped"):
                console.print(f"[yellow]{name}: skipped {len(scores['skipped'])} rows, e.g. {scores['skipped'][0]}")
        if out is not None:
            console.print(f"results in {out}/ (results.json, results.md, samples-*.jsonl)")
