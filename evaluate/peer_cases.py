"""Grading cases ported from other projects' grader test suites (`evaluate/cases/peers/<source>.jsonl`).

    from mathforge.evaluate import peer_cases
    peer_cases.SOURCES            # ('hendrycks_math', 'math_verify', ...): the file stems
    peer_cases.load()             # every case of every source
    peer_cases.load("math_verify")

Each line is one case: `pred` and `gold` exactly as the peer's test passes them, `equal` the verdict we hold
true (the peer's own `peer_equal` unless a `conflict` line says why we chose otherwise), `kind` ("answer" or
"solution") and `source` (repo, path, commit, licence, test). The folder's README.md lists the sources, their
licences and the rules used on conflicts. A malformed line is a DataError (a ValueError) naming file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mathforge.errors import DataError
from mathforge.jsonl import iter_jsonl

FOLDER = Path(__file__).resolve().parent / "cases" / "peers"
SOURCES: tuple[str, ...] = tuple(sorted(path.stem for path in FOLDER.glob("*.jsonl")))

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "pred": str,
    "gold": str,
    "equal": bool,
    "peer_equal": bool,
    "kind": str,
    "source": dict,
}
_OPTIONAL: dict[str, type] = {"note": str, "conflict": str}
_SOURCE_FIELDS = ("repo", "path", "commit", "licence")
_KINDS = ("answer", "solution")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _problem(case: Any) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(case, dict):
        return "not a JSON object"
    for key, kind in _FIELDS.items():
        if not isinstance(case.get(key), kind):
            return f"field {key!r} missing or not {getattr(kind, '__name__', kind)}"
    for key, kind in _OPTIONAL.items():
        if key in case and not isinstance(case[key], kind):
            return f"field {key!r} is not {kind.__name__}"
    unknown = sorted(set(case) - set(_FIELDS) - set(_OPTIONAL))
    if unknown:
        return f"unknown fields {unknown}"
    if case["kind"] not in _KINDS:
        return f"kind {case['kind']!r} is not one of {_KINDS}"
    source = case["source"]
    for key in _SOURCE_FIELDS:
        if not isinstance(source.get(key), str) or not source[key]:
            return f"source.{key} missing or empty"
    if not _COMMIT.fullmatch(source["commit"]):
        return f"source.commit {source['commit']!r} is not 40 hex digits"
    if case["equal"] != case["peer_equal"] and not case.get("conflict"):
        return "equal differs from peer_equal without a 'conflict' saying why"
    return None


def load(source: str | None = None) -> list[dict]:
    """Cases of one source (a file stem in SOURCES), or of every source when None, in file order."""
    if source is not None and source not in SOURCES:
        raise DataError(f"unknown peer source {source!r}; known: {', '.join(SOURCES)}")
    cases: list[dict] = []
    for stem in (source,) if source is not None else SOURCES:
        path = FOLDER / f"{stem}.jsonl"
        for number, case in iter_jsonl(path):
            problem = _problem(case)
            if problem is not None:
                raise DataError(f"{path}:{number}: {problem}")
            cases.append(case)
    return cases
