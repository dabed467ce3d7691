"""The synth `local` backend (transformers in-process) against our own KV-cache generation."""

import asyncio

import torch

from mathforge.backends import LocalBackend
from mathforge.model import from_config
from mathforge.model.generate import generate
from mathforge.trainer.tokenizer import train_bpe_tokenizer


def test_local_backend_greedy_matches_our_generation(tmp_path):
    texts = [f"User: What is {a} + {b}?\n\nAssistant: {a + b}" for a in range(20) for b in range(10)]
    tokenizer = train_bpe_tokenizer(texts, 300, tmp_path)
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(tmp_path)
    backend = LocalBackend(str(tmp_path), device="cpu", dtype="float32")
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    reply = asyncio.run(backend.chat(messages, n=2, temperature=0.0, max_tokens=12))

    prompt = "User: What is 3 + 4?\n\nAssistant: "  # the layout for a tokenizer without a chat template
    expected = generate(model.eval(), tokenizer, [prompt], max_new_tokens=12)[0]
    assert reply.texts == [expected, expected]  # greedy: both samples are the same continuation
    assert reply.prompt_tokens == 2 * len(tokenizer(prompt)["input_ids"])
    assert backend.usage.requests == 1 and backend.usage.completions == 2
