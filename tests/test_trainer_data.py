"""Rows → tokens → packed micro-batches: prompt masking, document boundaries, overflow policies, errors."""

import json

import numpy as np
import pytest
import torch
from _trainer_utils import write_addition_data

from mathforge.errors import DataError
from mathforge.model import shift_labels
from mathforge.trainer.data import (
    TokenizedData,
    build_micro_batch,
    plan_micro_batches,
    render_row,
    target_counts,
    tokenize,
    with_loss_on,
)
from mathforge.trainer.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    data = write_addition_data(root / "d.jsonl", n=100)
    texts = [r["prompt"] + " " + r["response"] for r in map(json.loads, data.read_text().splitlines())]
    return train_bpe_tokenizer(texts, 300)


def test_labels_mask_prompts_and_boundaries():
    # doc A: prompt [10, 11], response [12, 13, 1]; doc B: prompt [20], response [21, 1]
    data = TokenizedData(np.array([10, 11, 12, 13, 1, 20, 21, 1], np.int32), np.array([0, 5, 8]), np.array([2, 1]))
    batch = build_micro_batch(data, np.array([0, 1]))
    assert batch.input_ids.tolist() == [10, 11, 12, 13, 1, 20, 21, 1]
    assert batch.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch.cu_seqlens.tolist() == [0, 5, 8] and batch.cu_seqlens.dtype == torch.int32
    assert batch.labels.tolist() == [-100, 12, 13, 1, -100, 21, 1, -100]
    assert batch.num_targets == 5 and batch.max_seqlen == 5
    # the model's own label helper agrees
    prompt_mask = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert shift_labels(batch.input_ids, batch.cu_seqlens, prompt_mask).tolist() == batch.labels.tolist()
    filler = build_micro_batch(data, np.array([0, 1]), mask_all=True)
    assert filler.num_targets == 0 and (filler.labels == -100).all()
    # one target rule: per-document counts (what the trainer normalises by) match the labels
    assert target_counts(data.lengths, data.prompt_lengths).tolist() == [3, 2]
    other = build_micro_batch(data, np.array([1, 0]), ignore_index=-1)
    assert other.labels.tolist() == [21, 1, -1, -1, 12, 13, 1, -1] and other.num_targets == 5
    # a document without a prompt trains on every token but the first; a 1-token document on none
    bare = TokenizedData(np.array([5, 6, 7, 8], np.int32), np.array([0, 3, 4]), np.array([0, 0]))
    assert build_micro_batch(bare, np.array([0, 1])).labels.tolist() == [6, 7, -100, -100]
    assert target_counts(bare.lengths, bare.prompt_lengths).tolist() == [2, 0]


def test_loss_on_all_puts_the_loss_on_prompt_tokens_too():
    # doc A: prompt [10, 11], response [12, 13, 1]; doc B: prompt [20], response [21, 1]
    data = TokenizedData(np.array([10, 11, 12, 13, 1, 20, 21, 1], np.int32), np.array([0, 5, 8]), np.array([2, 1]))
    assert with_loss_on(data, "response") is data
    every = build_micro_batch(with_loss_on(data, "all"), np.array([0, 1]))
    assert every.labels.tolist() == [11, 12, 13, 1, -100, 21, 1, -100] and every.num_targets == 6
    assert build_micro_batch(data, np.array([0, 1])).num_targets == 5
    assert data.prompt_lengths.tolist() == [2, 1]  # the stage's copy, not the cached data, changes


def test_loss_on_label_counts_of_a_packed_batch(tmp_path, tokenizer):
    rows = [{"prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = {a + b}. The answer is: {a + b}"} for a, b in
            [(3, 4), (12, 30), (7, 105)]]  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tokenize([str(path)], tokenizer, template="jiuzhang", max_seq_len=256)
    prompts = [len(tokenizer(f"## Question\n{r['prompt']}\n\n## Solution\n")["input_ids"]) for r in rows]
    responses = [len(tokenizer(r["response"])["input_ids"]) + 1 for r in rows]  # + the end-of-sequence token
    assert data.lengths.tolist() == [p + r for p, r in zip(prompts, responses)]
    [docs] = plan_micro_batches(data, 1024)  # all three documents in one packed micro-batch
    response_only = build_micro_batch(data, docs)
    everything = build_micro_batch(with_loss_on(data, "all"), docs)
    # "response": the response tokens and the end-of-sequence; "all": every token of each document but its first
    assert int((response_only.labels != -100).sum()) == response_only.num_targets == sum(responses)
    assert int((everything.labels != -100).sum()) == everything.num_targets == sum(prompts) + sum(responses) - 3
    assert sum(prompts) > 20 and everything.num_targets - response_only.num_targets == sum(prompts) - 3


