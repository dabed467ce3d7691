"""The memory-mapped token store (round trip, chunking, two readers) and the background micro-batch loader."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from _trainer_utils import write_addition_data

from mathforge.trainer import data as data_module
from mathforge.trainer.data import Prefetcher, TokenizedData, build_micro_batch, open_token_store, tokenize
from mathforge.trainer.tokenizer import train_bpe_tokenizer
from mathforge.trainer.train import StagePlan


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([f"What is {a} + {b}?\n{a + b}" for a in range(30) for b in range(30)], 300)


def test_store_round_trip_is_memory_mapped_and_equals_in_memory_tokens(tmp_path, tokenizer, monkeypatch):
    source = str(write_addition_data(tmp_path / "d.jsonl", n=50))
    in_memory = tokenize([source], tokenizer, template="plain", max_seq_len=24)
    monkeypatch.setattr(data_module, "CHUNK_ROWS", 7)  # many chunks appended to the store
    stored = tokenize([source], tokenizer, template="plain", max_seq_len=24, cache_dir=tmp_path / "c")
    assert isinstance(stored.tokens, np.memmap) and stored.tokens.mode == "r"
    for name in ("tokens", "offsets", "prompt_lengths"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(in_memory, name))
    assert stored.counts == in_memory.counts and stored.counts["documents"] == 50
    (folder,) = (tmp_path / "c").glob("tokens-*")
    assert sorted(p.name for p in folder.iterdir()) == ["offsets.npy", "prompt_lengths.npy", "store.json", "tokens.bin"]
    assert folder.joinpath("tokens.bin").stat().st_size == 4 * stored.counts["tokens"]


def test_two_readers_see_the_same_tokens(tmp_path, tokenizer):
    source = str(write_addition_data(tmp_path / "d.jsonl", n=40))
    first = tokenize([source], tokenizer, template="plain", max_seq_len=32, cache_dir=tmp_path / "c")
    (folder,) = (tmp_path / "c").glob("tokens-*")
    second = open_token_store(folder)
    np.testing.assert_array_equal(first.tokens, second.tokens)
    code = (
        "import sys, numpy as np; from mathforge.trainer.data import open_token_store; "
        "d = open_token_store(sys.argv[1]); print(int(np.asarray(d.tokens, np.int64) @ np.arange(len(d.tokens))), "
        "int(d.offsets[-1]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    tokens = np.asarray(first.tokens, np.int64)
    assert out.stdout.split() == [str(int(tokens @ np.arange(len(tokens)))), str(len(tokens))]


def test_prefetcher_yields_in_order_and_raises_where_the_error_was():
    assert list(Prefetcher(range(50), lambda i: i * i, depth=3)) == [i * i for i in range(50)]

    def make(i):
        if i == 5:
            raise ValueError("bad item 5")
        return i

    loader = Prefetcher(range(10), make, depth=2)
    assert [next(loader) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="bad item 5"):
        next(loader)
    assert not loader._thread.is_alive()


def test_prefetcher_close_stops_the_thread_early():
    started = threading.Event()

    def endless():
        i = 0
        while True:
            started.set()
            yield i
            i += 1

    with Prefetcher(endless(), lambda i: i, depth=2) as loader:
        assert next(loader) == 0
    assert started.is_set() and not loader._thread.is_alive()


def test_background_micro_batches_equal_those_built_in_the_step():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=120)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    data = TokenizedData(rng.integers(0, 300, offsets[-1]).astype(np.int32), offsets, np.maximum(1, lengths // 3))
    plan = StagePlan(data, 96, world=2, accum=3, epochs=2.5, steps=0, seed=4)
    for rank in (0, 1):
        first = 3
        expected = []
        for step in range(first, plan.total_steps):
            mine, n_micro = plan.rank_bins(step, rank)
            for i in range(n_micro):
                docs, filler = (plan.bins[mine[i]], False) if i < len(mine) else (plan.bins[0], True)
                expected.append(build_micro_batch(data, docs, mask_all=filler))
        make = lambda spec: build_micro_batch(data, spec[0], mask_all=spec[1])  # noqa: E731
        got = list(Prefetcher(plan.micro_batches(rank, first), make, depth=4))
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.cu_seqlens, b.cu_seqlens) and a.num_targets == b.num_targets


def _reference_documents(rows, tokenizer, max_seq_len, overflow):
    """The documents tokenized one row at a time (the rule the array assembly must reproduce): bos + prompt +
    response + eos unless the response ends with it; too long → truncated, or dropped when `overflow` is "drop"
    or the prompt fills `max_seq_len`."""
    with_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
    bos, eos = ([tokenizer.bos_token_id] if with_bos else []), tokenizer.eos_token_id
    docs, prompt_lengths, truncated, dropped = [], [], 0, 0
    for row in rows:
        prompt = tokenizer(f"{row['prompt']}\n", add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        ids = bos + prompt + response + ([eos] if eos is not None and (not response or response[-1] != eos) else [])
        if len(ids) > max_seq_len:
            if overflow == "drop" or len(bos) + len(prompt) >= max_seq_len:
                dropped += 1
                continue
            truncated += 1
            ids = ids[:max_seq_len]
        docs.append(ids)
        prompt_lengths.append(len(bos) + len(prompt))
    return docs, prompt_lengths, truncated, dropped


@pytest.mark.parametrize(("bos", "overflow"), [(False, "truncate"), (True, "truncate"), (True, "drop")])
def test_store_equals_row_by_row_tokenization(tmp_path, tokenizer, monkeypatch, bos, overflow):
    import copy
    import json

    tok = copy.deepcopy(tokenizer)
    if bos:
        tok.bos_token = "<|im_start|>"
        tok.add_bos_token = True
    rows = [{"prompt": f"What is {a} + {b}?", "response": f"{a + b}" * (a % 9)} for a in range(25) for b in (3, 17)]
    rows[3]["response"] = "7<|endoftext|>"  # already ends with eos: no second one
    rows[5]["prompt"] = "What is 1 + 2? " * 9  # a prompt that fills max_seq_len: dropped either way
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(data_module, "CHUNK_ROWS", 6)  # several chunks in work on threads at once
    monkeypatch.setattr(data_module, "ENCODE_ROWS", 4)  # several batch encodes per chunk
    stored = tokenize(
        [str(source)], tok, template="plain", max_seq_len=16, overflow=overflow, num_proc=3, cache_dir=tmp_path / "c"
    )
    docs, prompt_lengths, truncated, dropped = _reference_documents(rows, tok, 16, overflow)
    assert truncated > 0 if overflow == "truncate" else dropped > 5
    assert stored.counts["truncated"] == truncated and stored.counts["dropped_too_long"] == dropped
    np.testing.assert_array_equal(stored.tokens, np.concatenate(docs))
    np.testing.assert_array_equal(stored.lengths, [len(d) for d in docs])
    np.testing.assert_array_equal(stored.prompt_lengths, prompt_lengths)
    if bos:
        assert (stored.tokens[stored.offsets[:-1]] == tok.bos_token_id).all()


def test_encode_equals_the_wrapper_and_falls_back_to_it_when_the_backend_is_configured(tokenizer):
    import copy

    texts = ["What is 12 + 30?\n", "", "42<|endoftext|>", "7 + 8 = 15. The answer is: 15"]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for tok in (tokenizer, copy.deepcopy(tokenizer)):
        if tok is not tokenizer:
            tok.backend_tokenizer.enable_truncation(3)  # the wrapper turns this off; so must _encode
        flat, lengths = data_module._encode(texts, tok)
        assert lengths.tolist() == [len(ids) for ids in expected]
        assert flat.dtype == np.int32 and flat.tolist() == [t for ids in expected for t in ids]
