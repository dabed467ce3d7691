"""Prompts: how a question is put to a model, shared by training (templates) and evaluation.

A prompt is a TOML file. The shipped ones live beside this module (`mathforge/prompts/*.toml`) and form
the `PROMPTS` registry; any other `.toml` path with the same keys works too. Keys (unknown ones are
refused, so a misspelt `respons_prefix` cannot silently change the training text):

- `template` (required, contains `{question}`), `system`, `description`;
- `[[shots]]` with `question` and `answer` (few-shot examples), `separator` between raw blocks;
- `chat`: render as chat messages (true) or one raw completion text (false, the default);
- `style`: the answer-extraction style evaluation tries first; `stop`: strings that end generation;
- `response_prefix`, `response_suffix`: what training puts around the solution.

    prompt = load_prompt("minerva")           # a shipped prompt by name, or load_prompt("my.toml")
    prompt.render("What is 1+1?")             # raw text with the four examples
    prompt.render("What is 1+1?", chat=True)  # messages: system, (user, assistant) per shot, user

A *layout* is how a model is asked, the same object for training and asking: `"chat"` (the tokenizer's
chat template; a server's chat endpoint) or a zero-shot raw prompt (`raw_layout`). `layout_text` is the
text before the answer under a raw layout: what the trainer renders (and masks) as a row's prompt, and
what synthesis sends to the model it trained (the completions endpoint, or the local model as raw text).
A model folder written by `mathforge train` records its layout in mathforge.json (`training_template`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mathforge.config import build, read_toml
from mathforge.errors import ConfigError, DataError
from mathforge.registry import Registry

__all__ = [
    "CHAT",
    "PROMPTS",
    "PROMPT_DIR",
    "Prompt",
    "Shot",
    "available",
    "default_prompt",
    "layout_names",
    "layout_text",
    "load_prompt",
    "raw_layout",
    "training_template",
]

PROMPT_DIR = Path(__file__).resolve().parent
CHAT = "chat"  # the layout "the tokenizer's chat template" (chat messages), beside the raw prompt files
Messages = list[dict[str, str]]

PROMPTS: Registry[Path] = Registry("prompt")  # shipped prompt name → its TOML file
for _path in sorted(PROMPT_DIR.glob("*.toml")):
    PROMPTS.add(_path.stem, _path)


@dataclass(frozen=True)
class Shot:
    """One worked example of a few-shot prompt."""

    question: str
    answer: str


@dataclass(frozen=True)
class Prompt:
    """One prompt file's keys; `name` is the file's stem (set by the loader, not a key of the file)."""

    template: str
    system: str = ""
    shots: list[Shot] = field(default_factory=list)
    chat: bool = False
    separator: str = "\n\n"
    style: str = "auto"
    stop: list[str] = field(default_factory=list)
    description: str = ""
    response_prefix: str = ""
    response_suffix: str = ""
    name: str = field(default="", init=False)

    def render(self, question: str, chat: bool | None = None) -> str | Messages:
        """The prompt for `question`: chat messages, or one text for raw completion."""
        if self.chat if chat is None else chat:
            messages: Messages = [{"role": "system", "content": self.system}] if self.system else []
            for shot in self.shots:
                messages += [
                    {"role": "user", "content": self.template.format(question=shot.question)},
                    {"role": "assistant", "content": shot.answer.strip()},
                ]
            return messages + [{"role": "user", "content": self.template.format(question=question)}]
        blocks = [self.system] if self.system else []
        blocks += [self.template.format(question=shot.question) + shot.answer for shot in self.shots]
        blocks.append(self.template.format(question=question))
        return self.separator.join(blocks)


def available() -> list[str]:
    """The shipped prompts' names."""
    return sorted(PROMPTS.names())


def prompt_path(name: str) -> Path:
    """The TOML file of a shipped prompt `name`, or `name` itself when it is a .toml path."""
    if name.endswith(".toml"):
        return Path(name)
    try:
        return PROMPTS.get(name)
    except ConfigError as error:
        raise ConfigError(f"{error} (or a path to a .toml file)") from None


def _load(path: Path) -> Prompt:
    raw = read_toml(path)
    template = raw.get("template")
    if not isinstance(template, str) or "{question}" not in template:
        raise ConfigError(f"{path}: key 'template' must exist and contain {{question}}")
    prompt = build(Prompt, raw, str(path))
    object.__setattr__(prompt, "name", path.stem)  # frozen: the name comes from the file, not its keys
    return prompt


def load_prompt(name: str) -> Prompt:
    """A shipped prompt by name, or a TOML file by path; ConfigError for unknown names, keys or values."""
    return _load(prompt_path(name))


def default_prompt(bench: str) -> str:
    """The prompt a benchmark uses when none is named: GSM8K 8-shot, MATH Minerva 4-shot."""
    return "gsm8k-8shot" if bench == "gsm8k" else "minerva"


def layout_names() -> list[str]:
    """What a training template or a synthesis layout may name: "chat" and the shipped prompts (or a .toml path)."""
    return [CHAT, *available()]


@cache
def raw_layout(name: str) -> Prompt:
    """The zero-shot raw prompt `name` (a shipped prompt or a .toml path) as a layout; ConfigError for a
    few-shot or chat prompt, which no model is trained on."""
    prompt = load_prompt(name)
    if prompt.shots or prompt.chat:
        raise ConfigError(
            f"template {name!r} is a few-shot or chat prompt; training needs a zero-shot raw one "
            f'(or "chat"); available: {", ".join(layout_names())}'
        )
    return prompt


def check_layout(name: str) -> None:
    """Raises ConfigError naming the allowed layouts if `name` is neither "chat" nor a zero-shot raw prompt."""
    if name != CHAT:
        raw_layout(name)


def layout_text(layout: str, question: str, system: str | None = None) -> str:
    """The text before the answer under the raw layout `layout`: one implementation for the trainer (a row's
    prompt, masked) and for synthesis (what is sent to a model trained with that layout)."""
    text = raw_layout(layout).render(question, chat=False)
    return f"{system}\n\n{text}" if system else text


def training_info(model: str | Path | None) -> tuple[dict[str, Any], Path] | None:
    """(its contents, the file) of the mathforge.json `mathforge train` writes beside a model; None without one."""
    meta = Path(model) / "mathforge.json" if model is not None else None
    if meta is None or not meta.is_file():
        return None
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{meta}: line {error.lineno}: invalid JSON ({error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{meta}: cannot be read ({error})") from None
    return (raw, meta) if isinstance(raw, dict) else ({}, meta)


def training_template(model: str | Path | None) -> tuple[str, Path] | None:
    """(template, the mathforge.json naming it) when `model` is a folder written by `mathforge train`, whose
    mathforge.json records {"template": "<prompt name or .toml path>"}; a relative .toml path is looked up in
    the model folder first. None when there is no such file or it names no template."""
    found = training_info(model)
    if found is None:
        return None
    raw, meta = found
    template = raw.get("template")
    if template is None:
        return None
    if not isinstance(template, str) or not template.strip():
        raise DataError(f'{meta}: "template" must be a prompt name or a .toml path, got {template!r}')
    if template.endswith(".toml") and not Path(template).is_absolute() and (meta.parent / template).is_file():
        template = str(meta.parent / template)
    return template, meta
