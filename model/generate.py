"""Batched text generation with a KV cache for `mathforge.model.Transformer` (local evaluation).

Prefill runs the prompts as one packed stream (no padding: each prompt is a document, row d of the
cache), then each decode step feeds one token per row. Greedy (temperature 0) or sampling with
temperature and nucleus (top_p) from a seeded generator; a row stops at an EOS token, a stop string or
`max_new_tokens`. Prompts given as a padded tensor (left or right padding) are unpadded first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mathforge.errors import DataError
from mathforge.model.transformer import KVCache, Transformer


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab]: argmax when temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the smallest set of tokens whose probability reaches top_p."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _unpad(prompts: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    if prompts.dim() != 2:
        raise DataError(f"prompt tensor must be [batch, seq], got shape {tuple(prompts.shape)}")
    mask = torch.ones_like(prompts, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    return [row[m].tolist() for row, m in zip(prompts, mask)]


@torch.no_grad()
def generate_tokens(
    model: Transformer,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    *,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int = 0,
    should_stop: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (EOS not included), all prompts in one batch.

    `prompts`: lists of token ids, or a [B, S] tensor with `attention_mask` (left or right padding).
    `eos_token_id`: None uses the model config's. `should_stop(row, new_tokens)` is asked after every
    token (e.g. for stop strings); True finishes that row."""
    rows = _unpad(prompts, attention_mask) if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
    if not rows:
        return []
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise DataError(f"prompt(s) {empty[:10]} have no tokens; generation needs at least one")
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())

    device, dtype = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype
    lengths = [len(r) for r in rows]
    cache = KVCache(model.config, len(rows), max(lengths) + max_new_tokens, dtype=dtype, device=device)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=device)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    hidden = model(ids, cu_seqlens=cu_seqlens, max_seqlen=max(lengths), kv_cache=cache)
    last = hidden[cu_seqlens[1:].long() - 1]

    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for step in range(max_new_tokens):
        next_ids = sample_next(model.logits(last).float(), temperature, top_p, generator)
        for i, token in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            if token in eos:
                done[i] = True
                continue
            out[i].append(token)
            if should_stop is not None and should_stop(i, out[i]):
                done[i] = True
        if all(done) or step == max_new_tokens - 1:
            break
        last = model(next_ids, kv_cache=cache)  # finished rows keep decoding; their tokens are ignored
        cache.advance()
    return out


def _encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    encoded = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return list(getattr(encoded, "ids", encoded))  # transformers tokenizers return lists, `tokenizers` Encodings


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@torch.no_grad()
def generate(
    model: Transformer,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    add_special_tokens: bool = True,
) -> list[str]:
    """Completions of `prompts` (texts, in order), cut before the first stop string; EOS ends a completion.

    `tokenizer`: a transformers tokenizer (or a `tokenizers.Tokenizer`) with encode/decode. Prompts are
    batched longest first; batch b samples with seed + b, so results do not depend on the other batches."""
    options = {"temperature": temperature, "top_p": top_p, "stop": stop, "seed": seed, "batch_size": batch_size}
    finished = generate_finished(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, add_special_tokens=add_special_tokens, **options
    )
    return [text for text, _ in finished]


@torch.no_grad()
def generate_finished(
    model: Transformer,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    add_special_tokens: bool = True,
) -> list[tuple[str, str]]:
    """`generate`'s completions with why each ended, as an OpenAI server says it: "stop" (EOS or a stop
    string) or "length" (`max_new_tokens` ran out first: a partial reply)."""
    stop = [s for s in (stop or []) if s]
    eos: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None), model.config.eos_token_id):
        if isinstance(source, int):
            eos.add(source)
        elif source:
            eos.update(source)
    encoded = [_encode(tokenizer, p, add_special_tokens) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    tail = max((len(s) for s in stop), default=0) + 8  # tokens decoded to look for a stop string

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True)

    def stopped(_row: int, tokens: list[int]) -> bool:
        return bool(stop) and _cut_at_stop(decode(tokens[-tail:]), stop)[1]

    texts: list[tuple[str, str]] = [("", "stop")] * len(prompts)
    for b, start in enumerate(range(0, len(order), batch_size)):
        batch = order[start : start + batch_size]
        new = generate_tokens(
            model,
            [encoded[i] for i in batch],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=sorted(eos),
            seed=seed + b,
            should_stop=stopped,
        )
        for i, tokens in zip(batch, new):
            text, cut = _cut_at_stop(decode(tokens), stop)
            texts[i] = (text, "stop" if cut or len(tokens) < max_new_tokens else "length")  # shorter: EOS came
    return texts
