"""Prompt templates: text files under synth/prompts/ (`string.Template`, `$name` placeholders).

A user folder (`[prompts] dir`) overrides any template by holding a file of the same relative name,
e.g. `my_prompts/skywork/rephrase.txt`; `[prompts] system` adds a system message to every request.

A rendered template is the *instruction*; `[prompts] layout` says how it reaches the model (`resolve_layout`):
"chat" sends it as the user message of a chat request; a raw layout of `mathforge.prompts` (e.g. "jiuzhang",
`## Question … ## Solution`) sends `layout_text(layout, instruction)` — exactly the prompt text the trainer
renders for a row whose prompt is that instruction — as a raw completion (the /completions endpoint, or the
local model's own tokens). A local model folder written by `mathforge train` names its layout in
mathforge.json; an empty `layout` takes it, and a different one is a ConfigError naming both.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError
from mathforge.prompts import CHAT, check_layout

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

BUILTIN = Path(__file__).resolve().parent / "prompts"


class Prompts:
    def __init__(self, override_dir: str | Path | None = None, system: str = "") -> None:
        self.override = Path(override_dir) if override_dir else None
        if self.override is not None and not self.override.is_dir():
            raise ConfigError(f"prompts.dir = {str(self.override)!r} is not a folder")
        self.system = system
        self._cache: dict[str, str] = {}

    def path(self, name: str) -> Path:
        if self.override is not None and (self.override / name).is_file():
            return self.override / name
        if (BUILTIN / name).is_file():
            return BUILTIN / name
        names = sorted(str(p.relative_to(BUILTIN)) for p in BUILTIN.rglob("*.txt"))
        raise ConfigError(f"no prompt template {name!r}; built-in templates: {', '.join(names)}")

    def text(self, name: str) -> str:
        if name not in self._cache:
            self._cache[name] = self.path(name).read_text()
        return self._cache[name]

    def instruction(self, name: str, **values: str) -> str:
        """The rendered template as a model is asked with it and as a distillation row's prompt holds it."""
        return self.render(name, **values).strip()

    def render(self, name: str, **values: str) -> str:
        try:
            return string.Template(self.text(name)).substitute(values).strip() + "\n"
        except (KeyError, ValueError) as error:
            raise ConfigError(f"prompt template {self.path(name)}: bad or unknown placeholder ({error})") from None

    def messages(self, name: str, **values: str) -> list[dict[str, str]]:
        """The chat request of the layout "chat": the instruction as the user message, after `system` if set."""
        user = {"role": "user", "content": self.instruction(name, **values)}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]

    def stages(self) -> dict[str, str]:
        """JiuZhang education stages: key -> audience description."""
        name = "jiuzhang/stages.toml"
        path = self.override / name if self.override and (self.override / name).is_file() else BUILTIN / name
        return tomllib.loads(path.read_text())


def resolve_layout(configured: str, trained: str | None, model: Any = "") -> str:
    """The layout synthesis asks a model in: `configured` ([prompts] layout) checked against the layout the
    model was trained with (`trained`: a local folder's mathforge.json, `LocalBackend.template`). Empty
    `configured` takes the trained one, or "chat" when unknown (a server: name its layout in the recipe)."""
    layout = configured or trained or CHAT
    try:
        check_layout(layout)
    except ConfigError as error:
        raise ConfigError(f"prompts.layout: {error}") from None
    if trained is not None and layout != trained:
        raise ConfigError(
            f"prompts.layout = {layout!r}, but the model {str(model)!r} was trained with "
            f"template {trained!r} (its mathforge.json): it would be asked in another layout than it learned; "
            f'set prompts.layout = "{trained}" or leave it empty'
        )
    return layout