def test_templates_render_rows(tokenizer):
    prompt, response = render_row({"prompt": "Q?", "response": "A."}, "f:1", "jiuzhang", tokenizer)
    assert (prompt, response) == ("## Question\nQ?\n\n## Solution\n", "A.")
    prompt, response = render_row(
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
        "f:1",
        "alpaca-cot",
        tokenizer,
    )
    assert prompt.endswith("### Instruction:\nQ?\n\n### Response: Let's think step by step.") and response == " A."


def test_tokenize_counts_truncation_and_drops(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "What is 1 + 2?", "response": "3"}, {"prompt": "What is 5 + 5?", "response": "1 " * 40}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kept = tokenize([str(path)], tokenizer, template="plain", max_seq_len=20, overflow="truncate")
    assert kept.counts["truncated"] == 1 and kept.counts["documents"] == 2 and kept.lengths.max() == 20
    first = tokenizer("What is 1 + 2?\n", add_special_tokens=False)["input_ids"]
    assert kept.tokens[: len(first)].tolist() == first and kept.prompt_lengths[0] == len(first)
    assert kept.tokens[kept.offsets[1] - 1] == tokenizer.eos_token_id
    dropped = tokenize([str(path)], tokenizer, template="plain", max_seq_len=20, overflow="drop")
    assert dropped.counts["dropped_too_long"] == 1 and len(dropped) == 1


def test_bad_rows_name_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=rf"{path}:3: missing string field 'response'"):
        tokenize([str(path)], tokenizer, template="plain", max_seq_len=32)
    data = tokenize([str(path)], tokenizer, template="plain", max_seq_len=32, skip_bad_rows=True)
    assert data.counts["skipped_malformed"] == 1 and len(data) == 1
    path.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        tokenize([str(path)], tokenizer, template="plain", max_seq_len=32)
    with pytest.raises(DataError, match="no such data file"):
        tokenize([str(tmp_path / "none.jsonl")], tokenizer, template="plain", max_seq_len=32)


def test_cache_is_reused_and_keyed(tmp_path, tokenizer):
    data_path = write_addition_data(tmp_path / "d.jsonl", n=30)
    first = tokenize([str(data_path)], tokenizer, template="plain", max_seq_len=64, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("tokens-*"))) == 1
    again = tokenize([str(data_path)], tokenizer, template="plain", max_seq_len=64, cache_dir=tmp_path / "c")
    assert np.array_equal(first.tokens, again.tokens) and first.counts == again.counts
    tokenize([str(data_path)], tokenizer, template="jiuzhang", max_seq_len=64, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("tokens-*"))) == 2  # another template, another key


def test_parquet_rows(tmp_path, tokenizer):
    import datasets

    datasets.Dataset.from_list([{"prompt": "What is 2 + 2?", "response": "4"}] * 3).to_parquet(tmp_path / "p.parquet")
    data = tokenize([str(tmp_path / "p.parquet")], tokenizer, template="plain", max_seq_len=64)
    assert len(data) == 3 and data.counts["rows"] == 3


def test_micro_batches_cover_every_document_once(tmp_path, tokenizer):
    data = tokenize([str(write_addition_data(tmp_path / "d.jsonl", n=80))], tokenizer, template="plain", max_seq_len=64)
    bins = plan_micro_batches(data, 128)
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(data)))
    assert all(data.lengths[b].sum() <= 128 for b in bins)


def test_folder_of_shards(tmp_path, tokenizer):
    folder = tmp_path / "normal"
    folder.mkdir()
    write_addition_data(folder / "shard-0-of-2.jsonl", n=5, seed=1)
    (folder / "hard").mkdir()
    write_addition_data(folder / "hard" / "shard-1-of-2.jsonl", n=7, seed=2)
    data = tokenize([str(folder)], tokenizer, template="plain", max_seq_len=64)
    assert data.counts["rows"] == 12  # subfolders too
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="a folder with no .jsonl"):
        tokenize([str(tmp_path / "empty")], tokenizer, template="plain", max_seq_len=64)
