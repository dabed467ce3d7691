"""KV-cache generation against full recomputation; sampling, EOS, padding and stop strings."""

import pytest
import torch

from mathforge.model import from_config, generate, generate_tokens, sample_next

PROMPTS = [[5, 17, 3], [400, 2, 9, 81, 33, 7, 12], [250]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return from_config(
        {
            "preset": "qwen2.5-0.5b",
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
        }
    ).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        f"Question: what is {a} plus {b}? Answer: {a + b}. The answer is {a + b}." for a in range(30) for b in range(9)
    ]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def full_recompute_greedy(model, prompt, steps):
    tokens = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            hidden = model(torch.tensor(tokens))
        tokens.append(int(model.logits(hidden[-1]).argmax()))
    return tokens[len(prompt) :]


def test_kv_cache_greedy_equals_full_recomputation(model):
    got = generate_tokens(model, PROMPTS, max_new_tokens=10, eos_token_id=[])
    assert got == [full_recompute_greedy(model, p, 10) for p in PROMPTS]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prompt_tensor_equals_lists(model, side):
    width = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        cols = slice(0, len(p)) if side == "right" else slice(width - len(p), width)
        ids[i, cols], mask[i, cols] = torch.tensor(p), 1
    want = generate_tokens(model, PROMPTS, max_new_tokens=6, eos_token_id=[])
    assert generate_tokens(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[]) == want


def test_eos_ends_a_row_and_is_not_returned(model):
    greedy = generate_tokens(model, PROMPTS, max_new_tokens=8, eos_token_id=[])
    eos = greedy[1][3]
    got = generate_tokens(model, PROMPTS, max_new_tokens=8, eos_token_id=eos)
    assert got[1] == greedy[1][: greedy[1].index(eos)]
    for want, row in zip(greedy, got):
        assert row == want[: want.index(eos)] if eos in want else row == want


def test_sampling_is_seeded_and_top_p_narrows():
    logits = torch.tensor([[3.0, 2.0, -10.0, -10.0]]).repeat(2000, 1)  # p ≈ 0.731, 0.269, ~0, ~0
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, 1.0, 0.8, gen)  # 0.731 < 0.8: tokens 0 and 1 stay
    assert set(draws.tolist()) == {0, 1}
    assert 0.69 < (draws == 0).float().mean() < 0.77
    assert set(sample_next(logits, 1.0, 0.5, gen).tolist()) == {0}  # the top token alone reaches 0.5
    assert sample_next(logits[:1], 0.0, 1.0, None).tolist() == [0]


def test_sampled_generation_reproducible(model):
    a = generate_tokens(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, eos_token_id=[])
    b = generate_tokens(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, eos_token_id=[])
    c = generate_tokens(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=4, eos_token_id=[])
    greedy = generate_tokens(model, PROMPTS, max_new_tokens=8, eos_token_id=[])
    narrow = generate_tokens(model, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3, eos_token_id=[])
    assert a == b and a != c
    assert narrow == greedy


def test_text_generation_with_stop_strings_and_batches(model, tokenizer):
    prompts = ["Question: what is 2 plus 3?", "Answer:", "The answer is 1"]
    full = generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=8)
    assert generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=2) == full  # order kept
    text = full[0]
    assert len(text) > 12
    stop = text[6:9]
    want = text[: text.find(stop)]
    got = generate(model, tokenizer, prompts[:1], max_new_tokens=24, stop=[stop, "never-there"])
    assert got == [want]
    ids = tokenizer.encode(prompts[0])
    new = generate_tokens(
        model, [ids], max_new_tokens=24, eos_token_id=[], should_stop=lambda row, toks: stop in tokenizer.decode(toks)
    )
    assert len(new[0]) < 24 and stop in tokenizer.decode(new[0])  # stopped early, right after the stop string
    assert stop not in tokenizer.decode(new[0][:-1])
