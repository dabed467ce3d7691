"""Chat backends behind one interface: `await backend.chat(messages, n=..., **sampling) -> Completion`.

- `OpenAIBackend`: any OpenAI-compatible endpoint (vLLM, SGLang, OpenAI) through the `openai` async
  client. At most `concurrency` requests in flight; several base URLs are load-balanced (the one with
  the fewest requests in flight, then round robin); 429, 5xx, timeouts, connection errors and
  malformed responses are retried with exponential backoff and jitter on the next URL; other 4xx fail
  the item at once. Token usage and retries are counted.
- `LocalBackend`: a Hugging Face causal LM (a checkpoint folder, e.g. one `mathforge train` wrote)
  generating in-process, one batch at a time on a worker thread.

The `symbolic` backend needs no chat interface: it makes finished rows itself (see `symbolic.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mathforge.errors import ConfigError

Message = dict[str, str]


@dataclass
class Completion:
    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


class BackendError(RuntimeError):
    """A request that failed for good (retries exhausted or a non-retryable error); its item stays undone."""


@dataclass
class Usage:
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "completions": self.completions, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "retries": dict(self.retries), "failures": self.failures}


class OpenAIBackend:
    """Chat completions from one or more OpenAI-compatible servers, bounded and retried (see module doc)."""

    def __init__(self, base_urls: list[str], model: str, *, api_key: str | None = None, concurrency: int = 64,
                 max_retries: int = 6, timeout_s: float = 120.0, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 seed: int = 0) -> None:
        from openai import AsyncOpenAI

        if not base_urls:
            raise ConfigError("backend.base_urls needs at least one URL")
        self.model, self.max_retries = model, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.clients = [AsyncOpenAI(base_url=u, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)
                        for u in base_urls]
        self.base_urls = list(base_urls)
        self.in_flight = [0] * len(base_urls)
        self.per_url = Counter()
        self._next = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._rng = random.Random(seed)
        self.usage = Usage()

    def _pick(self, avoid: int | None) -> int:
        order = sorted(range(len(self.clients)), key=lambda i: (i == avoid, self.in_flight[i], (i - self._next) % len(self.clients)))
        self._next = (order[0] + 1) % len(self.clients)
        return order[0]

    async def chat(self, messages: list[Message], *, n: int = 1, temperature: float = 0.7, top_p: float = 1.0,
                   max_tokens: int = 1024, seed: int | None = None) -> Completion:
        import openai

        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                     openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError)
        extra = {"seed": seed} if seed is not None and seed >= 0 else {}
        last: Exception | None = None
        url = None
        async with self._limit:
            for attempt in range(self.max_retries + 1):
                url = self._pick(avoid=url if len(self.clients) > 1 else None)
                self.in_flight[url] += 1
                self.usage.requests += 1
                try:
                    resp = await self.clients[url].chat.completions.create(
                        model=self.model, messages=messages, n=n, temperature=temperature, top_p=top_p,
                        max_tokens=max_tokens, **extra)
                    texts = [c.message.content for c in resp.choices]
                    if len(texts) != n or any(not isinstance(t, str) for t in texts):
                        raise ValueError(f"expected {n} text choices, got {len(texts)}")
                except (*retryable, ValueError, AttributeError, TypeError) as error:
                    status = getattr(error, "status_code", None)
                    self.usage.retries[str(status) if status else type(error).__name__] += 1
                    last = error
                    if attempt < self.max_retries:
                        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + self._rng.random())
                        await asyncio.sleep(delay)
                    continue
                except openai.APIStatusError as error:  # 4xx other than 429: the request itself is wrong
                    self.usage.failures += 1
                    raise BackendError(f"{self.base_urls[url]}: HTTP {error.status_code}: {error.message}") from None
                finally:
                    self.in_flight[url] -= 1
                self.per_url[self.base_urls[url]] += 1
                self.usage.completions += len(texts)
                prompt_tokens = getattr(resp.usage, "prompt_tokens", 0) or 0
                completion_tokens = getattr(resp.usage, "completion_tokens", 0) or 0
                self.usage.prompt_tokens += prompt_tokens
                self.usage.completion_tokens += completion_tokens
                return Completion(texts, prompt_tokens, completion_tokens, resp.model or self.model)
        self.usage.failures += 1
        raise BackendError(f"gave up after {self.max_retries + 1} attempts: {type(last).__name__}: {last}")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


class LocalBackend:
    """A Hugging Face causal LM generating in-process (one request at a time on a worker thread)."""

    def __init__(self, model_path: str, *, device: str = "auto", dtype: str = "auto", seed: int = 0) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(model_path):
            raise ConfigError(f"backend.model = {model_path!r}: the local backend needs a model folder")
        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.model_name = os.path.basename(os.path.normpath(model_path))
        self.seed = seed
        self.usage = Usage()
        self._lock = asyncio.Lock()

    def _prompt(self, messages: list[Message]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        body = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
        return body + "\n\nAssistant: "

    def _generate(self, messages: list[Message], n: int, temperature: float, top_p: float, max_tokens: int,
                  seed: int | None) -> Completion:
        torch = self.torch
        torch.manual_seed(self.seed if seed is None or seed < 0 else seed)
        enc = self.tokenizer(self._prompt(messages), return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=temperature > 0, temperature=temperature or None,
                                      top_p=top_p if temperature > 0 else None, max_new_tokens=max_tokens,
                                      num_return_sequences=n, pad_token_id=pad)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        completion_tokens = int((new != eos).sum()) if eos is not None else int(new.numel())
        return Completion(texts, int(enc["input_ids"].shape[1]) * n, completion_tokens, self.model_name)

    async def chat(self, messages: list[Message], *, n: int = 1, temperature: float = 0.7, top_p: float = 1.0,
                   max_tokens: int = 1024, seed: int | None = None) -> Completion:
        async with self._lock:
            result = await asyncio.to_thread(self._generate, messages, n, temperature, top_p, max_tokens, seed)
        self.usage.requests += 1
        self.usage.completions += n
        self.usage.prompt_tokens += result.prompt_tokens
        self.usage.completion_tokens += result.completion_tokens
        return result

    async def aclose(self) -> None:
        return None


def make_backend(cfg: dict[str, Any]) -> OpenAIBackend | LocalBackend:
    """The chat backend a checked config asks for (must be called inside a running event loop)."""
    b = cfg["backend"]
    if b["kind"] == "openai":
        return OpenAIBackend(b["base_urls"], b["model"], api_key=os.environ.get(b["api_key_env"]),
                             concurrency=b["concurrency"], max_retries=b["max_retries"], timeout_s=b["timeout_s"],
                             backoff_s=b["backoff_s"], max_backoff_s=b["max_backoff_s"], seed=cfg["run"]["seed"])
    if b["kind"] == "local":
        return LocalBackend(b["model"], device=b["device"], dtype=b["dtype"], seed=cfg["run"]["seed"])
    raise ConfigError(f"backend.kind = {b['kind']!r} is not a chat backend; allowed values: openai, local")
