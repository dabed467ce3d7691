"""Prompt templates shared by training and evaluation, so a model is asked exactly as it was trained.

Each template turns a question into the prompt text and a solution into the response text; the
response is what the loss is computed on. `chat` uses the tokenizer's own chat template.

- ``alpaca-cot``: the Alpaca instruction format with "Let's think step by step." that MetaMath and
  Skywork-Math trained with;
- ``jiuzhang``: ``## Question\\n…\\n\\n## Solution\\n…`` as JiuZhang3.0;
- ``chatml``: ``<|im_start|>`` / ``<|im_end|>`` turns (Qwen-style) with a system message;
- ``chat``: the tokenizer's chat template (`apply_chat_template`);
- ``plain``: question, newline, answer.
"""

from __future__ import annotations

from typing import Any

from mathforge.errors import DataError

ALPACA_COT_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step."
)
CHATML_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATE_NAMES = ("alpaca-cot", "jiuzhang", "chatml", "chat", "plain")


def render_prompt(question: str, template: str, tokenizer: Any = None, system: str | None = None) -> str:
    """The text a model sees before its answer."""
    if template == "alpaca-cot":
        return ALPACA_COT_PROMPT.format(question=question)
    if template == "jiuzhang":
        return f"## Question\n{question}\n\n## Solution\n"
    if template == "chatml":
        return (
            f"<|im_start|>system\n{system or CHATML_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        )
    if template == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return render_chat(messages, tokenizer, add_generation_prompt=True)
    if template == "plain":
        return f"{question}\n"
    raise DataError(f"unknown template {template!r}; allowed: {', '.join(TEMPLATE_NAMES)}")


def render_response(answer: str, template: str) -> str:
    """The trained-on text after the prompt (the end-of-sequence token is added by the tokenizing code)."""
    if template == "alpaca-cot":
        return f" {answer}"
    if template == "chatml":
        return f"{answer}<|im_end|>"
    return answer


def render_chat(messages: list[dict[str, str]], tokenizer: Any, add_generation_prompt: bool) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError('template "chat" needs a tokenizer with a chat_template; use "chatml" or another template')
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def split_messages(messages: Any, where: str) -> tuple[str | None, str, str]:
    """A single-turn conversation [system?, user, assistant] → (system, question, answer)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    roles = [m.get("role") for m in messages]
    system = None
    if roles and roles[0] == "system":
        system = messages[0].get("content")
        messages, roles = messages[1:], roles[1:]
    if roles != ["user", "assistant"] or not all(isinstance(m.get("content"), str) for m in messages):
        raise DataError(
            f"{where}: 'messages' must be [system?, user, assistant] with string contents for a named template, "
            f'got roles {roles}; use template "chat" for multi-turn conversations'
        )
    return system, messages[0]["content"], messages[1]["content"]
