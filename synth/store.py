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
        self.torn_bytes = cut_torn_tail(self.path)
        for record in self.records():
            self.done.add(record["id"])

    def records(self) -> Iterator[dict[str, Any]]:
        """The complete records, first occurrence of each id only."""
        seen: set[str] = set()
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break
                record = parse_line(self.path, number, line)
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


def cut_torn_tail(path: Path, chunk: int = 1 << 16) -> int:
    """Cuts a torn last line (a crash mid-write) off the journal at `path`; returns the bytes cut. Reads only
    the file's tail, not the whole journal."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            block = handle.read(end - start)
            at = block.rfind(b"\n")
            if at >= 0:
                end = start + at + 1
                break
            end = start
        if end < size:  # its item is not done
            handle.truncate(end)
        return size - end


def journal_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of each complete line of a journal, streamed."""
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break
            yield number, offset, line
            offset += len(line)


def parse_line(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise DataError(f"{path}:{number}: journal line is not valid JSON") from None


def _flat_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet needs one type per column: nested meta values (dicts, lists) are stored as JSON strings."""
    meta = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row["meta"].items()}
    return {**row, "meta": meta}


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    """Writes `rows` to `path` atomically (temp file, fsync, rename): a `RowSink` fed all of them."""
    sink = RowSink(path, fmt)
    for row in rows:
        sink.add(row)
    sink.close()


class RowSink:
    """Writes rows to `path` in batches (JSONL lines, or Parquet row groups) and renames the temp file into place
    on `close()`, so memory holds one batch, not the data set. A Parquet batch whose schema differs from the file's
    so far (a column null until now, a new meta key) is cast to it, or else the file is rewritten batch by batch
    under the unified schema: the result reads back as one table written at once would."""

    def __init__(self, path: Path, fmt: str, batch_rows: int = 8192) -> None:
        self.path, self.fmt, self.batch_rows = path, fmt, batch_rows
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows = 0
        self._batch: list[dict[str, Any]] = []
        self._writer: Any = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.tmp, "w", encoding="utf-8") if fmt != "parquet" else None  # noqa: SIM115

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if self._handle is not None:
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self._batch.append(_flat_meta(row))
        if len(self._batch) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._batch:
            return
        table = pa.Table.from_pylist(self._batch)
        self._batch = []
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        elif table.schema != self._writer.schema:
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                self._widen(pa.unify_schemas([self._writer.schema, table.schema], promote_options="permissive"))
                table = pa.Table.from_pylist(table.to_pylist(), schema=self._writer.schema)
        self._writer.write_table(table)

    def _widen(self, schema: Any) -> None:
        """Rewrites what is written so far under `schema`, one row group at a time."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._writer.close()
        old = self.tmp.with_name(self.tmp.name + ".old")
        os.replace(self.tmp, old)
        self._writer = pq.ParquetWriter(self.tmp, schema)
        source = pq.ParquetFile(old)
        for group in range(source.num_row_groups):
            rows = source.read_row_group(group).to_pylist()
            self._writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        source.close()
        old.unlink()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        else:
            self._flush()
            if self._writer is None:  # no rows at all
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}), self.tmp)
            else:
                self._writer.close()
        os.replace(self.tmp, self.path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
