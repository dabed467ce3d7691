"""Chat backends behind one interface: `await backend.chat(messages, n=..., **sampling) -> Completion`.

- `OpenAIBackend`: any OpenAI-compatible endpoint (vLLM, SGLang, OpenAI): `mathforge.openai_client`'s
  client (bounded concurrency, several base URLs load-balanced, retries with backoff, usage counted).
- `LocalBackend`: a Hugging Face causal LM (a checkpoint folder, e.g. one `mathforge train` wrote)
  generating in-process, one batch at a time on a worker thread.

The `symbolic` backend needs no chat interface: it makes finished rows itself (see `symbolic.py`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mathforge.errors import ConfigError
from mathforge.openai_client import BackendError, Completion, Usage
from mathforge.openai_client import OpenAIClient as OpenAIBackend

__all__ = ["BackendError", "Completion", "LocalBackend", "OpenAIBackend", "Usage", "make_backend"]

Message = dict[str, str]


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
        sample = temperature > 0
        with torch.no_grad():  # greedy decoding gives one continuation: generate it once, repeat it n times
            out = self.model.generate(**enc, do_sample=sample, temperature=temperature or None,
                                      top_p=top_p if sample else None, max_new_tokens=max_tokens,
                                      num_return_sequences=n if sample else 1, pad_token_id=pad)
        new = out[:, enc["input_ids"].shape[1]:]
        if not sample:
            new = new.expand(n, -1)
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
