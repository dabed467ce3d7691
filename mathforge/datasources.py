"""Reading data sets, and the GSM8K / MATH conventions: one module for the trainer, evaluation and synthesis.

    for row in read_rows("data/normal"):            # a folder of shards, searched recursively
        row.where, row.key, row.value               # "data/normal/shard-0.jsonl:12", "shard-0-12", {...}
    read_rows("hf:openai/gsm8k:main", split="test") # a Hugging Face dataset (name[:config])

Sources: JSONL (``.jsonl``, ``.jsonl.gz``), JSON (``.json``, ``.json.gz``: a list of objects, or JSON
lines), Parquet, a folder holding any of these, or ``hf:<name>[:<config>]``. Every row carries where it
came from (file and line, or row index), so errors and skip reports can name it; bad JSON is a
DataError naming the file and line.

Conventions (the vendored sets, and any data laid out like them):
- GSM8K: ``question``; ``answer`` is a worked solution ending ``#### <number>`` (`gsm8k_gold`);
- MATH: ``problem``; ``solution`` with the final answer in the last ``\\boxed{}`` (`last_boxed`),
  unless the row has an ``answer`` (MATH-500); ``level`` "Level 3" (`parse_level`); ``type`` or
  ``subject``.
`gsm8k_problem` and `math_problem` turn such rows into `Problem`s.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mathforge.errors import DataError
from mathforge.jsonl import iter_jsonl
from mathforge.registry import Registry

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class Row(NamedTuple):
    where: str  # for messages: "file.jsonl:12", "file.parquet row 3", "hf:name/split row 5"
    key: str  # a stable id: "<file stem>-<line>" for JSONL, "<file stem>-<index>" otherwise
    value: Any  # the parsed row (a dict for well-formed data)


# ---------------------------------------------------------------- reading


def read_rows(source: str | Path, *, split: str = "train") -> Iterator[Row]:
    """Rows of a file, a folder of shards (recursively, sorted) or ``hf:<name>[:<config>]`` (see module doc)."""
    text = str(source)
    if text.startswith("hf:"):
        yield from _hf_rows(text[3:], split)
        return
    path = Path(source)
    if path.is_dir():
        shards = sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES))
        if not shards:
            raise DataError(f"{source}: a folder with no .jsonl, .jsonl.gz, .json or .parquet files")
        for shard in shards:
            yield from read_rows(shard)
        return
    if not path.is_file():
        raise DataError(f"{source}: no such data file")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        yield from (Row(f"{path}:{n}", f"{path.stem}-{n}", value) for n, value in iter_jsonl(path))
    elif path.name.endswith((".json", ".json.gz")):
        yield from _json_rows(path)
    elif path.suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise DataError(f"{source}: unknown data format; allowed: {', '.join(SUFFIXES)}, a folder or hf:<name>")


def _json_rows(path: Path) -> Iterator[Row]:
    """A JSON list of objects; a file of JSON lines under a .json name is read as JSONL."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("{"):  # JSON lines
            yield from (Row(f"{path}:{n}", f"{path.stem}-{n}", value) for n, value in iter_jsonl(path))
            return
        raise DataError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json data file must hold a list of objects (or JSON lines)")
    yield from (Row(f"{path}: item {i}", f"{path.stem}-{i}", row) for i, row in enumerate(rows))


def _parquet_rows(path: Path, batch_rows: int = 8192) -> Iterator[Row]:
    """The rows of a Parquet file, read a record batch at a time (memory holds one batch, not the file)."""
    import pyarrow.parquet as pq

    def bad(error: Exception) -> DataError:  # pyarrow raises several types for a bad file
        return DataError(f"{path}: cannot read as Parquet ({type(error).__name__}: {error})")

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    except Exception as error:
        raise bad(error) from None
    index = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:
            raise bad(error) from None
        for row in batch.to_pylist():
            yield Row(f"{path} row {index}", f"{path.stem}-{index}", row)
            index += 1


def _hf_rows(spec: str, split: str) -> Iterator[Row]:
    import datasets as hf

    name, _, config = spec.partition(":")
    try:
        data = hf.load_dataset(name, config or None, split=split)
    except Exception as error:  # the hub and local loaders raise many types
        raise DataError(f"hf:{spec} (split {split!r}): cannot load ({type(error).__name__}: {error})") from None
    stem = Path(name).name or name
    yield from (Row(f"hf:{spec}/{split} row {i}", f"{stem}-{i}", dict(row)) for i, row in enumerate(data))


# ---------------------------------------------------------------- field mapping


def pick(value: Any, key: str | None, candidates: tuple[str, ...] = ()) -> Any:
    """``value[key]`` when a key is given, else the first non-empty of ``candidates``; None if there is none."""
    if not isinstance(value, Mapping):
        return None
    if key is not None:
        return value.get(key)
    return next((value[k] for k in candidates if value.get(k) not in (None, "")), None)


def text_field(row: Row, key: str) -> str:
    """The non-blank string under `key`; DataError naming the row's file and line when there is none."""
    text = pick(row.value, key)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{row.where}: no text under field {key!r}")
    return text


# ---------------------------------------------------------------- answers


def gsm8k_gold(answer: str) -> str:
    """GSM8K's final answer: the text after the last ``####``, thousands separators removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def match_braces(text: str, start: int) -> int | None:
    """Index just past the `}` matching the `{` at `text[start]`, or None when unbalanced."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # skip escaped characters such as \{ and \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def box_at(text: str, match: re.Match) -> tuple[int, str] | None:
    """(end, content) of the box whose macro `match` (of BOX_RE) found: `\\boxed{…}` with balanced braces, or
    `\\boxed 5` (the token up to whitespace or `$`); None when the box is not complete."""
    i = match.end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        end = match_braces(text, i)
        return None if end is None else (end, text[i + 1 : end - 1].strip())
    if i > match.end():
        token = re.match(r"[^\s$]+", text[i:])
        if token:
            return i + token.end(), token.group(0).rstrip(".")
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{…} or \\fbox{…} (or `\\boxed 5`), else None (MATH's gold answer)."""
    for match in reversed(list(BOX_RE.finditer(text))):
        found = box_at(text, match)
        if found is not None:
            return found[1]
    return None


def parse_level(value: Any) -> int | None:
    """A MATH difficulty level from "Level 3", "3" or 3 (the whole number: "Level 10" is 10); None if none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    match = re.search(r"\d+", str(value if value is not None else ""))
    return int(match.group()) if match else None


# ---------------------------------------------------------------- conventions


@dataclass(frozen=True)
class Problem:
    """One row of a GSM8K- or MATH-style set with its gold answer by the set's convention."""

    index: int  # position in the data set
    question: str
    answer: str | None  # None when the solution marks no final answer
    id: str | None = None  # the set's own id (MATH-500 unique_id, MATH idx) where it has one
    level: int | None = None
    subject: str | None = None
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def gsm8k_problem(row: Mapping[str, Any], index: int) -> Problem:
    return Problem(index, row["question"], gsm8k_gold(row["answer"]), row=dict(row))


def math_problem(row: Mapping[str, Any], index: int) -> Problem:
    answer = row["answer"] if row.get("answer") not in (None, "") else last_boxed(row.get("solution") or "")
    own_id = row.get("unique_id", row.get("idx"))
    return Problem(
        index,
        row["problem"],
        None if answer is None else str(answer),
        None if own_id is None else str(own_id),
        parse_level(row.get("level")),
        row.get("subject") or row.get("type"),
        dict(row),
    )


CONVENTIONS: Registry[Callable[[Mapping[str, Any], int], Problem]] = Registry("data convention")
CONVENTIONS.add("gsm8k", gsm8k_problem)
CONVENTIONS.add("math", math_problem)


# ---------------------------------------------------------------- provenance of synthesized data


def synth_manifests(source: str | Path, levels: int = 3) -> list[Path]:
    """The manifests (``manifest-*.json``) of the `mathforge synth` run whose output holds `source` (a data
    file or folder: ``<output>/data/<stage>/shard-….jsonl``, ``<output>/merged/…``): those of the nearest
    folder at or up to `levels` above it that holds ``settings.json`` and manifests; [] for anything else."""
    if str(source).startswith("hf:"):
        return []
    path = Path(source).resolve()
    for folder in [path, *path.parents][: levels + 1]:
        if folder.is_dir() and (folder / "settings.json").is_file():
            return sorted(folder.glob("manifest-*.json"))
    return []


def seeded_from_test(manifest: Mapping[str, Any]) -> list[str]:
    """The evaluation sets (``<data set>_<split>``, e.g. ``math_test``) whose problems seeded a synth run, as
    its manifest records them. Manifests written before that key existed: a Skywork run with the built-in
    ``math`` seeds (then MATH test minus MATH-500, and the default) was seeded from ``math_test``."""
    recorded = manifest.get("seeded_from_test")
    if isinstance(recorded, Mapping):
        return sorted(recorded)
    settings = manifest.get("settings") or {}
    skywork = settings.get("skywork") or {}
    if (settings.get("pipeline") or {}).get("kind") == "skywork" and "math" in (skywork.get("seeds") or []):
        return ["math_test"]
    return []


def data_provenance(sources: list[str]) -> dict[str, Any]:
    """What a training run records about its data (mathforge.json beside its checkpoints): the synth
    manifests behind `sources` and, per evaluation set that seeded any of them, those manifests. Empty when
    no source was written by `mathforge synth` (nothing is known: nothing is claimed)."""
    manifests: list[str] = []
    seeded: dict[str, list[str]] = {}
    for source in sources:
        for path in synth_manifests(source):
            if str(path) in manifests:
                continue
            manifests.append(str(path))
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"{path}: unreadable synth manifest ({error})") from None
            for eval_set in seeded_from_test(manifest if isinstance(manifest, dict) else {}):
                seeded.setdefault(eval_set, []).append(str(path))
    if not manifests:
        return {}
    return {"synth_manifests": manifests, "seeded_from_test": seeded}
