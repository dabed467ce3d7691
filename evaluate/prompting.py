"""Prompts by name, stored as TOML files in `evaluate/prompts/` (or any TOML path with the same keys).

Keys: `system`, `template` (with `{question}`), optional `[[shots]]` (question, answer), `chat`
(default rendering: chat messages or one raw completion text), `separator` between raw blocks,
`style` (answer extraction), `stop` strings, `description`.

    prompt = load_prompt("minerva")           # from mathforge.evaluate.prompting
    prompt.render("What is 1+1?")             # raw text with the four examples
    prompt.render("What is 1+1?", chat=True)  # messages: system, (user, assistant) per shot, user
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Prompt:
    name: str
    template: str
    system: str = ""
    shots: tuple[tuple[str, str], ...] = ()
    chat: bool = False
    separator: str = "\n\n"
    style: str = "auto"
    stop: tuple[str, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self, question: str, chat: bool | None = None) -> str | Messages:
        """The prompt for `question`: chat messages, or one text for raw completion."""
        if self.chat if chat is None else chat:
            messages: Messages = [{"role": "system", "content": self.system}] if self.system else []
            for q, a in self.shots:
                messages += [{"role": "user", "content": self.template.format(question=q)},
                             {"role": "assistant", "content": a.strip()}]  # fmt: skip
            return messages + [{"role": "user", "content": self.template.format(question=question)}]
        blocks = [self.system] if self.system else []
        blocks += [self.template.format(question=q) + a for q, a in self.shots]
        blocks.append(self.template.format(question=question))
        return self.separator.join(blocks)


def available() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.toml"))


def load_prompt(name: str) -> Prompt:
    """A built-in prompt by name, or a TOML file by path."""
    path = Path(name) if name.endswith(".toml") else PROMPT_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown prompt {name!r}; built-in prompts: {', '.join(available())} (or a .toml path)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from None
    if "template" not in raw or "{question}" not in raw["template"]:
        raise ConfigError(f"{path}: key 'template' must exist and contain {{question}}")
    known = {"template", "system", "shots", "chat", "separator", "style", "stop", "description"}
    try:
        shots = tuple((s["question"], s["answer"]) for s in raw.get("shots", []))
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: each [[shots]] entry needs 'question' and 'answer'") from None
    return Prompt(
        name=path.stem, template=raw["template"], system=raw.get("system", ""), shots=shots,
        chat=bool(raw.get("chat", False)), separator=raw.get("separator", "\n\n"), style=raw.get("style", "auto"),
        stop=tuple(raw.get("stop", [])), description=raw.get("description", ""),
        extra={k: v for k, v in raw.items() if k not in known},
    )  # fmt: skip


def default_prompt(bench: str) -> str:
    """The prompt a benchmark uses when none is named: GSM8K 8-shot, MATH Minerva 4-shot."""
    return "gsm8k-8shot" if bench == "gsm8k" else "minerva"
