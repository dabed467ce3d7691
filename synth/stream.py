"""The dataset filters over a run's journals in two streaming passes, in memory that holds compact keys, not text.

    from mathforge.synth import stream
    result = stream.finalize(plan, journals, out_folder, "merged", "merged", "parquet")

Pass 1 reads the journals line by line (in file order) and keeps, per record, where its line is and a sort key;
per row, its two lengths, a 16-byte exact-dedup digest and a MinHash signature (num_perm × 4 bytes, spilled to a
temp file and read back as one array). The records are then put in natural id order (so "the earliest id wins"
whatever the shards' completion order), and the length, exact and near-duplicate verdicts are computed as arrays
(digest sort; LSH banding and union-find in C++). Pass 2 re-reads each record's line in that order, runs the
decontaminator on the rows still kept, writes them per stage in batches (store.RowSink) and streams the removal
records per filter to spill files, joined in filter order at the end.

Kept rows, removal records and counts are those of applying the in-memory filters of quality.py (length_filter,
exact_dedup, near_dedup, Decontaminator.filter) one after the other to all rows at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mathforge.synth import quality
from mathforge.synth.store import RowSink, journal_lines, parse_line

MINHASH_BATCH = 4096  # rows per MinHash call in pass 1


@dataclass(frozen=True)
class NearDedup:
    """Near-duplicate removal settings: MinHash of the word `ngram`s of `fields` (row fields or meta keys, joined
    by newlines as `quality.near_dedup` does), LSH `bands`, `threshold`."""

    fields: tuple[str, ...] = ("prompt",)
    ngram: int = 5
    num_perm: int = 128
    bands: int = 16
    threshold: float = 0.7
    seed: int = 0


@dataclass
class Plan:
    """Which filters run, in order: lengths, exact dedup on `exact_fields` (None: off), near dedup (None: off),
    decontamination of `decontamination_fields` (decontaminator None: off)."""

    lengths: quality.LengthBounds
    exact_fields: tuple[str, ...] | None = ("prompt",)
    near: NearDedup | None = None
    decontaminator: quality.Decontaminator | None = None
    decontamination_fields: tuple[str, ...] = ("prompt",)


def natural_key(text: str) -> str:
    """A string that sorts like `[(0, int(d), "") or (1, 0, part) for part in re.split(r"(\\d+)", text)]` (numbers
    embedded in ids compare numerically: "item-9" before "item-10"), in one regex pass: each text part ends with
    "\\0\\0" (a NUL inside it is written "\\0\\1"), each number is its length as one character, then its digits."""
    return _DIGITS.sub(_number_key, text.replace("\x00", "\x00\x01")) + "\x00\x00"


_DIGITS = re.compile(r"\d+")


def _number_key(match: re.Match) -> str:
    digits = str(int(match.group()))
    return "\x00\x00" + chr(len(digits)) + digits


class _Index:
    """Pass 1: per record (journal, line number, offset, size, first row, rows, sort key); per row lengths,
    digest and signature."""

    def __init__(self, plan: Plan, spill: Path) -> None:
        self.plan = plan
        self.keys: list[str] = []
        self.records = {name: array("q") for name in ("journal", "line", "offset", "size", "first", "rows")}
        self.prompt_chars, self.response_chars = array("q"), array("q")
        self.digests = bytearray()
        self.rows = 0
        self.spill = spill
        self._texts: list[str] = []
        self._sig_file = open(spill, "wb") if plan.near else None  # noqa: SIM115 - closed in signatures()

    def add_journal(self, j: int, path: Path) -> None:
        for number, offset, line in journal_lines(path):
            record = parse_line(path, number, line)
            rows = record["rows"]
            for name, value in zip(self.records, (j, number, offset, len(line), self.rows, len(rows))):
                self.records[name].append(value)
            self.keys.append(natural_key(str(record["id"])))
            for row in rows:
                self._add_row(row)

    def _add_row(self, row: dict[str, Any]) -> None:
        p, r = quality.row_lengths(row)
        self.prompt_chars.append(p)
        self.response_chars.append(r)
        if self.plan.exact_fields is not None:
            self.digests += quality.exact_key(row, self.plan.exact_fields)
        if self.plan.near is not None:
            self._texts.append("\n".join(quality.key_text(row, f) for f in self.plan.near.fields))
            if len(self._texts) >= MINHASH_BATCH:
                self._flush_texts()
        self.rows += 1

    def _flush_texts(self) -> None:
        near = self.plan.near
        sig = quality.minhash(self._texts, ngram=near.ngram, num_perm=near.num_perm, seed=near.seed)
        self._sig_file.write(sig.tobytes())
        self._texts = []

    def signatures(self) -> np.ndarray | None:
        """All rows' signatures [rows, num_perm] uint32 (file order), read back in one allocation."""
        if self._sig_file is None:
            return None
        if self._texts:
            self._flush_texts()
        self._sig_file.close()
        sig = np.fromfile(self.spill, dtype=np.uint32).reshape(self.rows, self.plan.near.num_perm)
        self.spill.unlink()
        return sig


