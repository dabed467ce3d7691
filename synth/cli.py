"""`mathforge synth CONFIG.toml [--shard i/n] [--resume] [--merge N] [--set section.key=value ...]`, and
`mathforge synth select CONFIG.toml [--shard i/n] [--resume] [--merge N] [--set ...]` (influence-based data
selection; as for `synth`, a shard that already holds work is refused without --resume)."""

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
        config_path: str = typer.Argument(
            ...,
            metavar="[select] CONFIG.toml",
            help="Synthesis recipe (see synth/configs/); `select CONFIG.toml`: "
            "score a text pool by gradient influence on a target set and keep the top (synth/configs/select.toml).",
        ),
        select_config: str | None = typer.Argument(None, hidden=True),
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
        """Synthesize math problems (symbolic, Skywork-Math or JiuZhang3.0 pipeline) into a dataset; `synth select`
        picks the source texts worth synthesizing from (JiuZhang3.0's influence-based selection)."""
        if select_config is not None:
            if config_path != "select":
                raise ConfigError(
                    f"unexpected argument {select_config!r}: expected `synth CONFIG.toml` or `synth select CONFIG.toml`"
                )
            return select_command(select_config, shard, resume, merge, overrides)
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


def select_command(config_path: str, shard: str, resume: bool, merge: int | None, overrides: list[str]) -> None:
    """`mathforge synth select`: shard 0/1 computes and selects; `--shard i/n` only computes; `--merge n` selects.
    `--resume` finishes a shard that computed chunks before (reusing them); without it such a shard is refused."""
    from rich.console import Console
    from rich.table import Table

    from mathforge.synth import influence_config, select

    if merge is not None and merge < 1:
        raise ConfigError(f"--merge {merge}: give the number of shards the run was split into (>= 1), e.g. --merge 4")
    where = parse_shard(shard)
    cfg = influence_config.load(config_path, overrides)
    if merge is None:
        stats = select.run_shard(cfg, where, resume=resume)
        print(
            f"shard {where[0]}/{where[1]}: {stats['rows']} rows, {stats['computed']} computed, {stats['scored']} scored"
        )
        if where[1] > 1:
            return
    manifest = select.merge(cfg, merge or 1)
    table = Table(title=f"synth select → {cfg.run.output} ({manifest['features_hash']})")
    for col in ("rows", "scored", "skipped", "selected", "threshold"):
        table.add_column(col, justify="right")
    skipped = sum(e["count"] for e in manifest["skipped"].values())
    threshold = "-" if manifest["threshold"] is None else f"{manifest['threshold']:.4f}"
    table.add_row(str(manifest["rows"]), str(manifest["scored"]), str(skipped), str(manifest["selected"]), threshold)
    Console().print(table)
    print(f"selection → {cfg.run.output}/selection.jsonl (report.md, scores.png, scores.jsonl, select.json)")


def failure_line(generation: dict[str, Any], urls: list[str]) -> str:
    """One line for items that failed with backend errors: how many, and the first error with its server."""
    first = generation["failed_ids"][0]
    where = "" if any(u in first["error"] for u in urls) else f" (backend.base_urls: {', '.join(urls)})"
    return (
        f"error: {generation['failed']} of {generation['items']} items failed (backend errors); "
        f"first: {first['id']}: {first['error']}{where}; fix that, then rerun with --resume"
    )
