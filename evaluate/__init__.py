"""mathforge.evaluate: benchmarks (vendored GSM8K / MATH), generation, answer extraction, grading.

from mathforge.evaluate import grade, extract_answer, run_eval
from mathforge.evaluate import parse_answer, grade_parsed   # parse the gold once, grade many samples

Importing the package is cheap: `grade` and `extract_answer` are imported here (they need neither torch
nor the OpenAI client), `run_eval` and `EvalConfig` on first use, so `synth` and scripts that only grade
never load the runner and its backends. (`grade` is imported eagerly on purpose: it is also the name of
a submodule, and importing `mathforge.evaluate.grade` later would otherwise leave the module where the
function should be.)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mathforge.evaluate.answer import parse_answer
from mathforge.evaluate.extract import extract_answer
from mathforge.evaluate.grade import grade, grade_parsed

if TYPE_CHECKING:
    from mathforge.evaluate.config import EvalConfig
    from mathforge.evaluate.runner import run_eval

__all__ = ["EvalConfig", "extract_answer", "grade", "grade_parsed", "parse_answer", "run_eval"]

_LAZY = {"EvalConfig": "mathforge.evaluate.config", "run_eval": "mathforge.evaluate.runner"}


def __getattr__(name: str) -> Any:
    """`run_eval` and `EvalConfig`: imported from their modules on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