@dataclass
class _Verdicts:
    """Pass 1's decisions over the rows in natural id order (position p = the p-th row of the sorted records)."""

    order: np.ndarray  # record indices, natural id order, duplicate ids dropped
    verdict: np.ndarray  # [rows] int8: 0 still kept, 1 length, 2 exact duplicate, 3 near duplicate
    target: np.ndarray  # [rows] int64: position of the row a duplicate matched (-1 if none)
    needed: dict[int, np.ndarray]  # verdict -> [rows] bool: rows some duplicate points to
    counts: dict[str, dict[str, int]]


def _count(seen: int, removed: int) -> dict[str, int]:
    return {"in": seen, "removed": removed, "kept": seen - removed}


def _record_order(index: _Index, paths: list[Path]) -> np.ndarray:
    """Record indices in natural id order (stable: ties keep journal order), each journal's repeated ids dropped
    after their first occurrence (as Journal.records does)."""
    keys = index.keys
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    ties = np.flatnonzero(np.r_[False, [keys[a] == keys[b] for a, b in zip(order[:-1], order[1:])]])
    if len(ties) == 0:
        return order
    drop = set()
    seen: dict[tuple[int, str], int] = {}
    for t in sorted(set(ties.tolist()) | set((ties - 1).tolist())):
        r = int(order[t])
        j = index.records["journal"][r]
        record = parse_line(paths[j], index.records["line"][r], _read(paths[j], index, r))
        if seen.setdefault((j, str(record["id"])), r) != r:
            drop.add(t)
    return np.delete(order, sorted(drop))


def _read(path: Path, index: _Index, r: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(index.records["offset"][r])
        return handle.read(index.records["size"][r])


def _decide(index: _Index, paths: list[Path], sig: np.ndarray | None) -> _Verdicts:
    plan = index.plan
    order = _record_order(index, paths)
    first = np.frombuffer(index.records["first"], dtype=np.int64)[order]
    counts = np.frombuffer(index.records["rows"], dtype=np.int64)[order]
    rows = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))  # file-order rows
    n = len(rows)
    verdict, target = np.zeros(n, dtype=np.int8), np.full(n, -1, dtype=np.int64)
    needed: dict[int, np.ndarray] = {}
    ok = plan.lengths.keep(
        np.frombuffer(index.prompt_chars, dtype=np.int64)[rows],
        np.frombuffer(index.response_chars, dtype=np.int64)[rows],
    )
    verdict[~ok] = 1
    survivors = np.flatnonzero(ok)
    counts_out = {"length": _count(n, n - len(survivors))}
    if plan.exact_fields is not None:
        digests = np.frombuffer(index.digests, dtype=np.uint8).reshape(-1, 16)
        survivors = _mark(survivors, quality.first_occurrences(digests[rows[survivors]]), 2, verdict, target, needed)
        counts_out["exact_dedup"] = _count(int(ok.sum()), int((verdict == 2).sum()))
    if plan.near is not None:
        seen = len(survivors)
        roots = quality.near_duplicate_roots(sig, rows[survivors], bands=plan.near.bands, threshold=plan.near.threshold)
        survivors = _mark(survivors, roots, 3, verdict, target, needed)
        counts_out["near_dedup"] = _count(seen, seen - len(survivors))
    return _Verdicts(order, verdict, target, needed, counts_out)


def _mark(
    survivors: np.ndarray, first: np.ndarray, code: int, verdict: np.ndarray, target: np.ndarray, needed: dict
) -> np.ndarray:
    """Marks the survivors whose `first` (position among survivors) is not themselves as removed by `code`."""
    dup = first != np.arange(len(first))
    verdict[survivors[dup]] = code
    target[survivors[dup]] = survivors[first[dup]]
    mask = np.zeros(len(verdict), dtype=bool)
    mask[target[survivors[dup]]] = True
    needed[code] = mask
    return survivors[~dup]


FILTER_NAMES = {1: "length", 2: "exact_dedup", 3: "near_dedup"}
REASONS = {2: "exact duplicate", 3: "near duplicate"}


