"""`mathforge train` and `mathforge plot`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Path = typer.Argument(..., help="TOML recipe (see configs/)."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a key, e.g. --set optim.lr=1e-5 --set stages.0.epochs=2."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the run in run.out_dir from its latest checkpoint (same settings)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Delete the earlier run's outputs in run.out_dir first, then start over."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the resolved config (after --set) as JSON and exit without training."
        ),
        no_progress: bool = typer.Option(
            False, "--no-progress", help="No live progress bar: one log line per logging step (as when piped)."
        ),
    ) -> None:
        """Supervised fine-tuning in stages with packing (torchrun for many GPUs: FSDP2)."""
        from mathforge.trainer.config import load_config

        resolved = load_config(config, set_)
        if dry_run:
            _print_dry_run(resolved)
            return
        _run_training(resolved, resume=resume, force=force, progress=not no_progress)

    @app.command()
    def plot(run_dir: Path = typer.Argument(..., help="A training run folder (holding metrics.jsonl).")) -> None:
        """Write loss.png and throughput.png for a training run."""
        import json

        from mathforge.errors import DataError
        from mathforge.trainer.metrics import plot_run

        try:
            paths = plot_run(run_dir)
        except json.JSONDecodeError as error:
            raise DataError(f"{run_dir / 'metrics.jsonl'}: a line is not valid JSON ({error.msg})") from None
        for path in paths:
            print(f"wrote {path}")


def _run_training(config, *, resume: bool, force: bool, progress: bool) -> None:
    """Trains; Ctrl-C prints where the run stopped and exits 130 (the shell's code for SIGINT)."""
    import torch.distributed as dist

    from mathforge.trainer.train import TrainingInterrupted
    from mathforge.trainer.train import train as run_training

    main = not dist.is_initialized() or dist.get_rank() == 0
    try:
        summary = run_training(config, resume=resume, force=force, progress=progress)
    except TrainingInterrupted as stopped:
        if main:
            print(stopped.message, file=sys.stderr)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        print(
            f"interrupted; nothing saved since the last checkpoint in {config.run.out_dir}/checkpoints "
            "(continue from it with --resume)",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if main:
        _print_summary(summary)
    if dist.is_initialized():
        dist.destroy_process_group()


def _print_dry_run(config) -> None:
    """The resolved config as JSON, its warnings, and what a run would find in its folder."""
    from mathforge.trainer.checkpoint import describe_output, run_outputs
    from mathforge.trainer.config import config_warnings

    print(json.dumps(config.to_dict(), indent=2))
    for warning in config_warnings(config):
        print(warning, file=sys.stderr)
    outputs = run_outputs(Path(config.run.out_dir))
    if outputs:
        found = ", ".join(describe_output(p) for p in outputs)
        print(f"note: {config.run.out_dir} holds a run ({found}): training needs --resume or --force", file=sys.stderr)
    print("dry run: nothing trained", file=sys.stderr)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training summary")
    for column in ("stage", "steps", "final loss", "tokens", "tokens/s", "packing eff.", "documents"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in summary["stages"]:
        tps = stage["tokens_per_s"]
        table.add_row(
            stage["name"],
            f"{stage['steps']}/{stage['planned_steps']}",
            f"{stage['final_loss']:.4f}",
            f"{stage['tokens']:,}",
            f"{tps:,.0f}" if tps else "-",
            f"{stage['packing_efficiency']:.2%}",
            f"{stage['data']['documents']:,}",
        )
    console = Console()
    console.print(table)
    if summary.get("stopped"):
        console.print(f"stopped early ({summary['stopped']}); continue with --resume")
    if summary.get("final_model"):
        console.print(f"final model: {summary['final_model']}")
