"""mathforge.backends: one local and one OpenAI-compatible backend for synthesis (chat) and evaluation (generate)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from fake_openai import LoopbackServer

from mathforge.backends import BACKENDS, LocalBackend, OpenAIBackend, make_backend, render_chat
from mathforge.errors import ConfigError
from mathforge.model import from_config
from mathforge.model.generate import generate
from mathforge.trainer.tokenizer import train_bpe_tokenizer


def test_kinds_are_a_registry():
    assert BACKENDS.names() == ["openai", "local"]
    with pytest.raises(ConfigError, match="backend.kind: unknown chat backend 'vllm'; known: openai, local"):
        make_backend({"kind": "vllm"})


def test_fallback_chat_layout_without_a_template():
    class NoTemplate:
        chat_template = None

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert render_chat(NoTemplate(), messages) == "System: Be brief.\n\nUser: 2+2?\n\nAssistant: "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    texts = [f"User: What is {a} + {b}?\n\nAssistant: {a + b}" for a in range(20) for b in range(10)]
    tokenizer = train_bpe_tokenizer(texts, 300, folder)
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(folder)
    return folder, model.eval(), tokenizer


def test_local_chat_and_generate_render_and_sample_alike(tiny):
    folder, model, tokenizer = tiny
    backend = make_backend({"kind": "local", "model": str(folder), "device": "cpu", "dtype": "float32"}, seed=3)
    assert isinstance(backend, LocalBackend) and backend.engine == "mathforge" and backend.model_name == folder.name
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    prompt = "User: What is 3 + 4?\n\nAssistant: "
    sampled = asyncio.run(backend.chat(messages, n=3, temperature=1.0, max_tokens=8))  # seed None: the backend's 3
    assert sampled.texts == generate(model, tokenizer, [prompt] * 3, max_new_tokens=8, temperature=1.0, seed=3)
    assert backend.generate([messages], n=3, temperature=1.0, max_new_tokens=8, seed=3) == [sampled.texts]
    greedy = generate(model, tokenizer, [prompt], max_new_tokens=8)[0]
    assert backend.generate([prompt, messages], max_new_tokens=8) == [[greedy], [greedy]]
    cut = greedy[2:4]
    assert backend.generate([prompt], max_new_tokens=8, stop=[cut]) == [[greedy[: greedy.find(cut)]]]
    in_memory = LocalBackend(model, tokenizer, device="cpu")
    assert in_memory.engine == "mathforge" and in_memory.generate([messages], max_new_tokens=8) == [[greedy]]
    assert backend.usage.requests == 1 + 1 + 2 + 1 and backend.usage.completions == 3 + 3 + 2 + 1
    assert sampled.prompt_tokens == 3 * len(tokenizer(prompt)["input_ids"])


def echo(messages, index):
    return f"echo[{index}]: {messages[-1]['content']}"


def test_openai_generate_may_run_again_and_counts_over_runs():
    with LoopbackServer(echo, faults={"429": 0.2}, seed=4) as server:
        backend = OpenAIBackend(server.url, "m", concurrency=4, backoff_s=0.001)
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
        first = backend.generate(prompts, n=2, temperature=0.5)
        second = backend.generate(prompts[:3])  # a second asyncio.run: a fresh client on the new loop
        counts = server.counts
    assert first == [[f"echo[0]: q{i}", f"echo[1]: q{i}"] for i in range(10)]
    assert second == [[f"echo[0]: q{i}"] for i in range(3)]
    assert backend.retries == counts["429"] > 0 and backend.usage.completions == 23
    assert backend.usage.requests == counts["requests"] == 13 + counts["429"]
    assert sum(backend.per_url.values()) == 13
