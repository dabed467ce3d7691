"""Prompt templates: text files under synth/prompts/ (`string.Template`, `$name` placeholders).

A user folder (`[prompts] dir`) overrides any template by holding a file of the same relative name,
e.g. `my_prompts/skywork/rephrase.txt`; `[prompts] system` adds a system message to every request.
"""

from __future__ import annotations

import string
from pathlib import Path

from mathforge.errors import ConfigError

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

    def render(self, name: str, **values: str) -> str:
        try:
            return string.Template(self.text(name)).substitute(values).strip() + "\n"
        except (KeyError, ValueError) as error:
            raise ConfigError(f"prompt template {self.path(name)}: bad or unknown placeholder ({error})") from None

    def messages(self, name: str, **values: str) -> list[dict[str, str]]:
        user = {"role": "user", "content": self.render(name, **values)}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]

    def stages(self) -> dict[str, str]:
        """JiuZhang education stages: key -> audience description."""
        name = "jiuzhang/stages.toml"
        path = self.override / name if self.override and (self.override / name).is_file() else BUILTIN / name
        return tomllib.loads(path.read_text())
