"""Training data: rows → template → tokens with prompt masks → packed micro-batches.

Rows are `{"prompt", "response"}` or `{"messages": [...]}` (what `mathforge synth` writes), from
JSONL, JSON, Parquet files or a Hugging Face dataset name. Rows are read and tokenized in chunks (one batch
encode per `ENCODE_ROWS` texts, documents assembled with array operations, on threads while the next chunk is
read) written straight into a token store on disk, keyed by the data, the tokenizer and the template: a folder
`tokens-<key>/` holding `tokens.bin` (int32, all documents back to back), `offsets.npy` and `prompt_lengths.npy`,
opened memory-mapped — every rank on a node reads the same pages through the page cache, so a rank's RSS
holds the micro-batches it builds, not the data set. `Prefetcher` builds (and, for CUDA, pins) the next micro-batches on a
background thread while the current step runs, in the same order as building them in the step. A
micro-batch is one flat token stream with `position_ids` restarting per document, `cu_seqlens`, and
shifted labels: `labels[t]` is the token at t+1 when that token is part of the same document's
response, else -100 — so nothing is predicted across a document boundary or inside a prompt. A stage with
`loss_on = "all"` (`with_loss_on`) predicts the prompt's tokens too: every token of a document but its first.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mathforge.datasources import SUFFIXES, read_rows
from mathforge.errors import DataError
from mathforge.trainer.packing import pack_detailed
from mathforge.trainer.templates import render_chat, render_prompt, render_response, split_messages

IGNORE_INDEX = -100


@dataclass
class TokenizedData:
    """Documents as one flat int32 token array with CSR offsets, plus each document's prompt length."""

    tokens: np.ndarray  # [total] int32
    offsets: np.ndarray  # [docs + 1] int64
    prompt_lengths: np.ndarray  # [docs] int64
    counts: dict[str, int] = field(default_factory=dict)  # rows read, skipped, truncated, dropped

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.prompt_lengths)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64
    cu_seqlens: torch.Tensor  # [D + 1] int32
    max_seqlen: int
    labels: torch.Tensor  # [T] int64, shifted, -100 where nothing is predicted
    doc_lengths: list[int]
    num_targets: int  # labels != ignore_index (`target_counts`)

    def to(self, device: torch.device | str) -> MicroBatch:
        return MicroBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.cu_seqlens.to(device, non_blocking=True),
            self.max_seqlen,
            self.labels.to(device, non_blocking=True),
            self.doc_lengths,
            self.num_targets,
        )

    def pin_memory(self) -> MicroBatch:
        """The same batch in page-locked memory, so that `.to(cuda, non_blocking=True)` really overlaps."""
        return MicroBatch(
            self.input_ids.pin_memory(),
            self.position_ids.pin_memory(),
            self.cu_seqlens.pin_memory(),
            self.max_seqlen,
            self.labels.pin_memory(),
            self.doc_lengths,
            self.num_targets,
        )


# ---------------------------------------------------------------- reading rows


