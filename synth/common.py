"""What the model-driven pipelines share: parsing replies, answer checks, self-consistency, building rows."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mathforge.backends import Completion
from mathforge.prompts import CHAT, layout_text, raw_layout
from mathforge.registry import Registry
from mathforge.synth import quality
from mathforge.synth.prompts import Prompts

if TYPE_CHECKING:
    from mathforge.synth.config import SamplingSettings, SynthConfig


class Pipeline(Protocol):
    """What `run.synthesize` drives: a deterministic list of work items, each turned into rows.

    `sync` pipelines implement `process_sync(item)`; the others `async process(item, ctx)`. `info` goes to
    the manifest."""

    name: str
    sync: bool
    info: dict[str, Any]

    def items(self) -> list[dict[str, Any]]: ...


# pipeline kind ([pipeline] kind) -> factory making the pipeline from a checked config; each pipeline module
# (symbolic.py, skywork.py, jiuzhang.py) registers its own
PIPELINES: Registry[Callable[[SynthConfig], Pipeline]] = Registry("pipeline kind")

_PROBLEM = re.compile(r"^\s*\**Problem\**\s*:\s*(.*?)\s*(?:^\s*\**Solution\**\s*:\s*(.*))?\Z", re.S | re.M)


class Reject(Exception):
    """An item that finished but produced nothing usable; the reason is journaled, counted by `kind`."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or message


@dataclass
class Context:
    """What a pipeline needs to process one item: backend, prompts, sampling, the answer checks. `layout`: how
    an instruction is sent (see synth/prompts.py `resolve_layout`): "chat", or a raw layout of mathforge.prompts."""

    backend: Any
    prompts: Prompts
    sampling: SamplingSettings
    marker: str = "The answer is:"
    require_answer: bool = True
    consistency: int = 0
    min_agree: float = 0.5
    sandbox: Any = None  # a mathforge.evaluate.sandbox.Sandbox: tool solutions are executed when set
    tool_timeout: float = 10.0
    layout: str = CHAT

    async def ask(
        self, template: str, *, n: int = 1, usage: dict[str, int] | None = None, seed_offset: int = 0, **values: str
    ) -> Completion:
        """n replies to the prompt template `template` rendered with `values` (the instruction), sent in
        `layout`; token usage is added to `usage`."""
        s = self.sampling
        sampling = {
            "n": n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed + seed_offset if s.seed >= 0 else None,
        }
        if self.layout == CHAT:
            out = await self.backend.chat(self.prompts.messages(template, **values), **sampling)
        else:  # the trainer's prompt text for a row whose prompt is the instruction, as a raw completion
            layout = raw_layout(self.layout)
            stop = [*layout.stop, *([layout.response_suffix] if layout.response_suffix.strip() else [])]
            text = layout_text(self.layout, self.prompts.instruction(template, **values), self.prompts.system or None)
            out = await self.backend.complete(text, stop=stop, **sampling)
        if usage is not None:
            usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + out.prompt_tokens
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + out.completion_tokens
            usage["calls"] = usage.get("calls", 0) + 1
        return _uncut(out, usage, s.max_tokens)

    def sampling_meta(self, n: int) -> dict[str, Any]:
        """The sampling settings as recorded in a row's meta, with the number of samples drawn."""
        return {**dataclasses.asdict(self.sampling), "n": n}


def _uncut(out: Completion, usage: dict[str, int] | None, max_tokens: int) -> Completion:
    """`out` without the texts cut at max_tokens (finish_reason "length": a partial reply is never kept), their
    number added to usage["truncated"]; Reject ("truncated") when every text was cut."""
    texts, cut = out.kept()
    if not cut:
        return out
    if usage is not None:
        usage["truncated"] = usage.get("truncated", 0) + cut
    if not texts:
        raise Reject(f"the reply was cut at max_tokens = {max_tokens} (finish_reason 'length')", "truncated")
    return dataclasses.replace(out, texts=texts, finish_reasons=[r for r in out.finish_reasons if r != "length"])


