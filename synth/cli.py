"""`mathforge synth CONFIG.toml [--shard i/n] [--resume] [--merge N] [--set section.key=value ...]`."""

from __future__ import annotations

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
        merge: int = typer.Option(0, "--merge", help="After all N shards finished: filter them together."),
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

        cfg = config.load(config_path, overrides)
        manifest = run.merge(cfg, merge) if merge else run.synthesize(cfg, shard=parse_shard(shard), resume=resume)
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
            console.print(f"[yellow]{gen['failed']} items failed (backend errors); rerun with --resume[/yellow]")
            raise typer.Exit(1)