def _read_source(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs, streamed, from a file, a folder of shards searched recursively (what `mathforge synth`
    writes: data/<stage>/shard-*.jsonl) or `hf:<name>[:<config>]` (`mathforge.datasources.read_rows`), or
    from a Hugging Face dataset name (`name` or `name:split`)."""
    if source.startswith("hf:") or Path(source).exists() or source.endswith(SUFFIXES):
        return ((row.where, row.value) for row in read_rows(source))
    name, _, split = source.partition(":")
    return ((row.where, row.value) for row in read_rows(f"hf:{name}", split=split or "train"))


def render_row(row: dict[str, Any], where: str, template: str, tokenizer: Any) -> tuple[str, str]:
    """(prompt text, response text) of one row under a template; DataError names `where` when fields are missing."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row and row["messages"] is not None:
        if template == "chat":
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant":
                raise DataError(f"{where}: the last message must be the assistant's answer")
            prompt = render_chat(messages[:-1], tokenizer, add_generation_prompt=True)
            full = render_chat(messages, tokenizer, add_generation_prompt=False)
            if not full.startswith(prompt):
                raise DataError(f"{where}: the chat template does not extend the prompt; cannot mask it")
            return prompt, full[len(prompt) :]
        system, question, answer = split_messages(row["messages"], where)
        return render_prompt(question, template, tokenizer, system), render_response(answer, template)
    missing = [k for k in ("prompt", "response") if not isinstance(row.get(k), str)]
    if missing:
        raise DataError(f"{where}: missing string field {missing[0]!r} (rows need prompt+response or messages)")
    if template == "chat":
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        return render_row({"messages": messages}, where, template, tokenizer)
    return render_prompt(row["prompt"], template, tokenizer), render_response(row["response"], template)


# ---------------------------------------------------------------- tokenizing


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of the tokenizer's vocabulary, merges and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    payload += json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _source_fingerprint(source: str) -> str:
    path = Path(source)
    if path.exists():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return source


ENCODE_ROWS = 4096  # texts per batch encode: the backend's per-text objects live for one batch only


def _encode(texts: list[str], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(every text's ids back to back as int32, each text's length), as `tokenizer(texts, add_special_tokens=False)`
    gives them. A fast tokenizer's backend is called directly when the wrapper would configure it no differently
    (no truncation or padding, the same special-token splitting): a batch encode on Rust threads without offsets
    and without the wrapper's per-row dictionaries, `ENCODE_ROWS` texts at a time, each batch straight to numpy."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    direct = (
        backend is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    )
    flats, lengths = [], []
    for start in range(0, len(texts), ENCODE_ROWS):
        batch = texts[start : start + ENCODE_ROWS]
        if direct:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            ids = [encoding.ids for encoding in encode(batch, add_special_tokens=False)]
        else:
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        flats.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths[-1].sum())))
    if not flats:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def _place(out: np.ndarray, flat: np.ndarray, lengths: np.ndarray, first: np.ndarray, room: np.ndarray) -> None:
    """Writes each document's piece of `flat` (CSR by `lengths`) to `out` from index `first[doc]`, keeping only the
    first `room[doc]` tokens of the piece (what truncation leaves of it)."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    within = np.arange(len(flat)) - np.repeat(starts, lengths)
    keep = within < np.repeat(room, lengths)
    out[(np.repeat(first, lengths) + within)[keep]] = flat[keep]


def _assemble(
    prompts: tuple[np.ndarray, np.ndarray],
    responses: tuple[np.ndarray, np.ndarray],
    tokenizer: Any,
    max_seq_len: int,
    overflow: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Documents bos + prompt + response + eos (eos unless the response already ends with it), truncated to
    `max_seq_len` or dropped (`overflow = "drop"`, or a prompt that leaves no room for the response), built with
    array operations. Returns (flat tokens of the kept documents, their lengths, their prompt lengths, every row's
    status: 0 ok, 1 truncated, 2 dropped)."""
    (prompt_ids, prompt_lengths), (response_ids, response_lengths) = prompts, responses
    with_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
    eos = tokenizer.eos_token_id
    bos_length = np.int64(1 if with_bos else 0)
    if eos is None:
        with_eos = np.zeros(len(response_lengths), dtype=bool)
    else:
        ends = np.cumsum(response_lengths) - 1
        last = response_ids[np.maximum(ends, 0)] if len(response_ids) else np.zeros(len(ends), np.int32)
        with_eos = (response_lengths == 0) | (last != eos)
    full = bos_length + prompt_lengths + response_lengths + with_eos
    prompt_lengths = bos_length + prompt_lengths
    too_long = full > max_seq_len
    dropped = too_long & ((overflow == "drop") | (prompt_lengths >= max_seq_len))
    status = np.where(dropped, 2, np.where(too_long, 1, 0)).astype(np.int8)
    lengths = np.where(dropped, 0, np.minimum(full, max_seq_len))
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty(int(lengths.sum()), dtype=np.int32)
    if with_bos:
        out[first[lengths > 0]] = tokenizer.bos_token_id
    _place(out, prompt_ids, prompt_lengths - bos_length, first + bos_length, lengths - bos_length)
    _place(out, response_ids, response_lengths, first + prompt_lengths, lengths - prompt_lengths)
    eos_at = first + prompt_lengths + response_lengths
    put_eos = with_eos & (eos_at < first + lengths)
    out[eos_at[put_eos]] = eos if eos is not None else 0
    keep = ~dropped
    return out, lengths[keep], prompt_lengths[keep], status


CHUNK_ROWS = 16384  # rows rendered and tokenized at a time: memory holds `MAX_THREADS` + 1 chunks of text
MAX_THREADS = 2  # chunks tokenized at once (`num_proc`, capped): each batch encode already runs on Rust threads


