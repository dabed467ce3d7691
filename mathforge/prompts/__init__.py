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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mathforge.config import build, read_toml
from mathforge.errors import ConfigError
from mathforge.registry import Registry

__all__ = ["PROMPTS", "PROMPT_DIR", "Prompt", "Shot", "available", "default_prompt", "load_prompt"]

PROMPT_DIR = Path(__file__).resolve().parent
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