def split_reply(text: str) -> tuple[str | None, str]:
    """(problem, solution) from a reply laid out as 'Problem: … Solution: …'; (None, text) if it has no Problem."""
    m = _PROBLEM.match(text)
    if not m:
        return None, text.strip()
    problem, solution = m.group(1).strip(), (m.group(2) or "").strip()
    return (problem or None), solution


def finish(solution: str, marker: str) -> str:
    """The solution cut after its answer line, so every response ends with the marker line."""
    at = solution.rfind(marker)
    if at < 0:
        return solution.strip()
    end = solution.find("\n", at)
    return solution[: len(solution) if end < 0 else end].strip()


def check_answer(solution: str, ctx: Context, gold: str | None) -> str:
    """The solution's answer; Reject if it has none (when required) or disagrees with a known gold answer."""
    answer = quality.marked_answer(solution, ctx.marker)
    if answer is None:
        if ctx.require_answer:
            raise Reject(f"no answer marker {ctx.marker!r} in the response", "no answer marker")
        return ""
    if gold is not None:
        from mathforge.evaluate import grade  # lazy: owned by the evaluation package

        if not grade(answer, gold):
            raise Reject(f"answer {answer!r} disagrees with the known answer {gold!r}", "wrong answer")
    return answer


def consistent(texts: list[str], ctx: Context) -> tuple[str, dict[str, Any]]:
    """With k > 1 samples: the first sample agreeing with the majority answer (Reject if none reaches min_agree)."""
    if len(texts) == 1:
        return texts[0], {}
    agree, info = agreeing(texts, ctx)
    return agree[0], info


def agreeing(texts: list[str], ctx: Context) -> tuple[list[str], dict[str, Any]]:
    """Self-consistency over all `texts`: those whose answer agrees with the majority answer, in order, and
    {"votes", "samples", "agreement"}; Reject when the majority's share is below `ctx.min_agree`."""
    keep, top, info = quality.self_consistency(texts, min_agree=ctx.min_agree, marker=ctx.marker)
    if not keep:
        raise Reject(
            f"self-consistency: {info['votes']}/{info['samples']} samples agree (need {ctx.min_agree:.0%})",
            "self-consistency",
        )
    votes, samples = info["votes"], info["samples"]
    return [texts[i] for i in keep], {"votes": votes, "samples": samples, "agreement": round(votes / samples, 4)}


def make_row(prompt: str, response: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt.strip(), "response": response.strip(), "meta": meta}


_CODE = re.compile(r"```python\n(.*?)```", re.S)
_OUTPUT_FENCE = re.compile(r"```(?:output)?\n?(.*?)```", re.S)


def _words(text: str) -> str:
    return " ".join(text.split())


async def check_tool_output(solution: str, answer: str, ctx: Context) -> str:
    """Runs the solution's ```python blocks (in order, as one program) in `ctx.sandbox`; Reject when the
    program fails, prints nothing, or its last printed line is neither in the text stated after the code
    nor equal (graded) to the marked answer. Returns what the program printed."""
    blocks = _CODE.findall(solution)
    if not blocks:
        raise Reject("tool variant: the solution has no ```python block", "no python block")
    result = await asyncio.to_thread(ctx.sandbox.run, "\n".join(blocks), timeout=ctx.tool_timeout)
    printed = result.output.strip()
    if result.returncode != 0 or result.limit is not None:
        last = result.text().splitlines()[-1] if result.text() else f"exit code {result.returncode}"
        raise Reject(f"tool variant: the program fails: {last[:200]}", "tool code fails")
    if not printed:
        raise Reject("tool variant: the program prints nothing", "tool code prints nothing")
    last_line = printed.splitlines()[-1].strip()
    after = solution[solution.rfind("```") + 3 :]
    stated = after[: after.find(ctx.marker)] if ctx.marker in after else after
    stated = _OUTPUT_FENCE.sub(lambda m: m.group(1), stated)
    if _words(last_line) in _words(stated):
        return printed
    from mathforge.evaluate import grade  # lazy: owned by the evaluation package

    if answer and grade(last_line, answer):
        return printed
    raise Reject(
        f"tool variant: the program prints {last_line[:80]!r} but the solution states "
        f"{_words(stated)[:80]!r} and answers {answer[:40]!r}",
        "tool output mismatch",
    )