class _StoreWriter:
    """Appends tokenized chunks to a token store folder (written under a temporary name, renamed when complete),
    or, without a folder, keeps them in memory."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.lengths: list[np.ndarray] = []
        self.prompt_lengths: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.tmp = None
        if folder is not None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
            self._handle = open(self.tmp / "tokens.bin", "wb")  # noqa: SIM115 - closed in finish()

    def add(self, tokens: np.ndarray, lengths: np.ndarray, prompt_lengths: np.ndarray) -> None:
        if self.tmp is not None:
            self._handle.write(np.ascontiguousarray(tokens, dtype=np.int32).tobytes())
        else:
            self.tokens.append(tokens.astype(np.int32))
        self.lengths.append(lengths.astype(np.int64))
        self.prompt_lengths.append(prompt_lengths.astype(np.int64))

    def finish(self, counts: dict[str, int]) -> TokenizedData:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        prompt_lengths = np.concatenate(self.prompt_lengths) if self.prompt_lengths else np.zeros(0, np.int64)
        if self.tmp is None:
            tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.int32)
            return TokenizedData(tokens, offsets, prompt_lengths, counts)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        np.save(self.tmp / "offsets.npy", offsets)
        np.save(self.tmp / "prompt_lengths.npy", prompt_lengths)
        (self.tmp / "store.json").write_text(json.dumps({"counts": counts, "tokens": int(offsets[-1])}) + "\n")
        try:
            os.replace(self.tmp, self.folder)
        except OSError:  # another process stored the same key first: same content, keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        return open_token_store(self.folder)

    def abort(self) -> None:
        if self.tmp is not None:
            self._handle.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def open_token_store(folder: str | Path) -> TokenizedData:
    """A token store folder, memory-mapped read-only: the pages are shared by every process that opens it."""
    folder = Path(folder)
    meta = json.loads((folder / "store.json").read_text())
    size = int(meta["tokens"])
    tokens = (
        np.memmap(folder / "tokens.bin", dtype=np.int32, mode="r", shape=(size,)) if size else np.zeros(0, np.int32)
    )
    return TokenizedData(
        tokens,
        np.load(folder / "offsets.npy", mmap_mode="r"),
        np.load(folder / "prompt_lengths.npy", mmap_mode="r"),
        meta["counts"],
    )


def _rendered(
    sources: list[str], tokenizer: Any, template: str, skip_bad_rows: bool, counts: dict[str, int]
) -> Iterator[tuple[str, str]]:
    """(prompt text, response text) of every usable row, streamed; malformed rows counted (or raised)."""
    for source in sources:
        for where, row in _read_source(source):
            counts["rows"] += 1
            try:
                yield render_row(row, where, template, tokenizer)
            except DataError:
                if not skip_bad_rows:
                    raise
                counts["skipped_malformed"] += 1


def _tokenize_chunk(
    chunk: list[tuple[str, str]], tokenizer: Any, max_seq_len: int, overflow: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flat tokens of the kept documents, their lengths, their prompt lengths, every row's status)."""
    prompts, responses = zip(*chunk)
    flat, lengths = _encode([*prompts, *responses], tokenizer)
    split = int(lengths[: len(chunk)].sum())
    prompt_part = (flat[:split], lengths[: len(chunk)])
    response_part = (flat[split:], lengths[len(chunk) :])
    return _assemble(prompt_part, response_part, tokenizer, max_seq_len, overflow)


