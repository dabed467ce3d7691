"""`mathforge synth CONFIG.toml [--shard i/n] [--resume] [--merge N] [--set section.key=value ...]`."""

from __future__ import annotations

import sys
from typing import Any

import typer

from mathforge.errors import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n with integers, e.g. 3/16") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        config_path: str = typer.Argument(..., metavar="CONFIG.toml", help="Synthesis recipe (see synth/configs/)."),
        shard: str = typer.Option("0/1", "--shard", help="Run only items k with k % n == i (e.g. 3/16)."),
        resume: bool = typer.Option(False, "--resume", help="Finish an interrupted run: redo only missing items."),
        merge: int | None = typer.Option(
            None, "--merge", metavar="N", help="After all N shards finished: filter them together."
        ),
        overrides: list[str] = typer.Option(
            [],
            "--set",
            help="Override a config key: section.key=value (any depth, e.g. skywork.seed_fields.question=problem).",
        ),  # noqa: B008
    ) -> None:
        """Synthesize math problems (symbolic, Skywork-Math or JiuZhang3.0 pipeline) into a dataset."""
        from rich.console import Console
        from rich.table import Table

        from mathforge.synth import config, run

        if merge is not None and merge < 1:
            raise ConfigError(
                f"--merge {merge}: give the number of shards the run was split into (>= 1), e.g. --merge 4"
            )
        where = parse_shard(shard)
        cfg = config.load(config_path, overrides)
        manifest = run.merge(cfg, merge) if merge is not None else run.synthesize(cfg, shard=where, resume=resume)
        table = Table(title=f"synth {cfg.pipeline.kind} → {cfg.run.output} ({manifest['name']})")
        for col in ("filter", "in", "removed", "kept"):
            table.add_column(col, justify="left" if col == "filter" else "right")
        for name, c in manifest["filters"].items():
            table.add_row(name, str(c["in"]), str(c["removed"]), str(c["kept"]))
        console = Console()
        console.print(table)
        for stage, f in manifest["files"].items():
            console.print(f"{stage}: {f['rows']} rows → {f['path']}")
        gen = manifest.get("generation", {})
        if gen.get("failed"):
            print(failure_line(gen, cfg.backend.base_urls), file=sys.stderr, flush=True)
            raise typer.Exit(1)


def failure_line(generation: dict[str, Any], urls: list[str]) -> str:
    """One line for items that failed with backend errors: how many, and the first error with its server."""
    first = generation["failed_ids"][0]
    where = "" if any(u in first["error"] for u in urls) else f" (backend.base_urls: {', '.join(urls)})"
    return (
        f"error: {generation['failed']} of {generation['items']} items failed (backend errors); "
        f"first: {first['id']}: {first['error']}{where}; fix that, then rerun with --resume"
    )
