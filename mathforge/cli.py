"""The `mathforge` command line. Errors a user can fix print as one message, without a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mathforge.errors import MathforgeError
from mathforge.evaluate.cli import register as register_evaluate
from mathforge.hardware import configure_threads
from mathforge.synth.cli import register as register_synth
from mathforge.trainer.cli import register as register_trainer

app = typer.Typer(
    help="mathforge: synthesize math problems, fine-tune LLMs on them, evaluate on GSM8K and MATH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        import mathforge

        print(f"mathforge {mathforge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mathforge: synthesize math problems, fine-tune LLMs on them, evaluate on GSM8K and MATH."""


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    measure: bool = typer.Option(
        True, "--measure/--no-measure", help="Time bf16 matmul and copy bandwidth on the GPU."
    ),
) -> None:
    """Versions, the GPU and its measured ceilings, the native extension, the attention backends."""
    from mathforge.doctor import render, report

    info = report(measure=measure)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        render(info)
    if not info["native_extension"]["ok"]:
        raise typer.Exit(1)


@app.command()
def demo(
    minutes: float = typer.Option(
        None,
        "--minutes",
        help="Cap the wall time: training gets fewer steps if the recipe will not fit (the report says so). "
        "Default: train the whole recipe.",
    ),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (must not hold an earlier demo)."),
) -> None:
    """Synthesize, train a small model from scratch in two stages, evaluate before/after — on this CPU."""
    from mathforge.demo import print_report, run_demo

    report = run_demo(minutes=minutes, out=out)
    print_report(report)
    print(f"run folder: {out} (report.md, report.json, accuracy.png, train/loss.png, train/final)")


# Each package adds its own subcommands; their heavy imports happen inside the commands.
for register in (register_trainer, register_synth, register_evaluate):
    register(app)


TORCH_COMMANDS = frozenset({"train", "demo", "eval"})  # the commands that compute with torch here (and synth select)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and (args[0] in TORCH_COMMANDS or args[:2] == ["synth", "select"]):  # not --help, synth, plot
        configure_threads()  # torch's CPU threads for this machine and its load, unless the user chose them
    try:
        app(args=argv, prog_name="mathforge", standalone_mode=True)
    except MathforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
