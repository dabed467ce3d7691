"""Generation backends behind one small interface: `generate(prompts, n=…, …) -> [[text] * n per prompt]`.

- `LocalBackend`: a checkpoint folder (or an in-memory model + tokenizer). Architectures our model
  covers (Llama/Qwen2/Mistral) run on `mathforge.trainer.model` with its KV-cache generation;
  anything else, or `engine="transformers"`, runs transformers' `generate`.
- `OpenAIBackend`: any OpenAI-compatible server (vLLM, SGLang, …) through the `openai` client, with
  bounded concurrency, retries with exponential backoff on 429/5xx/timeouts/connection errors, and a
  per-request timeout. Chat prompts use /chat/completions, raw texts /completions.

A prompt is a text (raw completion) or a list of chat messages.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from mathforge.errors import ConfigError, MathforgeError

PromptInput = str | list[dict[str, str]]


class BackendError(MathforgeError, RuntimeError):
    """Generation failed for a reason the user can act on (server down, retries exhausted)."""


class Backend(Protocol):
    def generate(
        self, prompts: Sequence[PromptInput], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 1024, stop: Sequence[str] = (), seed: int = 0,
    ) -> list[list[str]]: ...  # fmt: skip


def _cut(text: str, stop: Sequence[str]) -> str:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(hits)] if hits else text


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The tokenizer's chat template applied with a generation prompt; a plain role-tagged text without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


class LocalBackend:
    """Generation on this machine from a Hugging Face folder or an in-memory (model, tokenizer)."""

    def __init__(
        self, model: str | Path | Any, tokenizer: Any = None, *, engine: str = "auto", device: str | None = None,
        dtype: str | None = None, batch_size: int = 32,
    ) -> None:  # fmt: skip
        import torch

        if engine not in ("auto", "mathforge", "transformers"):
            raise ConfigError(f"unknown local engine {engine!r}; allowed: auto, mathforge, transformers")
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype or "")
        if isinstance(model, (str, Path)):
            from transformers import AutoTokenizer

            folder = Path(model)
            if not (folder / "config.json").is_file():
                raise ConfigError(f"{folder}: not a model folder (no config.json)")
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(folder))
            self.model, self.engine = self._load(folder, engine, torch_dtype)
        else:
            from mathforge.trainer.model import Transformer

            if tokenizer is None:
                raise ConfigError("LocalBackend(model=<module>) needs a tokenizer too")
            self.model, self.tokenizer = model, tokenizer
            self.engine = "mathforge" if isinstance(model, Transformer) else "transformers"
        self.model.eval()

    def _load(self, folder: Path, engine: str, dtype: Any):
        if engine in ("auto", "mathforge"):
            from mathforge.trainer.model import from_pretrained

            try:
                return from_pretrained(folder, dtype=dtype, device=self.device), "mathforge"
            except ConfigError:
                if engine == "mathforge":
                    raise
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or "auto").to(self.device)
        return model, "transformers"

    def generate(
        self, prompts: Sequence[PromptInput], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 1024, stop: Sequence[str] = (), seed: int = 0,
    ) -> list[list[str]]:  # fmt: skip
        texts = [p if isinstance(p, str) else render_chat(self.tokenizer, p) for p in prompts]
        expanded = [t for t in texts for _ in range(n)]
        if self.engine == "mathforge":
            from mathforge.trainer.generate import generate

            outputs = generate(
                self.model, self.tokenizer, expanded, max_new_tokens=max_new_tokens, temperature=temperature,
                top_p=top_p, stop=list(stop), seed=seed, batch_size=self.batch_size,
            )  # fmt: skip
        else:
            outputs = self._hf_generate(expanded, temperature, top_p, max_new_tokens, stop, seed)
        return [outputs[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _hf_generate(self, texts, temperature, top_p, max_new_tokens, stop, seed) -> list[str]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        out: list[str] = []
        for b, start in enumerate(range(0, len(texts), self.batch_size)):
            torch.manual_seed(seed + b)
            batch = tok(texts[start : start + self.batch_size], return_tensors="pt", padding=True).to(self.device)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p}
                if temperature > 0
                else {"do_sample": False}
            )
            with torch.no_grad():
                ids = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling
                )
            new = ids[:, batch["input_ids"].shape[1] :]
            out += [_cut(tok.decode(row, skip_special_tokens=True), stop) for row in new]
        return out


class OpenAIBackend:
    """An OpenAI-compatible server: `OpenAIBackend("http://localhost:8000/v1", "my-model")`."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str = "EMPTY", concurrency: int = 16, timeout: float = 600.0,
        max_retries: int = 6, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        import openai

        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.model, self.base_url = model, base_url
        self.concurrency, self.max_retries, self.backoff, self.sleep = concurrency, max_retries, backoff, sleep
        self.retries = 0  # how many retries this backend has made (reported in results)

    def _retryable(self, error: Exception) -> bool:
        import openai

        if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
            return True
        return isinstance(error, openai.APIStatusError) and error.status_code >= 500

    def _call(self, prompt: PromptInput, n: int, params: dict[str, Any]) -> list[str]:
        for attempt in range(self.max_retries + 1):
            try:
                if isinstance(prompt, str):
                    reply = self.client.completions.create(model=self.model, prompt=prompt, n=n, **params)
                    return [c.text or "" for c in sorted(reply.choices, key=lambda c: c.index)]
                reply = self.client.chat.completions.create(model=self.model, messages=prompt, n=n, **params)
                return [c.message.content or "" for c in sorted(reply.choices, key=lambda c: c.index)]
            except Exception as error:  # noqa: BLE001 - sorted into retryable and fatal below
                if not self._retryable(error):
                    raise BackendError(f"{self.base_url}: request failed: {error}") from error
                if attempt == self.max_retries:
                    raise BackendError(f"{self.base_url}: giving up after {attempt + 1} attempts: {error}") from error
                self.retries += 1
                self.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _one(self, prompt: PromptInput, n: int, params: dict[str, Any]) -> list[str]:
        outputs: list[str] = []
        while len(outputs) < n:  # servers may return fewer choices than asked for
            got = self._call(prompt, n - len(outputs), params)
            if not got:
                raise BackendError(f"{self.base_url}: the server returned no choices")
            outputs += got
        return outputs[:n]

    def generate(
        self, prompts: Sequence[PromptInput], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 1024, stop: Sequence[str] = (), seed: int = 0,
    ) -> list[list[str]]:  # fmt: skip
        params: dict[str, Any] = {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_new_tokens,
            "seed": seed,
        }
        if stop:
            params["stop"] = list(stop)[:4]  # the OpenAI API takes at most four stop strings
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, n, params), prompts))
