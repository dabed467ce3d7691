"""Tool-integrated generation (ToRA / JiuZhang style): the model writes ```python blocks, we run
them in the sandbox and feed the output back as an ```output block, for up to `rounds` rounds."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from mathforge.backends import Backend, PromptInput
from mathforge.evaluate.sandbox import Sandbox, default_sandbox

TOOL_INSTRUCTION = (
    "You may write Python code in a ```python block to compute things; after each block you will see its "
    "printed output in an ```output block. Put the final answer in \\boxed{}."
)
_CODE_RE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def pending_code(text: str) -> str | None:
    """The code of the last ```python block when the text ends right after it (the model awaits output)."""
    blocks = list(_CODE_RE.finditer(text))
    if not blocks or text[blocks[-1].end() :].strip():
        return None
    return blocks[-1].group(1)


def _extend(prompt: PromptInput, transcript: list[tuple[str, str]]) -> PromptInput:
    if isinstance(prompt, str):
        return prompt + "".join(
            text + ("```output\n" + out + "\n```\n" if out is not None else "") for text, out in transcript
        )
    messages = list(prompt)
    for text, out in transcript:
        messages.append({"role": "assistant", "content": text})
        if out is not None:
            messages.append({"role": "user", "content": "```output\n" + out + "\n```"})
    return messages


def generate_with_tools(
    backend: Backend,
    prompts: Sequence[PromptInput],
    *,
    rounds: int = 4,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    stop: Sequence[str] = (),
    seed: int = 0,
    timeout: float = 10.0,
    sandbox: Sandbox | None = None,
    workers: int | None = None,
) -> list[str]:
    """One tool-integrated transcript per prompt: model text with ```output blocks spliced in.

    Each round's snippets run in `sandbox` (the process's default one if None), `workers` at a time."""
    sandbox = sandbox or default_sandbox()
    transcripts: list[list[tuple[str, str | None]]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for round_ in range(rounds + 1):
            if not active:
                break
            batch = [_extend(prompts[i], [(t, o) for t, o in transcripts[i]]) for i in active]
            outputs = backend.generate(
                batch,
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                stop=[*stop, "```output"],
                seed=seed + round_,
            )
            codes = [pending_code(text) if round_ < rounds else None for (text,) in outputs]
            runs = pool.map(lambda code: None if code is None else sandbox.run(code, timeout=timeout), codes)
            still = []
            for i, (text,), result in zip(active, outputs, runs):
                if result is None:
                    transcripts[i].append((text, None))
                    continue
                transcripts[i].append((text if text.endswith("\n") else text + "\n", result.text()))
                still.append(i)
            active = still
    return [
        "".join(t + ("```output\n" + o + "\n```\n" if o is not None else "") for t, o in transcript)
        for transcript in transcripts
    ]
