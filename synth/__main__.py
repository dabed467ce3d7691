"""`python -m mathforge.synth CONFIG.toml ...`: the same as `mathforge synth`."""

import sys

import typer

from mathforge.errors import MathforgeError
from mathforge.synth.cli import register

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)


@app.callback()
def _root() -> None:
    """mathforge synthesis."""


if __name__ == "__main__":
    try:
        app(args=["synth", *sys.argv[1:]], prog_name="python -m mathforge.synth")
    except MathforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
