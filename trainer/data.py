"""Training data: rows → template → tokens with prompt masks → packed micro-batches.

Rows are `{"prompt", "response"}` or `{"messages": [...]}` (what `mathforge synth` writes), from
JSONL, JSON, Parquet files or a Hugging Face dataset name. Tokenization runs through `datasets.map`
(with `num_proc`) and is cached on disk, keyed by the data, the tokenizer and the template. A
micro-batch is one flat token stream with `position_ids` restarting per document, `cu_seqlens`, and
shifted labels: `labels[t]` is the token at t+1 when that token is part of the same document's
response, else -100 — so nothing is predicted across a document boundary or inside a prompt. A stage with
`loss_on = "all"` (`with_loss_on`) predicts the prompt's tokens too: every token of a document but its first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
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

    @property
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


# ---------------------------------------------------------------- reading rows


def _read_source(source: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs from a file, a folder of shards searched recursively (what `mathforge synth`
    writes: data/<stage>/shard-*.jsonl) or `hf:<name>[:<config>]` (`mathforge.datasources.read_rows`), or
    from a Hugging Face dataset name (`name` or `name:split`)."""
    if source.startswith("hf:") or Path(source).exists() or source.endswith(SUFFIXES):
        return [(row.where, row.value) for row in read_rows(source)]
    name, _, split = source.partition(":")
    return [(row.where, row.value) for row in read_rows(f"hf:{name}", split=split or "train")]


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


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, max_seq_len: int, overflow: str) -> dict[str, list]:
    prompts = tokenizer(batch["prompt_text"], add_special_tokens=False)["input_ids"]
    responses = tokenizer(batch["response_text"], add_special_tokens=False)["input_ids"]
    bos = (
        [tokenizer.bos_token_id]
        if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
        else []
    )
    eos = tokenizer.eos_token_id
    out: dict[str, list] = {"input_ids": [], "prompt_length": [], "status": []}
    for prompt, response in zip(prompts, responses):
        ids = bos + prompt + response + ([eos] if eos is not None and (not response or response[-1] != eos) else [])
        prompt_length = len(bos) + len(prompt)
        status = "ok"
        if len(ids) > max_seq_len:
            if overflow == "drop" or prompt_length >= max_seq_len:
                status = "dropped"
                ids = []
            else:
                status = "truncated"
                ids = ids[:max_seq_len]
        out["input_ids"].append(ids)
        out["prompt_length"].append(prompt_length)
        out["status"].append(status)
    return out


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
    """Reads, renders and tokenizes every row of `sources`; rows too long are truncated or dropped (counted)."""
    import datasets

    key_material = json.dumps(
        [[_source_fingerprint(s) for s in sources], tokenizer_fingerprint(tokenizer), template, max_seq_len, overflow]
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    cache_file = Path(cache_dir) / f"tokens-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file) as cached:
            counts = json.loads(str(cached["counts"]))
            return TokenizedData(cached["tokens"], cached["offsets"], cached["prompt_lengths"], counts)

    prompt_texts, response_texts, skipped = [], [], 0
    for source in sources:
        for where, row in _read_source(source):
            try:
                prompt, response = render_row(row, where, template, tokenizer)
            except DataError:
                if not skip_bad_rows:
                    raise
                skipped += 1
                continue
            prompt_texts.append(prompt)
            response_texts.append(response)
    if not prompt_texts:
        raise DataError(f"no usable rows in {', '.join(sources)} ({skipped} skipped as malformed)")

    dataset = datasets.Dataset.from_dict({"prompt_text": prompt_texts, "response_text": response_texts})
    dataset = dataset.map(
        _tokenize_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_len": max_seq_len, "overflow": overflow},
        remove_columns=["prompt_text", "response_text"],
        desc="tokenizing",
    )
    status = np.asarray(dataset["status"])
    keep = status != "dropped"
    column = dataset.data.table.column("input_ids").combine_chunks()
    lengths = np.diff(column.offsets.to_numpy())[keep]
    data = TokenizedData(
        tokens=column.flatten().to_numpy().astype(np.int32),  # dropped rows hold no tokens
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        prompt_lengths=np.asarray(dataset["prompt_length"], dtype=np.int64)[keep],
        counts={
            "rows": len(prompt_texts) + skipped,
            "skipped_malformed": skipped,
            "truncated": int((status == "truncated").sum()),
            "dropped_too_long": int((status == "dropped").sum()),
            "documents": int(keep.sum()),
            "tokens": int(lengths.sum()),
        },
    )
    if len(data) == 0:
        raise DataError(f"every row of {', '.join(sources)} is longer than max_seq_len={max_seq_len}")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            partial,
            tokens=data.tokens,
            offsets=data.offsets,
            prompt_lengths=data.prompt_lengths,
            counts=np.array(json.dumps(data.counts)),
        )
        os.replace(partial, cache_file)
    return data


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
    lengths = data.lengths[docs]
    pieces = [data.tokens[data.offsets[d] : data.offsets[d + 1]] for d in docs]
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
