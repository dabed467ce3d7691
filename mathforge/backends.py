"""Chat/generation backends shared by synthesis and evaluation: one local, one OpenAI-compatible.

Both backends offer the same three calls:

- ``await backend.chat(messages, n=…, temperature=…, top_p=…, max_tokens=…, seed=…, stop=…) -> Completion``
  and ``await backend.complete(text, …) -> Completion`` (a raw prompt text, sent as is: the completions
  endpoint, or the local model's tokens of exactly that text). What synthesis uses: many concurrent requests,
  token usage counted in ``backend.usage``; it chooses between them by its layout (`mathforge.prompts`);
- ``backend.generate(prompts, n=…, temperature=…, top_p=…, max_new_tokens=…, stop=…, seed=…)``
  ``-> [[text] * n per prompt]`` (what evaluation uses: a batch of raw texts or chat message lists).

Kinds (``BACKENDS``, what ``backend.kind`` may name in a config):

- ``openai``: any OpenAI-compatible endpoint (vLLM, SGLang, OpenAI) through `mathforge.openai_client`
  (bounded concurrency, several base URLs load-balanced, retries with backoff on 429/5xx/timeouts/
  connection errors/malformed replies, Retry-After honoured, an unreachable URL benched with backoff,
  replies cut at max_tokens marked by their finish reason; usage counted). Chat prompts use /chat/completions, raw texts
  /completions.
- ``local``: a Hugging Face checkpoint folder (or an in-memory model + tokenizer) generating in-process.
  Architectures our model covers (Llama/Qwen2/Mistral) run on `mathforge.model` with its
  KV-cache generation; anything else, or ``engine="transformers"``, runs transformers' ``generate``.
  Chat messages are rendered with the tokenizer's chat template; a tokenizer without one gets the
  fallback layout of `render_chat` ("User: …\\n\\nAssistant: "), the same for synthesis and evaluation.
  A completion that ran out of ``max_new_tokens`` before EOS or a stop string has finish reason "length"
  (``generate_finished``, ``Completion.finish_reasons``; counted in ``usage.truncated``), as from a server.
  A folder written by `mathforge train` records its training layout in mathforge.json: ``backend.template``
  (None otherwise), which synthesis checks its layout against.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mathforge.errors import ConfigError, DataError
from mathforge.openai_client import BackendError, Completion, OpenAIClient, Usage, unreachable
from mathforge.registry import Registry

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "Completion",
    "LocalBackend",
    "Message",
    "OpenAIBackend",
    "PromptInput",
    "Usage",
    "make_backend",
    "render_chat",
]

Message = dict[str, str]
PromptInput = str | list[Message]  # a raw completion text or a list of chat messages


class Backend(Protocol):
    """What synthesis (``chat``) and evaluation (``generate``) call on a backend."""

    usage: Usage

    async def chat(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion: ...

    def generate(
        self,
        prompts: Sequence[PromptInput],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[str]]: ...

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...


def render_chat(tokenizer: Any, messages: list[Message]) -> str:
    """The tokenizer's chat template applied with a generation prompt. Without a template: each message
    as "Role: content" joined by blank lines, then "\\n\\nAssistant: " (one layout for synth and eval)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return body + "\n\nAssistant: "


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken", "vocab.txt")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _require_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise DataError(
            f"{folder}: no tokenizer ({', '.join(_TOKENIZER_FILES)}); save the tokenizer into the model folder "
            "(tokenizer.save_pretrained) or copy the base model's tokenizer files there"
        )


def load_tokenizer(folder: Path, cause: Exception | None = None) -> Any:
    """The tokenizer saved in a model folder; a folder without one (or with a broken one) is a DataError
    naming it (transformers alone would suggest installing sentencepiece). `cause`: why our model could not
    read the folder's config.json, the better message when transformers cannot either."""
    from transformers import AutoTokenizer

    _require_tokenizer_files(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:  # tokenizers raises plain Exception for a corrupt tokenizer.json
        if cause is not None:  # config.json is what neither could read: say what is wrong in it
            raise DataError(str(cause)) from None
        raise DataError(f"{folder}: cannot load the tokenizer ({type(error).__name__}: {_first_line(error)})") from None


def _cut(text: str, stop: Sequence[str]) -> str:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(hits)] if hits else text


