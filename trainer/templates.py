"""Training templates = the evaluation prompt files (the layouts of `mathforge.prompts`), so a model is asked
exactly as it was trained — by evaluation and by synthesis alike.

A template is either `chat` (the tokenizer's chat template) or a zero-shot raw prompt of the core
`mathforge.prompts` (shipped: `alpaca-cot` as MetaMath/Skywork-Math trained, `jiuzhang` with
## Question / ## Solution sections, `chatml`, `plain`; or a .toml path). The prompt renders the
question; the response is the solution with the prompt file's optional `response_prefix` and
`response_suffix` around it, and is what the loss is computed on.
"""

from __future__ import annotations

from typing import Any

from mathforge.errors import DataError
from mathforge.prompts import CHAT, check_layout, layout_names, layout_text, raw_layout


def template_names() -> list[str]:
    return layout_names()


def check_template(name: str) -> None:
    """Raises ConfigError naming the allowed templates if `name` cannot be used for training."""
    check_layout(name)


def render_prompt(question: str, template: str, tokenizer: Any = None, system: str | None = None) -> str:
    """The text a model sees before its answer (`mathforge.prompts.layout_text` for raw templates: the same
    text synthesis sends to a model trained with that template)."""
    if template == CHAT:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return render_chat(messages, tokenizer, add_generation_prompt=True)
    return layout_text(template, question, system)


def render_response(answer: str, template: str) -> str:
    """The trained-on text after the prompt (the end-of-sequence token is added by the tokenizing code)."""
    if template == CHAT:
        return answer
    prompt = raw_layout(template)
    return f"{prompt.response_prefix}{answer}{prompt.response_suffix}"


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
