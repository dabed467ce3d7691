"""Benchmarks as lists of `Item`s: the vendored GSM8K / MATH-500 / MATH, or any JSONL / JSON / Parquet file or HF dataset.

    load_benchmark("math500")                                   # gold = the `answer` field
    load_benchmark("heldout.jsonl", fields={"question": "prompt", "answer": "response"})
    load_benchmark("hf:openai/gsm8k:main", split="test")       # Hugging Face datasets

Gold answers: GSM8K's text after `#### ` (commas removed); MATH-500's `answer`; MATH's last
`\\boxed{}` of the solution (`mathforge.datasources` holds these conventions). For other data the answer field is used as is, unless it is a whole
solution (it has `\\boxed{}` or `####`), then its marked answer. Rows without a question or an
answer are skipped and counted in `Benchmark.skipped` (with file and line), never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathforge.datasources import Problem, Row, gsm8k_gold, pick, read_rows
from mathforge.errors import DataError
from mathforge.evaluate import datasets
from mathforge.evaluate.extract import explicit_answer

__all__ = ["BUILTIN", "Benchmark", "Item", "gsm8k_gold", "load_benchmark"]

BUILTIN = ("gsm8k", "math500", "math")
QUESTION_KEYS = ("question", "problem", "prompt", "query", "input")
ANSWER_KEYS = ("answer", "gold", "final_answer", "response", "solution", "output")
FIELD_KEYS = ("question", "answer", "id", "subject", "level")


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    items: list[Item]
    skipped: list[str] = field(default_factory=list)


def load_benchmark(
    name: str, split: str = "test", *, fields: dict[str, str] | None = None, limit: int | None = None
) -> Benchmark:
    """A benchmark by name (gsm8k, math500, math), a .jsonl/.json(.gz)/.parquet path, or `hf:<dataset>[:<config>]`.

    `fields` maps our names (question, answer, id, subject, level) to the data's keys."""
    if name in BUILTIN:
        bench = _builtin(name, split)
    else:
        if not name.startswith("hf:") and not Path(name).exists():
            raise DataError(f"{name}: no such benchmark file (built-in benchmarks: {', '.join(BUILTIN)})")
        bench = _from_rows(name, read_rows(name, split=split), fields or {})
    if not bench.items:
        raise DataError(f"{name}: no problems to evaluate: {_nothing_usable(bench)}")
    if limit is not None:
        bench.items = bench.items[:limit]
    return bench


def _nothing_usable(bench: Benchmark) -> str:
    """Why a benchmark has no items: no rows at all, or every row skipped (counted by reason, one example)."""
    if not bench.skipped:
        return "it holds no rows"
    reasons = Counter(entry.split(": ", 1)[-1] for entry in bench.skipped)
    counts = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common(3))
    more = f"; {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    return f"all {len(bench.skipped)} rows skipped ({counts}{more}), e.g. {bench.skipped[0]}; check --fields"


def _builtin(name: str, split: str) -> Benchmark:
    bench = Benchmark(name, [])
    for p in datasets.problems(name, split):
        if p.answer is None:
            bench.skipped.append(f"{name}/{split} row {p.index}: no \\boxed{{}} in the solution")
            continue
        bench.items.append(Item(p.id or f"{name}/{p.index}", p.question, p.answer, _meta(name, p)))
    return bench


def _meta(name: str, p: Problem) -> dict[str, Any]:
    return {} if name == "gsm8k" else {"subject": p.subject, "level": p.level}


def _from_rows(name: str, rows, fields: dict[str, str]) -> Benchmark:
    unknown = set(fields) - set(FIELD_KEYS)
    if unknown:
        raise DataError(f"unknown field mapping keys {sorted(unknown)}; allowed: {', '.join(FIELD_KEYS)}")
    bench = Benchmark(name, [])
    for row in rows:
        item = _item(row, fields)
        if isinstance(item, str):
            bench.skipped.append(f"{row.where}: {item}")
        else:
            bench.items.append(item)
    return bench


def _item(row: Row, fields: dict[str, str]) -> Item | str:
    """The row as an Item, or why it is skipped."""
    value = row.value
    if not isinstance(value, dict):
        return "not a JSON object"
    question = pick(value, fields.get("question"), QUESTION_KEYS)
    answer = pick(value, fields.get("answer"), ANSWER_KEYS)
    if not isinstance(question, str) or not question.strip():
        return f"no question (field {fields.get('question', '/'.join(QUESTION_KEYS))!r})"
    if answer is None or str(answer).strip() == "":
        return f"no answer (field {fields.get('answer', '/'.join(ANSWER_KEYS))!r})"
    answer = str(answer)
    gold = explicit_answer(answer) if ("\\boxed" in answer or "####" in answer) else answer.strip()
    if gold is None:
        return "the answer field has no final answer"
    meta = {k: value.get(fields.get(k, k)) for k in ("subject", "level") if value.get(fields.get(k, k)) is not None}
    return Item(str(value.get(fields.get("id", "id"), row.where)), question, gold, meta)
