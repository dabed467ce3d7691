"""Benchmarks as lists of `Item`s: the vendored GSM8K / MATH-500 / MATH, or any JSONL / HF dataset.

    load_benchmark("math500")                                   # gold = the `answer` field
    load_benchmark("heldout.jsonl", fields={"question": "prompt", "answer": "response"})
    load_benchmark("hf:openai/gsm8k:main", split="test")       # Hugging Face datasets

Gold answers: GSM8K's text after `#### ` (commas removed); MATH-500's `answer`; MATH's last
`\\boxed{}` of the solution. For other data the answer field is used as is, unless it is a whole
solution (it has `\\boxed{}` or `####`), then its marked answer. Rows without a question or an
answer are skipped and counted in `Benchmark.skipped` (with file and line), never dropped silently.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathforge.errors import DataError
from mathforge.evaluate import datasets
from mathforge.evaluate.extract import explicit_answer, last_boxed
from mathforge.jsonl import iter_jsonl

BUILTIN = ("gsm8k", "math500", "math")
QUESTION_KEYS = ("question", "problem", "prompt", "query", "input")
ANSWER_KEYS = ("answer", "gold", "final_answer", "response", "solution", "output")


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


def gsm8k_gold(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _level(value: Any) -> int | None:
    match = re.search(r"\d+", str(value))
    return int(match.group()) if match else None


def load_benchmark(
    name: str, split: str = "test", *, fields: dict[str, str] | None = None, limit: int | None = None
) -> Benchmark:
    """A benchmark by name (gsm8k, math500, math), a .jsonl/.json(.gz) path, or `hf:<dataset>[:<config>]`.

    `fields` maps our names (question, answer, id, subject, level) to the data's keys."""
    if name == "gsm8k":
        rows = datasets.load("gsm8k", split)
        items = [Item(f"gsm8k/{i}", r["question"], gsm8k_gold(r["answer"])) for i, r in enumerate(rows)]
        bench = Benchmark(name, items)
    elif name == "math500":
        items = [
            Item(
                r.get("unique_id", f"math500/{i}"),
                r["problem"],
                r["answer"],
                {"subject": r["subject"], "level": int(r["level"])},
            )
            for i, r in enumerate(datasets.load("math500", split))
        ]
        bench = Benchmark(name, items)
    elif name == "math":
        bench = Benchmark(name, [])
        for i, r in enumerate(datasets.load("math", split)):
            gold = last_boxed(r["solution"])
            if gold is None:
                bench.skipped.append(f"math/{split} row {i}: no \\boxed{{}} in the solution")
                continue
            meta = {"subject": r.get("type"), "level": _level(r.get("level"))}
            bench.items.append(Item(str(r.get("idx", f"math/{i}")), r["problem"], gold, meta))
    elif name.startswith("hf:"):
        bench = _from_rows(name, _hf_rows(name[3:], split), fields or {})
    else:
        bench = _from_rows(name, _file_rows(Path(name)), fields or {})
    if limit is not None:
        bench.items = bench.items[:limit]
    return bench


def _file_rows(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: no such benchmark file (built-in benchmarks: {', '.join(BUILTIN)})")
    if path.name.endswith((".json", ".json.gz")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json benchmark must hold a list of objects")
        yield from ((f"{path}: item {i}", row) for i, row in enumerate(rows))
        return
    yield from ((f"{path}:{number}", row) for number, row in iter_jsonl(path))


def _hf_rows(spec: str, split: str):
    import datasets as hf

    name, _, config = spec.partition(":")
    try:
        data = hf.load_dataset(name, config or None, split=split)
    except Exception as error:  # the hub and local loaders raise many types
        raise DataError(f"hf:{spec} (split {split!r}): cannot load ({type(error).__name__}: {error})") from None
    yield from ((f"hf:{spec}/{split} row {i}", dict(row)) for i, row in enumerate(data))


def _pick(row: dict[str, Any], key: str | None, candidates: tuple[str, ...]) -> Any:
    if key is not None:
        return row.get(key)
    return next((row[k] for k in candidates if row.get(k) not in (None, "")), None)


def _from_rows(name: str, rows, fields: dict[str, str]) -> Benchmark:
    unknown = set(fields) - {"question", "answer", "id", "subject", "level"}
    if unknown:
        raise DataError(f"unknown field mapping keys {sorted(unknown)}; allowed: question, answer, id, subject, level")
    bench = Benchmark(name, [])
    for where, row in rows:
        if not isinstance(row, dict):
            bench.skipped.append(f"{where}: not a JSON object")
            continue
        question = _pick(row, fields.get("question"), QUESTION_KEYS)
        answer = _pick(row, fields.get("answer"), ANSWER_KEYS)
        if not isinstance(question, str) or not question.strip():
            bench.skipped.append(f"{where}: no question (field {fields.get('question', '/'.join(QUESTION_KEYS))!r})")
            continue
        if answer is None or str(answer).strip() == "":
            bench.skipped.append(f"{where}: no answer (field {fields.get('answer', '/'.join(ANSWER_KEYS))!r})")
            continue
        answer = str(answer)
        gold = explicit_answer(answer) if ("\\boxed" in answer or "####" in answer) else answer.strip()
        if gold is None:
            bench.skipped.append(f"{where}: the answer field has no final answer")
            continue
        meta = {k: row.get(fields.get(k, k)) for k in ("subject", "level") if row.get(fields.get(k, k)) is not None}
        item_id = str(row.get(fields.get("id", "id"), where))
        bench.items.append(Item(item_id, question, gold, meta))
    return bench
