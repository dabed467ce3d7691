"""`mathforge train` and `mathforge plot`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Path = typer.Argument(..., help="TOML recipe (see configs/)."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a key, e.g. --set optim.lr=1e-5 --set stages.0.epochs=2."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's latest checkpoint."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No live progress bar."),
    ) -> None:
        """Supervised fine-tuning in stages with packing (torchrun for many GPUs: FSDP2)."""
        import torch.distributed as dist

        from mathforge.trainer.config import load_config
        from mathforge.trainer.train import train as run_training

        summary = run_training(load_config(config, set_), resume=resume, progress=not no_progress)
        if not dist.is_initialized() or dist.get_rank() == 0:
            _print_summary(summary)
        if dist.is_initialized():
            dist.destroy_process_group()

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