def _in_threads(items: Iterator[Any], work: Callable[[Any], Any], threads: int) -> Iterator[Any]:
    """`work(item)` for each item, in order, with up to `threads` items in work on threads while the next one is
    read here: a fast tokenizer releases the GIL, so reading and rendering overlap tokenizing. At most
    `threads` + 1 items (one of them being read) are held at once."""
    threads = max(1, threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="mathforge-tokenize") as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def tokenize(
    sources: list[str],
    tokenizer: Any,
    *,
    template: str,
    max_seq_len: int,
    overflow: str = "truncate",
    num_proc: int = 1,
    cache_dir: str | Path | None = None,
    skip_bad_rows: bool = False,
) -> TokenizedData:
    """Reads, renders and tokenizes every row of `sources` in chunks; rows too long are truncated or dropped
    (counted). With `cache_dir`, the result is the memory-mapped token store <cache_dir>/tokens-<key>/, reused
    when it exists; without, arrays in memory. `num_proc` chunks (at most `MAX_THREADS`) are tokenized at once on
    threads; no process pool, so small data pays no start-up cost."""
    key_material = json.dumps(
        [[_source_fingerprint(s) for s in sources], tokenizer_fingerprint(tokenizer), template, max_seq_len, overflow]
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    folder = Path(cache_dir) / f"tokens-{key}" if cache_dir else None
    if folder is not None and (folder / "store.json").exists():
        return open_token_store(folder)

    counts = {"rows": 0, "skipped_malformed": 0, "truncated": 0, "dropped_too_long": 0, "documents": 0, "tokens": 0}
    writer = _StoreWriter(folder)
    try:
        rows = _rendered(sources, tokenizer, template, skip_bad_rows, counts)
        chunks = iter(lambda: list(itertools.islice(rows, CHUNK_ROWS)), [])
        for tokens, lengths, prompt_lengths, status in _in_threads(
            chunks, lambda chunk: _tokenize_chunk(chunk, tokenizer, max_seq_len, overflow), min(num_proc, MAX_THREADS)
        ):
            writer.add(tokens, lengths, prompt_lengths)
            counts["truncated"] += int((status == 1).sum())
            counts["dropped_too_long"] += int((status == 2).sum())
            counts["documents"] += len(lengths)
            counts["tokens"] += int(lengths.sum())
        if counts["rows"] == counts["skipped_malformed"]:
            raise DataError(
                f"no usable rows in {', '.join(sources)} ({counts['skipped_malformed']} skipped as malformed)"
            )
        if counts["documents"] == 0:
            raise DataError(f"every row of {', '.join(sources)} is longer than max_seq_len={max_seq_len}")
    except BaseException:
        writer.abort()
        raise
    return writer.finish(counts)


# ---------------------------------------------------------------- micro-batches


def plan_micro_batches(data: TokenizedData, micro_batch_tokens: int) -> list[np.ndarray]:
    """Packs documents into micro-batches of at most `micro_batch_tokens` tokens (deterministic BFD)."""
    return pack_detailed(data.lengths, micro_batch_tokens, policy="error").bins()


def with_loss_on(data: TokenizedData, loss_on: str) -> TokenizedData:
    """`data` as a stage with `loss_on` trains on it: "response" masks each prompt (as tokenized); "all" masks
    nothing but each document's first token (prompt lengths 0), so labels, `target_counts` and the loss
    normalisation all follow from the one field."""
    if loss_on == "response":
        return data
    if loss_on != "all":
        raise ValueError(f"loss_on must be 'all' or 'response', got {loss_on!r}")
    return dataclasses.replace(data, prompt_lengths=np.zeros_like(data.prompt_lengths))


def target_counts(lengths: np.ndarray, prompt_lengths: np.ndarray) -> np.ndarray:
    """Loss-carrying targets per document: the tokens after the prompt (and after the first token, which
    nothing predicts). The one rule behind the labels below and the trainer's loss normalisation."""
    return np.maximum(0, np.asarray(lengths) - np.maximum(np.asarray(prompt_lengths), 1))


def build_micro_batch(
    data: TokenizedData, docs: np.ndarray, *, mask_all: bool = False, ignore_index: int = IGNORE_INDEX
) -> MicroBatch:
    """One flat stream of the given documents; labels are `ignore_index` where nothing is predicted. `mask_all`
    makes every label ignored (a filler micro-batch that runs the collectives of a distributed step without
    contributing to the loss)."""
    docs = np.asarray(docs)
    lengths = data.lengths[docs]
    offsets = data.offsets
    pieces = [data.tokens[offsets[d] : offsets[d + 1]] for d in docs.tolist()]
    ids = torch.from_numpy(np.concatenate(pieces).astype(np.int64))
    starts = np.concatenate(([0], np.cumsum(lengths)))
    position = np.arange(len(ids)) - np.repeat(starts[:-1], lengths)
    labels = torch.full_like(ids, ignore_index)
    targets = np.zeros(len(docs), dtype=np.int64) if mask_all else target_counts(lengths, data.prompt_lengths[docs])
    for start, length, count in zip(starts[:-1], lengths, targets):
        # position t predicts token t+1: the last `count` positions before the document's end carry a target
        end = int(start + length - 1)
        labels[end - count : end] = ids[end - count + 1 : end + 1]
    return MicroBatch(
        input_ids=ids,
        position_ids=torch.from_numpy(position.astype(np.int64)),
        cu_seqlens=torch.from_numpy(starts.astype(np.int32)),
        max_seqlen=int(lengths.max()),
        labels=labels,
        doc_lengths=lengths.tolist(),
        num_targets=int(targets.sum()),
    )


# ---------------------------------------------------------------- background loading

_END = object()


class Prefetcher:
    """Runs `make(item)` for each of `items` on a background thread, at most `depth` results ahead, and yields the
    results in the order of `items` (the same sequence as calling `make` in the loop). An exception in `make` is
    raised by the `next()` that would have returned its result; `close()` (or leaving the `with` block, e.g. on
    Ctrl-C or a time limit) stops the thread. With `pin`, each result's `pin_memory()` is called on the thread."""

    def __init__(self, items: Iterable[Any], make: Callable[[Any], Any], *, depth: int = 4, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._items, self._make, self._pin = items, make, pin
        self._thread = threading.Thread(target=self._work, name="mathforge-prefetch", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                result = self._make(item)
                if self._pin:
                    result = result.pin_memory()
                if not self._put((True, result)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put((False, error))
            return
        self._put((True, _END))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        ok, value = self._queue.get()
        if not ok:
            self.close()
            raise value
        if value is _END:
            self._queue.put((True, _END))  # later calls stop too
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()  # unblock a put
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