def _eos_ids(source: Any) -> set[int]:
    """The EOS id(s) a tokenizer or generation config names (an int, a list or None)."""
    ids = getattr(source, "eos_token_id", None)
    return {ids} if isinstance(ids, int) else set(ids or ())


def _count_tokens(tokenizer: Any, text: str, add_special_tokens: bool) -> int:
    encoded = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return len(getattr(encoded, "ids", encoded))


# ---------------------------------------------------------------- local


class LocalBackend:
    """Generation on this machine from a Hugging Face folder or an in-memory (model, tokenizer).

    ``device`` None/"auto" picks CUDA when available; ``dtype`` None/"auto" keeps the checkpoint's.
    ``seed`` is used by ``chat``/``complete`` when a request brings none. Requests run one at a time (a lock).
    ``template``: the layout the folder's model was trained with (its mathforge.json), else None."""

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any = None,
        *,
        engine: str = "auto",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        import torch

        if engine not in ("auto", "mathforge", "transformers"):
            raise ConfigError(f"unknown local engine {engine!r}; allowed: auto, mathforge, transformers")
        self.batch_size, self.seed = batch_size, seed
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        torch_dtype = dtypes.get(dtype or "auto")
        self.template: str | None = None
        if isinstance(model, (str, Path)):
            from mathforge.prompts import training_template

            self.model_name = os.path.basename(os.path.normpath(str(model)))
            trained = training_template(model) if Path(model).is_dir() else None
            self.template = trained[0] if trained else None
            self.tokenizer, self.model, self.engine = self._load(Path(model), tokenizer, engine, torch_dtype)
        else:
            from mathforge.model import Transformer

            if tokenizer is None:
                raise ConfigError("LocalBackend(model=<module>) needs a tokenizer too")
            self.model, self.tokenizer, self.model_name = model, tokenizer, type(model).__name__
            self.engine = "mathforge" if isinstance(model, Transformer) else "transformers"
        self.model.eval()
        self.usage = Usage()
        self._lock = threading.Lock()

    def _load(self, folder: Path, tokenizer: Any, engine: str, dtype: Any) -> tuple[Any, Any, str]:
        """(tokenizer, model, engine) of a Hugging Face folder. A folder that cannot be read (no config.json,
        corrupt JSON or weights, no tokenizer) is a DataError naming the file, never a traceback."""
        if not folder.is_dir():
            raise DataError(f"{folder}: no such model folder")
        if not (folder / "config.json").is_file():
            raise DataError(f"{folder}: not a model folder (no config.json)")
        from mathforge.model.hf import read_json

        if not isinstance(read_json(folder / "config.json"), dict):
            raise DataError(f"{folder / 'config.json'}: not a JSON object; is this a model folder?")
        if tokenizer is None:
            _require_tokenizer_files(folder)
        model, ours = None, None
        if engine in ("auto", "mathforge"):
            from mathforge.model import from_pretrained

            try:
                model = from_pretrained(folder, dtype=dtype, device=self.device)
            except ConfigError as error:  # an architecture or feature our model lacks: transformers may have it
                if engine == "mathforge":
                    raise
                ours = error
        tokenizer = tokenizer or load_tokenizer(folder, ours)
        if model is not None:
            return tokenizer, model, "mathforge"
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or "auto")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            reason = ours if ours is not None else f"{type(error).__name__}: {_first_line(error)}"
            raise DataError(f"{folder}: cannot load the model ({reason})") from None
        return tokenizer, model.to(self.device), "transformers"

    def generate(
        self,
        prompts: Sequence[PromptInput],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[str]]:
        """n completions per prompt; greedy decoding (temperature 0) generates once and repeats it n times."""
        finished = self.generate_finished(
            prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed
        )
        return [[text for text, _ in outs] for outs in finished]

    def generate_finished(
        self,
        prompts: Sequence[PromptInput],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[tuple[str, str]]]:
        """`generate` with each completion's finish reason: (text, "stop" | "length"), "length" when
        max_new_tokens ran out before EOS or a stop string (counted in ``usage.truncated``)."""
        texts = [p if isinstance(p, str) else render_chat(self.tokenizer, p) for p in prompts]
        copies = n if temperature > 0 else 1
        expanded = [t for t in texts for _ in range(copies)]
        with self._lock:
            outputs = self._run(expanded, temperature, top_p, max_new_tokens, list(stop), seed)
        grouped = [outputs[i * copies : (i + 1) * copies] * (n // copies) for i in range(len(texts))]
        self._account(texts, grouped)
        return grouped

    async def chat(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """n replies to `messages` (rendered by `render_chat`), generated on a worker thread; `seed` None or < 0
        uses the backend's."""
        return await self._ask(messages, n, temperature, top_p, max_tokens, seed, stop)

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """n continuations of the raw text `prompt` (no chat rendering), generated on a worker thread."""
        return await self._ask(prompt, n, temperature, top_p, max_tokens, seed, stop)

    async def _ask(self, prompt: PromptInput, n, temperature, top_p, max_tokens, seed, stop) -> Completion:
        before = (self.usage.prompt_tokens, self.usage.completion_tokens)
        seed = self.seed if seed is None or seed < 0 else seed
        finished = await asyncio.to_thread(
            self.generate_finished,
            [prompt],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_tokens,
            stop=list(stop or ()),
            seed=seed,
        )
        return Completion(
            [text for text, _ in finished[0]],
            self.usage.prompt_tokens - before[0],
            self.usage.completion_tokens - before[1],
            self.model_name,
            [why for _, why in finished[0]],
        )

    def _account(self, texts: list[str], outputs: list[list[tuple[str, str]]]) -> None:
        tok = self.tokenizer
        self.usage.requests += len(texts)
        for text, outs in zip(texts, outputs):
            self.usage.completions += len(outs)
            self.usage.prompt_tokens += len(outs) * _count_tokens(tok, text, True)
            self.usage.completion_tokens += sum(_count_tokens(tok, o, False) for o, _ in outs)
            self.usage.truncated += sum(why == "length" for _, why in outs)

    def _run(
        self, texts: list[str], temperature: float, top_p: float, max_new_tokens: int, stop: list[str], seed: int
    ) -> list[tuple[str, str]]:
        if self.engine == "mathforge":
            from mathforge.model.generate import generate_finished

            return generate_finished(
                self.model,
                self.tokenizer,
                texts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
                batch_size=self.batch_size,
            )
        return self._hf_generate(texts, temperature, top_p, max_new_tokens, stop, seed)

    def _hf_generate(self, texts, temperature, top_p, max_new_tokens, stop, seed) -> list[tuple[str, str]]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        )
        out: list[tuple[str, str]] = []
        ends = {tok.pad_token_id, *_eos_ids(tok), *_eos_ids(getattr(self.model, "generation_config", None))}
        for b, start in enumerate(range(0, len(texts), self.batch_size)):
            torch.manual_seed(seed + b)
            batch = tok(texts[start : start + self.batch_size], return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                ids = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling
                )
            new = ids[:, batch["input_ids"].shape[1] :]
            for row in new:
                text = tok.decode(row, skip_special_tokens=True)
                cut = _cut(text, stop)
                ended = cut != text or len(row) < max_new_tokens or any(t in ends for t in row.tolist())
                out.append((cut, "stop" if ended else "length"))  # finished rows are padded (pad or EOS ids)
        return out

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------- OpenAI-compatible


class OpenAIBackend:
    """An OpenAI-compatible server (or several, load-balanced): ``OpenAIBackend("http://localhost:8000/v1", "m")``.

    The `OpenAIClient` doing the requests is made inside the running event loop on first use (one per
    loop, so ``generate`` may be called again and again); usage, retries and per-URL counts accumulate
    over all of them in ``usage`` and ``per_url``."""

    def __init__(
        self,
        base_urls: list[str] | str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 64,
        max_retries: int = 6,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        bench_s: float = 1.0,
        max_bench_s: float = 60.0,
        seed: int = 0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.base_urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not self.base_urls:
            raise ConfigError("backend.base_urls needs at least one URL")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.options = {
            "api_key": api_key,
            "concurrency": concurrency,
            "max_retries": max_retries,
            "timeout_s": timeout_s,
            "backoff_s": backoff_s,
            "max_backoff_s": max_backoff_s,
            "max_retry_after_s": max_retry_after_s,
            "bench_s": bench_s,
            "max_bench_s": max_bench_s,
            "seed": seed,
            "sleep": sleep,
        }
        self.usage = Usage()
        self.per_url: Counter = Counter()
        self._client: OpenAIClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self, timeout_s: float = 5.0) -> dict[str, str]:
        """One quick request to each base URL (called before a long run): a BackendError in seconds when no
        server answers at any ("cannot reach <url>: connection refused", one per URL); else {url: why} of
        those that did not answer (the client benches them until they do), {} when all did."""
        down = unreachable(self.base_urls, api_key=self.options["api_key"], timeout_s=timeout_s)
        if len(down) == len(self.base_urls):
            raise BackendError("; ".join(down.values()))
        return down

    @property
    def retries(self) -> int:
        """How many requests were retried so far (all causes)."""
        return sum(self.usage.retries.values())

    def _here(self) -> OpenAIClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = OpenAIClient(
                self.base_urls, self.model, usage=self.usage, per_url=self.per_url, **self.options
            )
            self._loop = loop
        return self._client

    async def chat(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """n chat completions of `messages`."""
        stop = list(stop) if stop else None
        return await self._here().chat(
            messages, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop
        )

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """n raw text completions of `prompt` (the /completions endpoint)."""
        stop = list(stop) if stop else None
        return await self._here().complete(
            prompt, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop
        )

    def generate(
        self,
        prompts: Sequence[PromptInput],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[str]]:
        """n completions per prompt, all requests concurrent (up to `concurrency`); blocks until done."""
        sampling = {
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_new_tokens,
            "seed": seed,
            "stop": list(stop),
        }

        async def run() -> list[list[str]]:
            try:
                replies = await asyncio.gather(
                    *(self.complete(p, **sampling) if isinstance(p, str) else self.chat(p, **sampling) for p in prompts)
                )
            finally:
                await self.aclose()
            return [reply.texts for reply in replies]

        return asyncio.run(run())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = self._loop = None


# ---------------------------------------------------------------- kinds


def _openai_from(options: Mapping[str, Any], seed: int) -> OpenAIBackend:
    api_key = options.get("api_key") or os.environ.get(options.get("api_key_env") or "", None)
    keys = ("concurrency", "max_retries", "timeout_s", "backoff_s", "max_backoff_s", "max_retry_after_s", "bench_s")
    keys += ("max_bench_s",)
    return OpenAIBackend(
        options["base_urls"],
        options["model"],
        api_key=api_key,
        seed=seed,
        **{k: options[k] for k in keys if k in options},
    )


def _local_from(options: Mapping[str, Any], seed: int) -> LocalBackend:
    keys = ("engine", "device", "dtype", "batch_size")
    return LocalBackend(options["model"], seed=seed, **{k: options[k] for k in keys if k in options})


BACKENDS: Registry[Callable[[Mapping[str, Any], int], Backend]] = Registry("chat backend")
BACKENDS.add("openai", _openai_from)
BACKENDS.add("local", _local_from)


def make_backend(options: Mapping[str, Any], *, seed: int = 0) -> Backend:
    """The backend a config section asks for: ``options["kind"]`` names a `BACKENDS` entry, the other keys
    are its options (openai: base_urls, model, api_key or api_key_env, concurrency, max_retries, timeout_s,
    backoff_s, max_backoff_s, max_retry_after_s, bench_s, max_bench_s; local: model, engine, device, dtype, batch_size). Unknown keys are ignored
    (a config section may hold both kinds' options); an unknown kind is a ConfigError listing the kinds."""
    return BACKENDS.get(options.get("kind"), "backend.kind")(options, seed)
