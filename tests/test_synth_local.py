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


def test_local_complete_sends_the_raw_text_and_the_folder_names_its_layout(tmp_path):
    texts = [f"## Question\nWhat is {a} + {b}?\n\n## Solution\n{a + b}" for a in range(20) for b in range(10)]
    tokenizer = train_bpe_tokenizer(texts, 300, tmp_path)
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(tmp_path)
    assert LocalBackend(str(tmp_path), device="cpu").template is None  # not written by `mathforge train`
    (tmp_path / "mathforge.json").write_text('{"template": "jiuzhang"}')
    backend = LocalBackend(str(tmp_path), device="cpu", dtype="float32")
    assert backend.template == "jiuzhang"
    prompt = "## Question\nWhat is 3 + 4?\n\n## Solution\n"
    reply = asyncio.run(backend.complete(prompt, n=1, temperature=0.0, max_tokens=12))
    assert reply.texts == generate(model.eval(), tokenizer, [prompt], max_new_tokens=12)  # the text as is, no chat
    assert reply.prompt_tokens == len(tokenizer(prompt)["input_ids"])


def tiny_folder(folder):
    texts = [f"User: What is {a} + {b}?\n\nAssistant: {a + b}" for a in range(20) for b in range(10)]
    tokenizer = train_bpe_tokenizer(texts, 300, folder)
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(folder)
    return model.eval(), tokenizer


def test_a_local_reply_cut_at_max_tokens_says_length_and_synthesis_drops_it(tmp_path):
    import json

    from mathforge.synth import config, run

    model, tokenizer = tiny_folder(tmp_path / "model")
    backend = LocalBackend(str(tmp_path / "model"), device="cpu", dtype="float32")
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    cut = asyncio.run(backend.chat(messages, n=2, temperature=0.0, max_tokens=3))
    prompt = "User: What is 3 + 4?\n\nAssistant: "
    tokens = tokenizer(generate(model, tokenizer, [prompt], max_new_tokens=3)[0], add_special_tokens=False)
    assert len(tokens["input_ids"]) >= 2  # three tokens decoded (a BPE merge may join two), no EOS among them
    assert cut.finish_reasons == ["length", "length"] and cut.kept() == ([], 2)
    longer = generate(model, tokenizer, [prompt], max_new_tokens=12)[0]
    stopped = asyncio.run(backend.chat(messages, temperature=0.0, max_tokens=12, stop=[longer[4:6]]))
    assert stopped.texts == [longer[: longer.find(longer[4:6])]] and stopped.finish_reasons == ["stop"]
    assert backend.generate_finished([prompt], max_new_tokens=3) == [[(cut.texts[0], "length")]]
    assert backend.usage.truncated == 2 + 0 + 1
    hf = LocalBackend(str(tmp_path / "model"), engine="transformers", device="cpu", dtype="float32")
    assert asyncio.run(hf.chat(messages, temperature=0.0, max_tokens=3)).finish_reasons == ["length"]
    assert asyncio.run(hf.chat(messages, temperature=0.0, max_tokens=12, stop=[longer[4:6]])).finish_reasons == ["stop"]

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Lesson {k}: counting."}) + "\n" for k in range(3)))
    sets = [
        f'run.output="{tmp_path / "synth"}"',
        "run.items=3",
        "run.progress=false",
        'pipeline.kind="jiuzhang"',
        f'jiuzhang.texts=["{texts}"]',
        'jiuzhang.stages=["grade_school"]',
        'jiuzhang.variants=["cot"]',
        'backend.kind="local"',
        f'backend.model="{tmp_path / "model"}"',
        'backend.device="cpu"',
        'backend.dtype="float32"',
        "sampling.temperature=0",
        "sampling.max_tokens=3",
    ]
    manifest = run.synthesize(config.load(None, sets))
    assert manifest["rows"] == 0 and manifest["generation"]["rejected"] == 3 and manifest["usage"]["truncated"] == 3
    [(kind, count)] = manifest["generation_rejections"].items()
    assert kind.endswith(": truncated") and count == 3
