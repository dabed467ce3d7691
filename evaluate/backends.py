"""Generation backends behind one small interface: `generate(prompts, n=…, …) -> [[text] * n per prompt]`.

- `LocalBackend`: a checkpoint folder (or an in-memory model + tokenizer). Architectures our model
  covers (Llama/Qwen2/Mistral) run on `mathforge.trainer.model` with its KV-cache generation;
  anything else, or `engine="transformers"`, runs transformers' `generate`.
- `OpenAIBackend`: any OpenAI-compatible server (vLLM, SGLang, …) through `mathforge.openai_client`:
  bounded concurrency, retries with exponential backoff on 429/5xx/timeouts/connection errors and
  malformed replies, a per-request timeout. Chat prompts use /chat/completions, raw texts /completions.

A prompt is a text (raw completion) or a list of chat messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mathforge.errors import ConfigError
from mathforge.openai_client import OpenAIClient

PromptInput = str | list[dict[str, str]]


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
            from mathforge.model import Transformer

            if tokenizer is None:
                raise ConfigError("LocalBackend(model=<module>) needs a tokenizer too")
            self.model, self.tokenizer = model, tokenizer
            self.engine = "mathforge" if isinstance(model, Transformer) else "transformers"
        self.model.eval()

    def _load(self, folder: Path, engine: str, dtype: Any):
        if engine in ("auto", "mathforge"):
            from mathforge.model import from_pretrained

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
            from mathforge.model import generate

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
    """An OpenAI-compatible server: `OpenAIBackend("http://localhost:8000/v1", "my-model")`, through
    `mathforge.openai_client` (the same client synthesis uses), driven synchronously."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str = "EMPTY", concurrency: int = 16, timeout: float = 600.0,
        max_retries: int = 6, backoff: float = 1.0,
    ) -> None:  # fmt: skip
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.model, self.base_url = model, base_url
        self.options = {"api_key": api_key, "concurrency": concurrency, "timeout_s": timeout,
                        "max_retries": max_retries, "backoff_s": backoff}  # fmt: skip
        self.retries = 0  # how many retries this backend has made (reported in results)

    def generate(
        self, prompts: Sequence[PromptInput], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_new_tokens: int = 1024, stop: Sequence[str] = (), seed: int = 0,
    ) -> list[list[str]]:  # fmt: skip
        return asyncio.run(self._generate(prompts, n, temperature, top_p, max_new_tokens, list(stop), seed))

    async def _generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seed) -> list[list[str]]:
        client = OpenAIClient(self.base_url, self.model, **self.options)
        sampling = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed,
                    "stop": stop}  # fmt: skip
        try:
            replies = await asyncio.gather(*(
                client.complete(p, **sampling) if isinstance(p, str) else client.chat(p, **sampling) for p in prompts
            ))  # fmt: skip
        finally:
            self.retries += sum(client.usage.retries.values())
            await client.aclose()
        return [reply.texts for reply in replies]
