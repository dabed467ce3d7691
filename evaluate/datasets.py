"""The vendored benchmark and seed data, loadable offline (see data/NOTICE for sources and licences).

    from mathforge.evaluate import datasets
    rows = datasets.load("gsm8k", split="test")   # list of dicts, fields as in the original files

| name      | split   | rows  | what                                                                  |
|-----------|---------|-------|-----------------------------------------------------------------------|
| `gsm8k`   | `train` | 7,473 | GSM8K train: seeds for grade-school word problems                      |
| `gsm8k`   | `test`  | 1,319 | GSM8K test: evaluation only                                            |
| `math500` | `test`  | 500   | MATH-500: evaluation only                                              |
| `math`    | `test`  | 5,000 | the whole MATH test set                                                |
| `math`    | `train` | 4,500 | MATH test minus MATH-500: the customary training/seed split with MATH-500 held out |

`load` returns rows exactly as stored; `problems` reads them by the set's convention (GSM8K's `####`
answer, MATH's last `\\boxed{}` or MATH-500's `answer`, levels as ints; see `mathforge.datasources`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from mathforge.datasources import CONVENTIONS, Problem
from mathforge.errors import DataError
from mathforge.jsonl import read_jsonl

DATA_DIR = Path(__file__).resolve().parent / "data"

_FILES = {
    ("gsm8k", "train"): "gsm8k_train.jsonl.gz",
    ("gsm8k", "test"): "gsm8k_test.jsonl.gz",
    ("math500", "test"): "math500_test.jsonl.gz",
    ("math", "test"): "math_test.jsonl.gz",
}
_DERIVED = {("math", "train")}  # MATH test minus MATH-500


def available() -> dict[str, list[str]]:
    """Data set names and their splits."""
    out: dict[str, list[str]] = {}
    for name, split in sorted({*_FILES, *_DERIVED}):
        out.setdefault(name, []).append(split)
    return out


def path(name: str, split: str) -> Path:
    """The gzip'd JSONL file behind a stored (name, split)."""
    _check(name, split)
    if (name, split) not in _FILES:
        raise DataError(f"{name}/{split} is derived from other files and has no file of its own")
    return DATA_DIR / _FILES[(name, split)]


def load(name: str, split: str) -> list[dict[str, Any]]:
    """Rows of a vendored data set as dicts (a fresh list each call; the parsed file is cached)."""
    _check(name, split)
    if (name, split) == ("math", "train"):
        held_out = {row["problem"] for row in _read(_FILES[("math500", "test")])}
        return [dict(row) for row in _read(_FILES[("math", "test")]) if row["problem"] not in held_out]
    return [dict(row) for row in _read(_FILES[(name, split)])]


def problems(name: str, split: str) -> list[Problem]:
    """The rows of a vendored set as `Problem`s with gold answers, levels and subjects by its convention."""
    convention = CONVENTIONS.get("gsm8k" if name == "gsm8k" else "math")
    return [convention(row, i) for i, row in enumerate(load(name, split))]


def _check(name: str, split: str) -> None:
    names = available()
    if name not in names:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(names)}")
    if split not in names[name]:
        raise DataError(f"data set {name!r} has no split {split!r}; available: {', '.join(names[name])}")


@cache
def _read(filename: str) -> tuple[dict[str, Any], ...]:
    return tuple(read_jsonl(DATA_DIR / filename))
