"""Crash-safe storage for a synthesis run: an append-only journal per shard, then the final data files.

Run folder layout (shard i of n written as ``-{i:05d}-of-{n:05d}``):

    work/journal-00000-of-00004.jsonl   one line per finished work item: {"id", "status", "rows", ...}
    data/<stage>/shard-00000-of-00004.{jsonl,parquet}   filtered rows, one folder per stage
    removed-00000-of-00004.jsonl        every row a filter removed, with the filter and the reason
    manifest-00000-of-00004.json        counts per filter, token usage, settings, timings

The journal is the index of done ids: a work item is done exactly when its line is complete in the
journal. Lines are written whole and flushed at once (a SIGKILL loses nothing already written) and
fsynced every `fsync_every` items and at close (a power cut loses at most that many). On reopening,
a torn last line is cut off, so `--resume` redoes only items without a complete line: nothing is
lost and nothing is written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError, DataError


def writable_folder(path: str | Path, key: str) -> Path:
    """`path` as a folder this process can write in, created if missing; ConfigError naming `key` and the value
    if it is empty, a file, or not writable (checked by writing a probe file, which also catches read-only file
    systems and root-owned folders where permission bits alone would not tell). Call it before any work."""
    if not str(path).strip():
        raise ConfigError(f"{key} is empty: name a folder for the output, e.g. runs/my-run")
    folder = Path(path)
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{key} = {str(path)!r}: {blocker} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{key} = {str(path)!r}: cannot write there ({error.strerror or error})") from None
    return folder


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


class Journal:
    """Append-only JSONL of finished work items; `done` holds their ids."""

    def __init__(self, path: Path, *, fsync_every: int = 256) -> None:
        self.path = path
        self.fsync_every = max(1, fsync_every)
        self.done: set[str] = set()
        self.torn_bytes = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._recover()
        self._handle = open(path, "ab")  # noqa: SIM115 - kept open for the run, closed by close()
        self._pending = 0

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a crash: drop it (its item is not done)
            self.torn_bytes = len(data) - end
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        for record in self.records():
            self.done.add(record["id"])

    def records(self) -> Iterator[dict[str, Any]]:
        """The complete records, first occurrence of each id only."""
        seen: set[str] = set()
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{self.path}:{number}: journal line is not valid JSON") from None
                if record["id"] not in seen:
                    seen.add(record["id"])
                    yield record

    def append(self, record: dict[str, Any]) -> None:
        if record["id"] in self.done:
            return
        self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._handle.flush()
        self.done.add(record["id"])
        self._pending += 1
        if self._pending >= self.fsync_every:
            os.fsync(self._handle.fileno())
            self._pending = 0

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


def _flat_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet needs one type per column: nested meta values (dicts, lists) are stored as JSON strings."""
    meta = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row["meta"].items()}
    return {**row, "meta": meta}


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    """Writes `rows` to `path` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([_flat_meta(r) for r in rows]), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
