"""End to end on CPU: a tiny random Llama evaluated on 20 GSM8K problems through the local backend
(our model and transformers' generate) and through the openai backend against a real chat-completions
server on 127.0.0.1 started here (serving the same tiny model, then canned answers)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mathforge.backends import LocalBackend, OpenAIBackend  # noqa: E402
from mathforge.evaluate import datasets as vendored  # noqa: E402
from mathforge.evaluate import run_eval  # noqa: E402
from mathforge.evaluate.benchmarks import gsm8k_gold  # noqa: E402

LIMIT = 20
GEN = {"bench": "gsm8k", "limit": LIMIT, "prompt": "jiuzhang", "max_new_tokens": 6, "show_progress": False}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random LlamaForCausalLM and a byte-level BPE tokenizer trained on GSM8K text, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rows = vendored.load("gsm8k", "train")[:300]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=0,
        bos_token_id=0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class _Server:
    """A chat/completions server on 127.0.0.1 answering with `respond(prompt_or_messages, max_tokens)`.

    The first request gets a 429 (clients must retry); the server stops itself after `lifetime` seconds."""

    def __init__(self, respond, lifetime: float = 120.0):
        self.requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    first = outer.requests == 1
                if first:
                    return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}})
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"] if chat else body["prompt"]
                with outer.lock:
                    texts = [respond(prompt, body.get("max_tokens", 16)) for _ in range(body.get("n", 1))]
                choices = [
                    {
                        "index": i,
                        "finish_reason": "stop",
                        **({"message": {"role": "assistant", "content": t}} if chat else {"text": t}),
                    }
                    for i, t in enumerate(texts)
                ]
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": choices,
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                    },
                )

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True
        self.timer.start()

    def close(self):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def _outputs(results_dir):
    return [json.loads(line)["output"] for line in (results_dir / "samples-gsm8k.jsonl").read_text().splitlines()]


def test_local_and_openai_backends_agree_on_20_gsm8k_problems(checkpoint, tmp_path):
    local = LocalBackend(checkpoint, batch_size=8)
    assert local.engine == "mathforge"
    results = run_eval(checkpoint, out=tmp_path / "local", **GEN)
    scores = results["benchmarks"]["gsm8k"]
    assert scores["count"] == LIMIT and scores["prompt"] == "jiuzhang"
    local_outputs = _outputs(tmp_path / "local")
    assert len(local_outputs) == LIMIT and any(local_outputs)

    hf = LocalBackend(checkpoint, engine="transformers", batch_size=8)
    prompts = [f"## Question\n{r['question']}\n\n## Solution\n" for r in vendored.load("gsm8k", "test")[:LIMIT]]
    assert [o[0] for o in hf.generate(prompts, max_new_tokens=6)] == local_outputs  # greedy: same tokens

    server = _Server(lambda prompt, max_tokens: local.generate([prompt], max_new_tokens=max_tokens)[0][0])
    try:
        backend = OpenAIBackend(server.url, "tiny", concurrency=4, backoff_s=0.01, timeout_s=30)
        remote = run_eval(backend=backend, out=tmp_path / "api", **GEN)
    finally:
        server.close()
    assert backend.retries == 1  # the 429 was retried
    assert _outputs(tmp_path / "api") == local_outputs
    assert remote["benchmarks"]["gsm8k"]["accuracy_lenient"] == scores["accuracy_lenient"]
    assert (tmp_path / "api" / "results.md").read_text().startswith("| benchmark |")


def test_openai_backend_with_canned_answers_scores_exactly(tmp_path):
    rows = vendored.load("gsm8k", "test")[:LIMIT]
    golds = {r["question"]: gsm8k_gold(r["answer"]) for r in rows}

    def respond(messages, _max_tokens):
        question = next(q for q in golds if q in messages[-1]["content"])
        index = list(golds).index(question)
        return f"Some steps.\nThe answer is {golds[question] if index % 4 else int(golds[question]) + 1}."

    server = _Server(respond)
    try:
        results = run_eval(
            api=server.url,
            served_model="canned",
            bench="gsm8k",
            limit=LIMIT,
            prompt="qwen-boxed",
            n=2,
            temperature=0.7,
            out=tmp_path,
            show_progress=False,
        )
    finally:
        server.close()
    scores = results["benchmarks"]["gsm8k"]
    assert scores["accuracy_lenient"] == pytest.approx(0.75)  # every fourth answer is off by one
    assert scores["accuracy_strict"] == pytest.approx(0.75)
    assert scores["pass@2"] == pytest.approx(0.75) and scores["maj@2"] == pytest.approx(0.75)
    first = json.loads((tmp_path / "samples-gsm8k.jsonl").read_text().splitlines()[0])
    assert first["extracted"] == str(int(golds[rows[0]["question"]]) + 1) and first["lenient"] is False