class _Writer:
    """Pass 2: kept rows to per-stage sinks, removal records to per-filter spill files."""

    def __init__(self, out: Path, name: str, folder: str, fmt: str) -> None:
        self.out, self.name, self.folder, self.fmt = out, name, folder, fmt
        self.sinks: dict[str, RowSink] = {}
        self.spill_dir = out / "work" / f".removed-{name}"
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.spill_dir.mkdir(parents=True)
        self.spills: dict[str, Any] = {}

    def keep(self, row: dict[str, Any]) -> None:
        stage = str(row["meta"].get("stage", "all"))
        if stage not in self.sinks:
            path = self.out / self.folder / stage / f"shard-{self.name}.{self.fmt}"
            self.sinks[stage] = RowSink(path, self.fmt)
        self.sinks[stage].add(row)

    def removed(self, name: str, record: dict[str, Any]) -> None:
        if name not in self.spills:
            self.spills[name] = open(self.spill_dir / f"{len(self.spills):02d}-{name}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.spills[name].write(json.dumps({"filter": name, **record}, ensure_ascii=False) + "\n")

    def close(self, order: list[str]) -> dict[str, dict[str, Any]]:
        files = {}
        for stage, sink in sorted(self.sinks.items()):
            sink.close()
            files[stage] = {"path": str(sink.path), "rows": sink.rows}
        target = self.out / f"removed-{self.name}.jsonl"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as joined:
            for name in order:
                if name in self.spills:
                    self.spills[name].close()
                    with open(self.spills[name].name, "rb") as part:
                        shutil.copyfileobj(part, joined)
        os.replace(tmp, target)
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        return files


def _records(paths: list[Path], index: _Index, order: np.ndarray) -> Iterator[dict[str, Any]]:
    """The records in `order`, each re-read from its journal line."""
    handles = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed below
    try:
        rec = index.records
        for r in order.tolist():
            j = rec["journal"][r]
            handles[j].seek(rec["offset"][r])
            yield parse_line(paths[j], rec["line"][r], handles[j].read(rec["size"][r]))
    finally:
        for h in handles:
            h.close()


def _row_id(row: dict[str, Any], fallback: int) -> str:
    return str(row.get("meta", {}).get("id", fallback))


class _Pass2:
    """Walks the rows in natural id order, applying the verdicts and the decontaminator."""

    def __init__(self, plan: Plan, v: _Verdicts, writer: _Writer) -> None:
        self.plan, self.v, self.writer = plan, v, writer
        self.verdict = v.verdict.tobytes()
        needed = np.zeros(len(v.verdict), dtype=np.uint8)
        for code, mask in v.needed.items():
            needed |= mask.astype(np.uint8) << code
        self.needed = needed.tobytes()
        self.position = 0
        self.ranks = [0, 0, 0, 0, 0]  # rows that reached each filter so far (the in-memory filters' index fallback)
        self.ids: dict[tuple[int, int], str] = {}  # (verdict code, position) -> id, for rows duplicates point to
        self.reasons: dict[str, int] = {}
        self.decontaminated = 0

    def record(self, record: dict[str, Any]) -> None:
        if record["status"] != "ok":
            reason = record.get("kind", record.get("reason", ""))
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            self.writer.removed("generation", {"id": record["id"], "reason": record.get("reason")})
        for row in record["rows"]:
            self.row(row)

    def row(self, row: dict[str, Any]) -> None:
        p = self.position
        code, needed = self.verdict[p], self.needed[p]
        self.position += 1
        rank = list(self.ranks)  # this row's index in each filter's input (1 length, 2 exact, 3 near, 4 decontam)
        for c in range(1, 5):  # the row reaches filter c unless an earlier one removed it
            self.ranks[c] += code == 0 or code >= c
        if needed:
            for c in (2, 3):
                if needed >> c & 1:
                    self.ids[(c, p)] = _row_id(row, rank[c])
        if code == 1:
            why = self.plan.lengths.reason(*quality.row_lengths(row))
            self.writer.removed("length", {"id": _row_id(row, p), "reason": why})
        elif code:
            t = int(self.v.target[p])
            removal = {"id": _row_id(row, rank[code]), "reason": REASONS[code], "duplicate_of": self.ids[(code, t)]}
            self.writer.removed(FILTER_NAMES[code], removal)
        elif not self._contaminated(row, rank[4]):
            self.writer.keep(row)

    def _contaminated(self, row: dict[str, Any], rank: int) -> bool:
        deco = self.plan.decontaminator
        if deco is None:
            return False
        _, removed = deco.filter([row], self.plan.decontamination_fields)
        if not removed:
            return False
        self.decontaminated += 1
        self.writer.removed("decontamination", {**removed[0], "id": _row_id(row, rank)})
        return True


def finalize(plan: Plan, journals: list[Path], out: Path, name: str, folder: str, fmt: str) -> dict[str, Any]:
    """Filters the rows of `journals` into <out>/<folder>/<stage>/shard-<name>.<fmt> and removed-<name>.jsonl.
    Returns {"rows", "files", "filters" (counts per filter, in order), "generation_rejections"}."""
    (out / "work").mkdir(parents=True, exist_ok=True)
    index = _Index(plan, out / "work" / f".signatures-{name}.u32")
    for j, path in enumerate(journals):
        index.add_journal(j, path)
    v = _decide(index, journals, index.signatures())
    writer = _Writer(out, name, folder, fmt)
    walk = _Pass2(plan, v, writer)
    for record in _records(journals, index, v.order):
        walk.record(record)
    files = writer.close(["generation", "length", "exact_dedup", "near_dedup", "decontamination"])
    n = len(v.verdict)
    filters = {"generation": _count(len(v.order), sum(walk.reasons.values()))}
    filters["generation"]["kept"] = n
    filters.update(v.counts)
    if plan.decontaminator is not None:
        seen = int((v.verdict == 0).sum())
        filters["decontamination"] = _count(seen, walk.decontaminated)
    return {
        "rows": sum(f["rows"] for f in files.values()),
        "files": files,
        "filters": filters,
        "generation_rejections": walk.reasons,
    }
